#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "io/block_io.h"
#include "io_test_util.h"

namespace vpipe::engine {
namespace {

using test::TempImage;

constexpr uint64_t kMiB = 1 << 20;

// Page-aligned memory with room for an offset, so tests choose the buffer's misalignment.
class AlignedBuf {
public:
    AlignedBuf(size_t bytes, size_t misalign)
        : mem_(static_cast<uint8_t*>(std::aligned_alloc(4096, round_up(bytes + misalign)))),
          misalign_(misalign) {}
    uint8_t* data() { return mem_.get() + misalign_; }

private:
    static size_t round_up(size_t n) { return (n + 4095) / 4096 * 4096 + 4096; }
    struct Free {
        void operator()(uint8_t* p) const { std::free(p); }
    };
    std::unique_ptr<uint8_t, Free> mem_;
    size_t misalign_;
};

// Index of the first differing byte, or -1.
ptrdiff_t first_mismatch(const uint8_t* a, const uint8_t* b, size_t n) {
    for (size_t i = 0; i < n; ++i)
        if (a[i] != b[i]) return static_cast<ptrdiff_t>(i);
    return -1;
}

class BlockIoTest : public ::testing::Test {
protected:
    void open_image(uint64_t size, bool writable = true) {
        file_ = std::make_unique<TempImage>(size, 42);
        std::string why;
        disk_ = test::open_direct(file_->path, writable, &why);
        if (!disk_) GTEST_SKIP() << why;
    }
    void SetUp() override { open_image(32 * kMiB); }

    // Reads ext into a buffer misaligned by `misalign` and compares with the model.
    void expect_read(std::span<const Extent> ext, size_t misalign = 0, BlockIo* via = nullptr) {
        const uint64_t n = total_length(ext);
        AlignedBuf buf(n, misalign);
        std::memset(buf.data(), 0xAA, n);
        ASSERT_EQ((via ? via : &io_)->read(*disk_, ext, buf.data()), 0);
        const auto want = test::expected_stream(file_->model, ext);
        ASSERT_EQ(first_mismatch(buf.data(), want.data(), n), -1);
    }

    // Writes random bytes from a buffer misaligned by `misalign` and compares the whole file
    // with the model (so damage next to the extents shows too).
    void expect_write(std::span<const Extent> ext, size_t misalign = 0, BlockIo* via = nullptr) {
        const uint64_t n = total_length(ext);
        AlignedBuf buf(n, misalign);
        const auto data = test::random_bytes(n, static_cast<uint32_t>(n + misalign));
        std::memcpy(buf.data(), data.data(), n);
        ASSERT_EQ((via ? via : &io_)->write(*disk_, ext, buf.data()), 0);
        test::model_write(file_->model, ext, data.data());
        expect_file_matches_model();
    }

    void expect_file_matches_model() {
        const auto got = file_->contents();
        ASSERT_EQ(got.size(), file_->model.size());
        ASSERT_EQ(first_mismatch(got.data(), file_->model.data(), got.size()), -1);
    }

