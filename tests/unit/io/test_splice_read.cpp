// splice_read: the stream of a file endpoint's extents through a pipe, from the image's O_DIRECT
// descriptor. Byte-exact against the model for aligned runs, unaligned heads and tails, zero
// extents and the image's last block; on a regular file and on a loop block device (what
// blkback serves); and a reader that goes away stops it with -ECANCELED.
#include <fcntl.h>
#include <signal.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "io/splice_read.h"
#include "io_test_util.h"

namespace vpipe::engine {
namespace {

using test::TempImage;

constexpr uint64_t kMiB = 1 << 20;

// Runs splice_extents into a pipe drained by this thread; returns its status, *out the bytes.
int splice_all(DiskImage& d, std::span<const Extent> ext, std::vector<uint8_t>* out, uint64_t* done) {
    int p[2];
    EXPECT_EQ(::pipe2(p, O_CLOEXEC), 0);
    std::atomic<bool> stop{false};
    int status = 1;
    std::thread t([&] {
        status = splice_extents(d, ext, p[1], stop, done);
        ::close(p[1]);
    });
    uint8_t buf[65536];
    for (;;) {
        ssize_t n = ::read(p[0], buf, sizeof buf);
        if (n <= 0) break;
        out->insert(out->end(), buf, buf + n);
    }
    t.join();
    ::close(p[0]);
    return status;
}

class SpliceRead : public ::testing::Test {
protected:
    void SetUp() override {
        file_ = std::make_unique<TempImage>(16 * kMiB + 1536, 7);  // a last block of 1536 bytes
        std::string why;
        disk_ = test::open_direct(file_->path, false, &why);
        if (!disk_) GTEST_SKIP() << why;
        if (!splice_read_supported(*disk_)) GTEST_SKIP() << "this kernel does not splice from an O_DIRECT file";
    }
    void expect_stream(DiskImage& d, const std::vector<Extent>& ext) {
        std::vector<uint8_t> got;
        uint64_t done = 0;
        ASSERT_EQ(splice_all(d, ext, &got, &done), 0);
        const std::vector<uint8_t> want = test::expected_stream(file_->model, ext);
        ASSERT_EQ(got.size(), want.size());
        EXPECT_EQ(done, want.size());
        EXPECT_TRUE(got == want) << "stream differs";
    }
    std::unique_ptr<TempImage> file_;
    std::unique_ptr<DiskImage> disk_;
};

TEST_F(SpliceRead, AlignedUnalignedZeroAndLastBlockByteExact) {
    const uint64_t end = 16 * kMiB + 1536;
    expect_stream(*disk_, {
                              {0, 3 * kMiB, false},                  // aligned, several splices
                              {5 * kMiB + 100, 9000, false},         // unaligned head and tail
                              {0, 70000, true},                      // zeros
                              {8 * kMiB + 4095, 1, false},           // one byte at a block's end
                              {9 * kMiB + 17, 2 * kMiB, false},      // long, unaligned both ends
                              {end - 1536 - 4096, 4096 + 1536, false},  // the image's short last block
                              {12 * kMiB, 4096, false},
                          });
    expect_stream(*disk_, test::scattered(16 * kMiB, 5 * kMiB, 256 << 10, 1000, 11));
}

TEST_F(SpliceRead, LoopBlockDeviceByteExact) {
    std::string why;
    auto loop = test::try_loop(file_->path, false, &why);
    if (!loop) GTEST_SKIP() << why;
    auto dev = test::open_direct(loop->path, false, &why);
    if (!dev) GTEST_SKIP() << why;
    ASSERT_TRUE(splice_read_supported(*dev));
    expect_stream(*dev, {{4096, 2 * kMiB, false}, {6 * kMiB + 513, 70000, false}, {0, 1000, true}});
}

TEST_F(SpliceRead, ExtentPastTheImageIsRefused) {
    std::vector<uint8_t> got;
    uint64_t done = 0;
    EXPECT_EQ(splice_all(*disk_, std::vector<Extent>{{16 * kMiB, 1 * kMiB, false}}, &got, &done), -EIO);
    EXPECT_EQ(done, 0u);
}

TEST_F(SpliceRead, AReaderThatGoesAwayStopsIt) {
    ::signal(SIGPIPE, SIG_IGN);  // as in vpiped, which takes SIGPIPE with sigwait
    int p[2];
    ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
    std::atomic<bool> stop{false};
    uint64_t done = 0;
    int status = 1;
    std::thread t([&] { status = splice_extents(*disk_, std::vector<Extent>{{0, 16 * kMiB, false}}, p[1], stop, &done); });
    uint8_t buf[4096];
    ASSERT_EQ(::read(p[0], buf, sizeof buf), static_cast<ssize_t>(sizeof buf));  // it started
    stop = true;
    ::close(p[0]);  // a writer blocked on the full pipe gets EPIPE
    t.join();
    ::close(p[1]);
    EXPECT_EQ(status, -ECANCELED);
    EXPECT_LT(done, 16 * kMiB);
    EXPECT_GE(done, sizeof buf);
}

}  // namespace
}  // namespace vpipe::engine
