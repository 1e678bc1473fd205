// libvpipe's public API with no guest component reachable (VPIPE_AGENT_SOCKET points nowhere and
// there is no /dev/vpipe on this host): every path it can decide by itself.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <vpipe/abi/ioctl.h>
#include <vpipe/vpipe.h>

#include "support/tcp_pair.h"

namespace {

using vpipe::test::TcpPair;

std::vector<uint8_t> pattern(size_t n) {
    std::vector<uint8_t> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(i * 31 + 7);
    return v;
}

class Api : public ::testing::Test {
protected:
    void SetUp() override {
        char p[] = "/var/tmp/vpipe-api-XXXXXX";
        fd_ = ::mkstemp(p);
        ASSERT_GE(fd_, 0);
        path_ = p;
        data_ = pattern(256 << 10);
        ASSERT_EQ(::pwrite(fd_, data_.data(), data_.size(), 0), static_cast<ssize_t>(data_.size()));
        ASSERT_EQ(::fsync(fd_), 0);  // clean pages
        vpipe_set_fallback(1);
        prev_min_ = vpipe_set_min_offload(0);
    }
    void TearDown() override {
        vpipe_set_min_offload(prev_min_);
        ::close(fd_);
        ::unlink(path_.c_str());
    }
    // reads n bytes from s (blocking)
    static std::vector<uint8_t> read_n(int s, size_t n) {
        std::vector<uint8_t> got(n);
        size_t off = 0;
        while (off < n) {
            ssize_t r = ::recv(s, got.data() + off, n - off, 0);
            if (r <= 0) break;
            off += static_cast<size_t>(r);
        }
        got.resize(off);
        return got;
    }
    int fd_ = -1;
    std::string path_;
    std::vector<uint8_t> data_;
    uint64_t prev_min_ = 0;
};

TEST_F(Api, ACachedRangeIsSentByTheGuestAndCounted) {
    vpipe_stats s0{}, s1{};
    ASSERT_EQ(vpipe_get_stats(&s0), 0);
    TcpPair p;
    std::vector<uint8_t> got;
    std::thread reader([&] { got = read_n(p.b, 100000); });
    ASSERT_EQ(vpipe_file_to_socket_fd(fd_, p.a, 1000, 100000), 100000);
    reader.join();
    ASSERT_EQ(got.size(), 100000u);
    EXPECT_EQ(std::memcmp(got.data(), data_.data() + 1000, got.size()), 0);
    vpipe_result r{};
    ASSERT_EQ(vpipe_last_result(&r), 0);
    EXPECT_EQ(r.path, VPIPE_RESULT_FALLBACK);
    EXPECT_EQ(r.error, EALREADY);
    EXPECT_STREQ(r.reason, "the range is in the guest's page cache (cache rule)");
    EXPECT_EQ(r.paths, static_cast<uint32_t>(VPIPE_PATH_GUEST_CACHE));
    EXPECT_EQ(r.moved, 100000u);
    ASSERT_EQ(vpipe_get_stats(&s1), 0);
    EXPECT_EQ(s1.ops_guest_cache, s0.ops_guest_cache + 1);
    EXPECT_EQ(s1.ops_fallback, s0.ops_fallback + 1);
}

TEST_F(Api, AnUncachedRangeAsksTheGuestComponent) {
    ASSERT_EQ(::posix_fadvise(fd_, 0, 0, POSIX_FADV_DONTNEED), 0);  // clean pages: dropped
    TcpPair p;
    std::vector<uint8_t> got;
    std::thread reader([&] { got = read_n(p.b, 65536); });
    ASSERT_EQ(vpipe_file_to_socket_fd(fd_, p.a, 0, 65536), 65536);
    reader.join();
    EXPECT_EQ(got, std::vector<uint8_t>(data_.begin(), data_.begin() + 65536));
    vpipe_result r{};
    ASSERT_EQ(vpipe_last_result(&r), 0);
    EXPECT_EQ(r.path, VPIPE_RESULT_FALLBACK);
    EXPECT_NE(r.error, EALREADY) << "an uncached range went past the cache rule";
    EXPECT_STREQ(r.reason, "no vPipe guest component (no /dev/vpipe, no agent socket)");
    EXPECT_EQ(r.paths, 0u);
}

// a hot file that lost a few pages to reclaim stays on the guest's path (its sendfile reads them
// back; an offload never would): 7/8 cached is enough, half is not
TEST_F(Api, AMostlyCachedRangeIsSentByTheGuest) {
    // Dirty or in-flight pages cannot be dropped: write back first, and use
    // a fresh range for each case so no socket still references its pages.
    ASSERT_EQ(::fdatasync(fd_), 0);
    ASSERT_EQ(::posix_fadvise(fd_, 0, 0, POSIX_FADV_DONTNEED), 0);
    ASSERT_EQ(::posix_fadvise(fd_, 0, 0, POSIX_FADV_RANDOM), 0);  // no readahead: exactly what is read
    std::vector<uint8_t> buf(data_.size());
    TcpPair p;
    std::vector<uint8_t> got;
    vpipe_result r{};
    auto send_range = [&](off_t off) {
        std::thread reader([&] { got = read_n(p.b, 64 << 10); });
        ASSERT_EQ(vpipe_file_to_socket_fd(fd_, p.a, off, 64 << 10), 64 << 10);
        reader.join();
        EXPECT_EQ(got, std::vector<uint8_t>(data_.begin() + off, data_.begin() + off + (64 << 10)));
        ASSERT_EQ(vpipe_last_result(&r), 0);
    };
    ASSERT_EQ(::pread(fd_, buf.data(), 60 << 10, 0), 60 << 10);  // 15 of pages 0..15
    send_range(0);
    EXPECT_EQ(r.error, EALREADY) << "15/16 cached";
    ASSERT_EQ(::pread(fd_, buf.data(), 32 << 10, 128 << 10), 32 << 10);  // 8 of pages 32..47
    send_range(128 << 10);
    EXPECT_NE(r.error, EALREADY) << "8/16 cached";
}

TEST_F(Api, ForcedOffloadIgnoresTheCacheRuleAndFailsWithoutAComponent) {
    vpipe_set_fallback(0);
    TcpPair p;
    errno = 0;
    EXPECT_EQ(vpipe_file_to_socket_fd(fd_, p.a, 0, 4096), -1);
    EXPECT_NE(errno, EALREADY);
    vpipe_result r{};
    ASSERT_EQ(vpipe_last_result(&r), 0);
    EXPECT_EQ(r.path, VPIPE_RESULT_FAILED);
    vpipe_set_fallback(1);
}

TEST_F(Api, BelowTheThresholdTakesTheClassicPath) {
    vpipe_set_min_offload(1 << 20);
    EXPECT_EQ(vpipe_min_offload(), 1u << 20);
    ASSERT_EQ(::posix_fadvise(fd_, 0, 0, POSIX_FADV_DONTNEED), 0);
    TcpPair p;
    std::vector<uint8_t> got;
    std::thread reader([&] { got = read_n(p.b, 4096); });
    ASSERT_EQ(vpipe_file_to_socket_fd(fd_, p.a, 0, 4096), 4096);
    reader.join();
    EXPECT_EQ(got, std::vector<uint8_t>(data_.begin(), data_.begin() + 4096));
    vpipe_result r{};
    ASSERT_EQ(vpipe_last_result(&r), 0);
    EXPECT_EQ(r.path, VPIPE_RESULT_FALLBACK);
    EXPECT_STREQ(r.reason, "below the offload threshold");
}

TEST_F(Api, WrongDescriptorsGiveExactErrors) {
    TcpPair p;
    errno = 0;
    EXPECT_EQ(vpipe_file_to_socket_fd(p.a, p.b, 0, 10), -1);  // a socket as the file
    EXPECT_EQ(errno, EINVAL);
    errno = 0;
    EXPECT_EQ(vpipe_file_to_socket_fd(fd_, 12345, 0, 10), -1);  // not a descriptor
    EXPECT_EQ(errno, EBADF);
    int wo = ::open(path_.c_str(), O_WRONLY | O_CLOEXEC);
    ASSERT_GE(wo, 0);
    errno = 0;
    EXPECT_EQ(vpipe_file_to_socket_fd(wo, p.a, 0, 10), -1);  // source not readable
    EXPECT_EQ(errno, EBADF);
    ::close(wo);
    EXPECT_EQ(vpipe_get_stats(nullptr), -1);
    EXPECT_EQ(errno, EINVAL);
}

}  // namespace