    std::unique_ptr<TempImage> file_;
    std::unique_ptr<DiskImage> disk_;
    BlockIo io_{32};
};

TEST_F(BlockIoTest, ReadAlignedExtentInMaxSizedRequests) {
    const std::vector<Extent> ext = {{1 * kMiB, 4 * kMiB, false}};
    expect_read(ext);
    EXPECT_EQ(disk_->bytes_read.load(), 4 * kMiB);
    EXPECT_EQ(disk_->read_ops.load(), 4u);
    EXPECT_EQ(disk_->bytes_written.load(), 0u);
}

TEST_F(BlockIoTest, ReadAlignedExtents) {
    const std::vector<Extent> ext = {{8192, 4096, false}, {0, 512, false}, {10 * kMiB, 3 * kMiB + 512, false}};
    expect_read(ext);
}

TEST_F(BlockIoTest, ReadUnalignedHeadAndTail) {
    const std::vector<Extent> ext = {{100, 4096 - 100, false}, {16384, 8192, false}, {65536, 333, false}};
    expect_read(ext);
    expect_read(std::vector<Extent>{{7, 1, false}});
    expect_read(std::vector<Extent>{{4095, 2, false}});  // straddles a block boundary
}

TEST_F(BlockIoTest, ReadIntoMisalignedBuffer) {
    const std::vector<Extent> ext = {{4096, 3 * kMiB + 4096, false}, {20 * kMiB, 777, false}};
    expect_read(ext, 3);    // out of phase: everything through the bounce buffers
    expect_read(ext, 512);  // sector- but not page-aligned memory
    // In phase (disk and memory both 100 bytes past a boundary): only the partial block bounces.
    const std::vector<Extent> in_phase = {{8192 + 100, 2 * kMiB, false}};
    expect_read(in_phase, 100);
}

TEST_F(BlockIoTest, ReadArbitrarilyUnalignedBoundaries) {
    // Not what the protocol sends, but the layer must not depend on it.
    const std::vector<Extent> ext = {{100, 1000, false}, {5000, 3, false}, {70001, 9999, false}, {1, 1, false}};
    expect_read(ext);
    expect_read(ext, 5);
}

TEST_F(BlockIoTest, ReadZeroExtents) {
    const std::vector<Extent> ext = {
        {0, 4096, true}, {4096, 1000, false}, {123456, 10, true}, {0, 3 * kMiB, true}, {kMiB, 512, false}};
    expect_read(ext);
    expect_read(ext, 1);
    EXPECT_EQ(io_.read(*disk_, std::vector<Extent>{{UINT64_MAX, 10, true}}, AlignedBuf(10, 0).data()), 0);
}

TEST_F(BlockIoTest, ReadAndWriteManySmallExtents) {
    const auto ext = test::scattered(disk_->size(), 10 * kMiB, 16384, 777, 7);
    ASSERT_GE(ext.size(), 1000u);
    expect_read(ext);
    expect_write(ext);
    expect_write(ext, 9);
    expect_read(ext, 9);
}

TEST_F(BlockIoTest, ReadAndWriteManyUnalignedTinyExtents) {
    // 1500 extents of 1..3000 bytes at arbitrary offsets: every one is a partial block.
    std::mt19937 rng(5);
    std::vector<Extent> ext;
    for (uint64_t i = 0; i < 1500; ++i) {
        const uint64_t start = std::uniform_int_distribution<uint64_t>(0, 1000)(rng);
        const uint64_t len = std::uniform_int_distribution<uint64_t>(1, 3000)(rng);
        ext.push_back({i * 8192 + start, len, false});
    }
    std::shuffle(ext.begin(), ext.end(), rng);
    expect_write(ext);
    expect_read(ext);
    expect_read(ext, 1);
}

TEST_F(BlockIoTest, ReadAndWriteReverseDiskOrder) {
    const auto ext = test::scattered(disk_->size(), 8 * kMiB, 65536, 300, 11, /*reverse=*/true);
    ASSERT_GT(ext.front().disk_offset, ext.back().disk_offset);
    expect_read(ext);
    expect_write(ext);
    expect_read(ext, 7);
}

TEST_F(BlockIoTest, WriteAlignedUnalignedAndFromMisalignedBuffer) {
    expect_write(std::vector<Extent>{{kMiB, 3 * kMiB, false}});
    expect_write(std::vector<Extent>{{100, 3996, false}, {8192, 4096, false}, {40960, 1, false}});
    expect_write(std::vector<Extent>{{5 * kMiB, 2 * kMiB + 4096, false}}, 3);    // bounce
    expect_write(std::vector<Extent>{{9 * kMiB + 100, kMiB + 50, false}}, 100);  // in phase
    expect_write(std::vector<Extent>{{4095, 2, false}});  // straddles a block boundary
}

TEST_F(BlockIoTest, ReadModifyWriteIsCounted) {
    const uint8_t data[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    ASSERT_EQ(io_.write(*disk_, std::vector<Extent>{{100, 10, false}}, data), 0);
    EXPECT_EQ(disk_->bytes_read.load(), disk_->alignment());
    EXPECT_EQ(disk_->bytes_written.load(), disk_->alignment());
    EXPECT_EQ(disk_->read_ops.load(), 1u);
    EXPECT_EQ(disk_->write_ops.load(), 1u);
    test::model_write(file_->model, std::vector<Extent>{{100, 10, false}}, data);
    expect_file_matches_model();
}

TEST_F(BlockIoTest, QueueDepthOne) {
    BlockIo shallow(1);
    const auto ext = test::scattered(disk_->size(), 3 * kMiB, 65536, 1000, 3);
    expect_read(ext, 0, &shallow);
    expect_read(ext, 3, &shallow);
    expect_write(ext, 0, &shallow);
    expect_write(ext, 3, &shallow);
}

TEST_F(BlockIoTest, OutOfRange) {
    const uint64_t size = disk_->size();
    AlignedBuf buf(8192, 0);
    const std::vector<Extent> past_end = {{0, 4096, false}, {size - 100, 200, false}};
    const std::vector<Extent> overflow = {{UINT64_MAX - 10, 100, false}};
    const std::vector<Extent> starts_past = {{size + 4096, 512, false}};
    EXPECT_EQ(io_.read(*disk_, past_end, buf.data()), -ERANGE);
    EXPECT_EQ(io_.read(*disk_, overflow, buf.data()), -ERANGE);
    EXPECT_EQ(io_.read(*disk_, starts_past, buf.data()), -ERANGE);
    EXPECT_EQ(io_.write(*disk_, past_end, buf.data()), -ERANGE);
    EXPECT_EQ(io_.write(*disk_, overflow, buf.data()), -ERANGE);
    EXPECT_EQ(io_.write(*disk_, starts_past, buf.data()), -ERANGE);
    EXPECT_EQ(disk_->bytes_written.load(), 0u);  // validated before any I/O
    expect_file_matches_model();
    // The last byte is in range.
    expect_read(std::vector<Extent>{{size - 1, 1, false}});
}

TEST_F(BlockIoTest, ZeroExtentInWriteIsInvalid) {
    AlignedBuf buf(8192, 0);
    EXPECT_EQ(io_.write(*disk_, std::vector<Extent>{{0, 4096, false}, {0, 4096, true}}, buf.data()),
              -EINVAL);
    EXPECT_EQ(disk_->bytes_written.load(), 0u);
}

TEST_F(BlockIoTest, FlushSucceeds) {
    expect_write(std::vector<Extent>{{0, 4096, false}});
    EXPECT_EQ(io_.flush(*disk_), 0);
}

TEST_F(BlockIoTest, ReadWriteAtTheSameTime) {
    const auto rext = test::scattered(16 * kMiB, 6 * kMiB, 65536, 100, 21);
    std::vector<Extent> wext = test::scattered(16 * kMiB, 6 * kMiB, 65536, 0, 22);
    for (Extent& e : wext) e.disk_offset += 16 * kMiB;  // disjoint from what is read
    const auto want = test::expected_stream(file_->model, rext);
    const auto data = test::random_bytes(6 * kMiB, 23);
    AlignedBuf rbuf(6 * kMiB, 0);
    const BlockIo::Statuses s = io_.read_and_write(*disk_, rext, rbuf.data(), *disk_, wext, data.data());
    EXPECT_EQ(s.read, 0);
    EXPECT_EQ(s.write, 0);
    EXPECT_EQ(first_mismatch(rbuf.data(), want.data(), want.size()), -1);
    test::model_write(file_->model, wext, data.data());
    expect_file_matches_model();
}

// socket -> file's write of several received windows at once: each buffer to its own extents,
// requests of all of them in flight together, the whole file as the model says.
TEST_F(BlockIoTest, WriteManyWritesEveryBufferToItsExtents) {
    std::vector<std::vector<Extent>> exts;
    std::vector<std::vector<uint8_t>> datas;
    for (uint32_t i = 0; i < 5; ++i) {
        std::vector<Extent> e = test::scattered(5 * kMiB, kMiB / 2 + 777 * i, 65536, 0, 30 + i);
        for (Extent& x : e) x.disk_offset += i * 5 * kMiB;  // disjoint
        exts.push_back(std::move(e));
        datas.push_back(test::random_bytes(total_length(exts.back()), 40 + i));
    }
    std::vector<BlockIo::WriteJob> jobs;
    for (size_t i = 0; i < exts.size(); ++i) jobs.push_back({exts[i], datas[i].data()});
    ASSERT_EQ(io_.write_many(*disk_, jobs), 0);
    for (size_t i = 0; i < exts.size(); ++i) test::model_write(file_->model, exts[i], datas[i].data());
    expect_file_matches_model();
    EXPECT_EQ(io_.write_many(*disk_, {}), 0);
}

TEST_F(BlockIoTest, WriteManyReportsABadJobAndWritesTheRest) {
    const std::vector<Extent> good = {{0, 64 * 1024, false}};
    const std::vector<Extent> bad = {{disk_->size() + 4096, 512, false}};
    const auto data = test::random_bytes(64 * 1024, 50);
    const std::vector<BlockIo::WriteJob> jobs = {{good, data.data()}, {bad, data.data()}};
    EXPECT_EQ(io_.write_many(*disk_, jobs), -ERANGE);
    test::model_write(file_->model, good, data.data());
    expect_file_matches_model();
}

TEST_F(BlockIoTest, ConcurrentReadModifyWriteInOneBlockLosesNothing) {
    // 16 threads each own 29 adjacent bytes around a block boundary and rewrite them 200 times;
    // every partial block is shared by several threads.
    constexpr int kThreads = 16;
    constexpr int kRounds = 200;
    constexpr uint64_t kSpan = 29;
    const uint64_t base = 10 * 4096 - 200;
    std::vector<std::thread> threads;
    std::atomic<int> failures{0};
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            BlockIo io(4);
            const std::vector<Extent> ext = {{base + t * kSpan, kSpan, false}};
            uint8_t bytes[kSpan];
            for (int r = 0; r < kRounds; ++r) {
                std::memset(bytes, t * kRounds + r, kSpan);
                if (io.write(*disk_, ext, bytes) != 0) ++failures;
            }
        });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(failures.load(), 0);
    for (int t = 0; t < kThreads; ++t)
        std::memset(file_->model.data() + base + t * kSpan,
                    static_cast<uint8_t>(t * kRounds + kRounds - 1), kSpan);
    expect_file_matches_model();
}

TEST_F(BlockIoTest, ReadOnlyImageRefusesWrites) {
    auto ro = DiskImage::open(file_->path, false);
    AlignedBuf buf(4096, 0);
    EXPECT_EQ(io_.write(*ro, std::vector<Extent>{{0, 4096, false}}, buf.data()), -EROFS);
    std::memset(buf.data(), 0, 4096);
    ASSERT_EQ(io_.read(*ro, std::vector<Extent>{{0, 4096, false}}, buf.data()), 0);
    EXPECT_EQ(std::memcmp(buf.data(), file_->model.data(), 4096), 0);
    expect_file_matches_model();
}

TEST_F(BlockIoTest, ReadPastTheRealEndIsAnIoError) {
    // The image shrank behind the engine's back: the size it validated against is stale.
    ASSERT_EQ(::truncate(file_->path.c_str(), static_cast<off_t>(kMiB)), 0);
    AlignedBuf buf(8192, 0);
    EXPECT_EQ(io_.read(*disk_, std::vector<Extent>{{2 * kMiB, 8192, false}}, buf.data()), -EIO);
    EXPECT_EQ(io_.read(*disk_, std::vector<Extent>{{2 * kMiB + 10, 100, false}}, buf.data()), -EIO);
    EXPECT_EQ(io_.read(*disk_, std::vector<Extent>{{0, 4096, false}}, buf.data()), 0);
}

class BlockIoOddSizeTest : public BlockIoTest {
protected:
    void SetUp() override { open_image(kMiB + 100); }
};

TEST_F(BlockIoOddSizeTest, ReadsUpToTheLastByteWritesOnlyWholeBlocks) {
    expect_read(std::vector<Extent>{{kMiB, 100, false}});
    expect_read(std::vector<Extent>{{kMiB - 50, 150, false}}, 3);
    AlignedBuf buf(4096, 0);
    EXPECT_EQ(io_.write(*disk_, std::vector<Extent>{{kMiB, 10, false}}, buf.data()), -ERANGE);
    expect_write(std::vector<Extent>{{kMiB - 512, 512, false}});
    expect_write(std::vector<Extent>{{kMiB - 7, 7, false}});
    EXPECT_EQ(file_->contents().size(), kMiB + 100);  // never extended
}

class BlockIoLargeTest : public BlockIoTest {
protected:
    void SetUp() override { open_image(160 * kMiB); }  // room for 64 MiB in scattered slots
};

TEST_F(BlockIoLargeTest, Stream64MiB) {
    const std::vector<Extent> contiguous = {{3 * kMiB, 64 * kMiB, false}};
    expect_read(contiguous);
    expect_write(contiguous);
    const auto ext = test::scattered(disk_->size(), 64 * kMiB, kMiB, 1234, 17);
    expect_read(ext);
    expect_write(ext);
    expect_read(ext, 1);
}

TEST(BlockIoLoop, ReadWriteOnLoopDevice) {
    TempImage file(8 * kMiB, 8);
    std::unique_ptr<test::LoopDevice> loop;
    try {
        loop = std::make_unique<test::LoopDevice>(file.path);
    } catch (const std::system_error& e) {
        GTEST_SKIP() << "no loop device available: " << e.what();
    }
    auto disk = DiskImage::open(loop->path, true);
    BlockIo io(16);
    const auto rext = test::scattered(disk->size(), 2 * kMiB, 32768, 99, 31);
    const auto want = test::expected_stream(file.model, rext);
    std::vector<uint8_t> got(want.size());
    ASSERT_EQ(io.read(*disk, rext, got.data()), 0);
    EXPECT_EQ(got, want);

    const auto wext = test::scattered(disk->size(), 2 * kMiB, 32768, 99, 32);
    const auto data = test::random_bytes(2 * kMiB, 33);
    ASSERT_EQ(io.write(*disk, wext, data.data()), 0);
    ASSERT_EQ(io.flush(*disk), 0);
    std::vector<uint8_t> back(data.size());
    ASSERT_EQ(io.read(*disk, wext, back.data()), 0);
    EXPECT_EQ(back, data);
    disk.reset();
    loop.reset();
    test::model_write(file.model, wext, data.data());
    EXPECT_EQ(file.contents(), file.model);
}

}  // namespace
}  // namespace vpipe::engine
