// The non-blocking form (vpipe_queue_create / vpipe_submit_* / vpipe_reap / vpipe_cancel) with
// no guest component reachable: the queue's own logic -- argument errors at once and no
// completion, the completion descriptor's readiness, the fallback visible in the completion and
// counted, queue-full EAGAIN, cancel's answers, EBUSY for a descriptor a queue already holds;
// and that a fallback's classic copy runs off the caller's thread (AsyncFallback below).
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <vpipe/vpipe.h>

#include "support/tcp_pair.h"

namespace {

bool readable(int fd) {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

// Waits on the queue's descriptor, as an event loop would, until `n` completions are reaped into
// out[] (a fallback's copy runs on a worker: its completion comes later than the submit). The
// number reaped; fewer only if nothing arrives for 30 s (a hang, not a measurement).
int reap_wait(int q, vpipe_completion* out, int n) {
    int got = 0;
    while (got < n) {
        int r = vpipe_reap(q, out + got, static_cast<unsigned>(n - got));
        if (r < 0) return r;
        got += r;
        if (got == n) break;
        pollfd p{vpipe_queue_fd(q), POLLIN, 0};
        if (::poll(&p, 1, 30000) != 1) break;
    }
    return got;
}

// Waits until the queue's descriptor is readable (a completion is there).
bool wait_readable(int fd) {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, 30000) == 1 && (p.revents & POLLIN);
}

class Queue : public ::testing::Test {
protected:
    void SetUp() override {
        char a[] = "/var/tmp/vpipe-q-in-XXXXXX", b[] = "/var/tmp/vpipe-q-out-XXXXXX";
        in_ = ::mkstemp(a);
        out_ = ::mkstemp(b);
        ASSERT_GE(in_, 0);
        ASSERT_GE(out_, 0);
        pin_ = a;
        pout_ = b;
        data_.resize(1 << 20);
        for (size_t i = 0; i < data_.size(); ++i) data_[i] = static_cast<uint8_t>(i * 131 + 17);
        ASSERT_EQ(::pwrite(in_, data_.data(), data_.size(), 0), static_cast<ssize_t>(data_.size()));
        vpipe_set_fallback(1);
        prev_min_ = vpipe_set_min_offload(VPIPE_MIN_OFFLOAD_DEFAULT);
        q_ = vpipe_queue_create(4, 0);
        ASSERT_GE(q_, 0);
    }
    void TearDown() override {
        EXPECT_EQ(vpipe_queue_destroy(q_), 0);
        vpipe_set_min_offload(prev_min_);
        ::close(in_);
        ::close(out_);
        ::unlink(pin_.c_str());
        ::unlink(pout_.c_str());
    }
    std::vector<uint8_t> out_bytes(size_t n) {
        std::vector<uint8_t> v(n);
        EXPECT_EQ(::pread(out_, v.data(), n, 0), static_cast<ssize_t>(n));
        return v;
    }
    int in_ = -1, out_ = -1, q_ = -1;
    uint64_t prev_min_ = 0;
    std::string pin_, pout_;
    std::vector<uint8_t> data_;
};

TEST(QueueArgs, CreateRejectsFlagsAndHugeDepths) {
    errno = 0;
    EXPECT_EQ(vpipe_queue_create(0, 1), -1);
    EXPECT_EQ(errno, EINVAL);
    EXPECT_EQ(vpipe_queue_create(4096, 0), -1);
    EXPECT_EQ(errno, EINVAL);
    vpipe_completion c{};
    EXPECT_EQ(vpipe_reap(12345, &c, 1), -1);
    EXPECT_EQ(errno, EBADF);
    EXPECT_EQ(vpipe_queue_fd(-1), -1);
    EXPECT_EQ(errno, EBADF);
    EXPECT_EQ(vpipe_cancel(12345, 1), -1);
    EXPECT_EQ(errno, EBADF);
    EXPECT_EQ(vpipe_submit_file_to_file(12345, 0, 1, 0, 1, 0, 0), -1);
    EXPECT_EQ(errno, EBADF);
    EXPECT_EQ(vpipe_queue_destroy(12345), -1);
    EXPECT_EQ(errno, EBADF);
}

TEST_F(Queue, BelowTheThresholdCompletesAtOnceAsACountedFallback) {
    vpipe_stats s0{}, s1{};
    vpipe_get_stats(&s0);
    const int qfd = vpipe_queue_fd(q_);
    ASSERT_GE(qfd, 0);
    EXPECT_FALSE(readable(qfd));
    ASSERT_EQ(vpipe_submit_file_to_file(q_, in_, out_, 0, 4096, 0, 77), 0);
    // epoll on the completion descriptor, as an event loop would
    int ep = ::epoll_create1(EPOLL_CLOEXEC);
    epoll_event ev{EPOLLIN, {}};
    ev.data.u64 = 9;
    ASSERT_EQ(::epoll_ctl(ep, EPOLL_CTL_ADD, qfd, &ev), 0);
    epoll_event got{};
    ASSERT_EQ(::epoll_wait(ep, &got, 1, 30000), 1);
    EXPECT_EQ(got.data.u64, 9u);
    vpipe_completion c[4]{};
    ASSERT_EQ(vpipe_reap(q_, c, 4), 1);
    EXPECT_EQ(c[0].user_data, 77u);
    EXPECT_EQ(c[0].res, 4096);
    EXPECT_EQ(c[0].result.path, VPIPE_RESULT_FALLBACK);
    EXPECT_STREQ(c[0].result.reason, "below the offload threshold");
    EXPECT_EQ(c[0].result.guest_copied, 4096u);
    EXPECT_EQ(out_bytes(4096), std::vector<uint8_t>(data_.begin(), data_.begin() + 4096));
    // drained: not readable any more, and a second reap finds nothing
    EXPECT_EQ(::epoll_wait(ep, &got, 1, 0), 0);
    EXPECT_FALSE(readable(qfd));
    EXPECT_EQ(vpipe_reap(q_, c, 4), 0);
    vpipe_get_stats(&s1);
    EXPECT_EQ(s1.ops - s0.ops, 1u);
    EXPECT_EQ(s1.ops_fallback - s0.ops_fallback, 1u);
    EXPECT_EQ(s1.ops_below_threshold - s0.ops_below_threshold, 1u);
    ::close(ep);
}

TEST_F(Queue, NoGuestComponentFallsBackVisiblyInTheCompletion) {
    vpipe_set_min_offload(0);
    ASSERT_EQ(vpipe_submit_file_to_file(q_, in_, out_, 0, data_.size(), 0, 5), 0);
    vpipe_completion c{};
    ASSERT_EQ(reap_wait(q_, &c, 1), 1);
    EXPECT_EQ(c.res, static_cast<int64_t>(data_.size()));
    EXPECT_EQ(c.result.path, VPIPE_RESULT_FALLBACK);
    EXPECT_EQ(c.result.error, ENOENT);
    EXPECT_STREQ(c.result.reason, "no vPipe guest component (no /dev/vpipe, no agent socket)");
    EXPECT_EQ(out_bytes(data_.size()), data_);
    // with fallbacks off the submit itself fails, with no completion
    vpipe_set_fallback(0);
    errno = 0;
    EXPECT_EQ(vpipe_submit_file_to_file(q_, in_, out_, 0, data_.size(), 0, 6), -1);
    EXPECT_EQ(errno, ENOENT);
    vpipe_set_fallback(1);
    EXPECT_EQ(vpipe_reap(q_, &c, 1), 0);
}

TEST_F(Queue, ArgumentErrorsComeAtOnceWithoutACompletion) {
    vpipe_stats s0{}, s1{};
    vpipe_get_stats(&s0);
    errno = 0;
    EXPECT_EQ(vpipe_submit_file_to_file(q_, 9999, out_, 0, 10, 0, 1), -1);
    EXPECT_EQ(errno, EBADF);
    EXPECT_EQ(vpipe_submit_file_to_socket(q_, in_, out_, 0, 10, 2), -1);   // a file is no socket
    EXPECT_EQ(errno, EINVAL);
    EXPECT_EQ(vpipe_submit_file_to_file(q_, in_, in_, 0, 4096, 100, 3), -1);   // overlapping
    EXPECT_EQ(errno, EINVAL);
    EXPECT_EQ(vpipe_submit_file_to_file(q_, in_, out_, -1, 10, 0, 4), -1);
    EXPECT_EQ(errno, EINVAL);
    vpipe_completion c{};
    EXPECT_EQ(vpipe_reap(q_, &c, 1), 0);
    EXPECT_FALSE(readable(vpipe_queue_fd(q_)));
    vpipe_get_stats(&s1);
    EXPECT_EQ(s1.ops_failed - s0.ops_failed, 4u);
    EXPECT_EQ(vpipe_reap(q_, nullptr, 1), -1);
    EXPECT_EQ(errno, EINVAL);
}

TEST_F(Queue, AFullQueueSaysEagainUntilReaped) {
    // one destination each: a destination belongs to one operation at a time
    int dst[5];
    std::string names[5];
    for (int i = 0; i < 5; ++i) {
        char p[] = "/var/tmp/vpipe-q-full-XXXXXX";
        dst[i] = ::mkstemp(p);
        ASSERT_GE(dst[i], 0);
        names[i] = p;
    }
    for (uint64_t i = 0; i < 4; ++i)
        ASSERT_EQ(vpipe_submit_file_to_file(q_, in_, dst[i], 0, 100, 0, i), 0) << i;
    errno = 0;
    EXPECT_EQ(vpipe_submit_file_to_file(q_, in_, dst[4], 0, 100, 0, 4), -1);
    EXPECT_EQ(errno, EAGAIN);   // in flight or completed, not reaped: the queue is full either way
    vpipe_completion c[8]{};
    ASSERT_EQ(reap_wait(q_, c, 1), 1);
    EXPECT_EQ(c[0].res, 100);
    uint64_t seen = 1ull << c[0].user_data;
    EXPECT_EQ(vpipe_submit_file_to_file(q_, in_, dst[4], 0, 100, 0, 4), 0);
    // the fallbacks run on the queue's workers: the completions in any order, each once
    ASSERT_EQ(reap_wait(q_, c, 4), 4);
    for (int i = 0; i < 4; ++i) {
        EXPECT_EQ(c[i].res, 100);
        ASSERT_LT(c[i].user_data, 5u);
        EXPECT_FALSE(seen & (1ull << c[i].user_data)) << c[i].user_data;
        seen |= 1ull << c[i].user_data;
    }
    EXPECT_EQ(seen, 0x1full);
    EXPECT_EQ(vpipe_reap(q_, c, 8), 0);
    for (int i = 0; i < 5; ++i) {
        std::vector<uint8_t> v(100);
        EXPECT_EQ(::pread(dst[i], v.data(), 100, 0), 100);
        EXPECT_EQ(v, std::vector<uint8_t>(data_.begin(), data_.begin() + 100)) << i;
        ::close(dst[i]);
        ::unlink(names[i].c_str());
    }
}

TEST_F(Queue, CancelSaysWhereTheOperationIs) {
    errno = 0;
    EXPECT_EQ(vpipe_cancel(q_, 42), -1);
    EXPECT_EQ(errno, ENOENT);
    ASSERT_EQ(vpipe_submit_file_to_file(q_, in_, out_, 0, 100, 0, 42), 0);
    ASSERT_TRUE(wait_readable(vpipe_queue_fd(q_)));
    EXPECT_EQ(vpipe_cancel(q_, 42), -1);   // done already, waiting to be reaped
    EXPECT_EQ(errno, EALREADY);
    vpipe_completion c{};
    ASSERT_EQ(vpipe_reap(q_, &c, 1), 1);
    EXPECT_EQ(c.res, 100);
    EXPECT_EQ(vpipe_cancel(q_, 42), -1);
    EXPECT_EQ(errno, ENOENT);
}

TEST_F(Queue, NothingToMoveCompletesWithZero) {
    ASSERT_EQ(vpipe_submit_file_to_file(q_, in_, out_, 0, 0, 0, 8), 0);
    vpipe_completion c{};
    ASSERT_EQ(vpipe_reap(q_, &c, 1), 1);
    EXPECT_EQ(c.res, 0);
    EXPECT_EQ(c.result.path, VPIPE_RESULT_OFFLOADED);
}

TEST_F(Queue, QueuesAreIndependentAndIdsAreReused) {
    int q2 = vpipe_queue_create(0, 0);
    ASSERT_GE(q2, 0);
    EXPECT_NE(q2, q_);
    EXPECT_NE(vpipe_queue_fd(q2), vpipe_queue_fd(q_));
    ASSERT_EQ(vpipe_submit_file_to_file(q2, in_, out_, 0, 10, 0, 1), 0);
    vpipe_completion c{};
    EXPECT_EQ(reap_wait(q2, &c, 1), 1);
    EXPECT_EQ(vpipe_reap(q_, &c, 1), 0);
    EXPECT_EQ(vpipe_queue_destroy(q2), 0);
    int q3 = vpipe_queue_create(0, 0);
    EXPECT_EQ(q3, q2);
    EXPECT_EQ(vpipe_queue_destroy(q3), 0);
}

// ---- a fallback's copy runs on the queue's worker, not in the submit or the reap ----------

using vpipe::test::TcpPair;

uint8_t big_byte(uint64_t i) { return static_cast<uint8_t>(i * 167 + (i >> 16) + 3); }

// Reads a socket to its end on a thread of its own (the peer of the application's socket).
class Drain {
public:
    explicit Drain(int fd) : t_([this, fd] {
        std::vector<uint8_t> buf(1 << 20);
        for (;;) {
            ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            got_.insert(got_.end(), buf.begin(), buf.begin() + n);
        }
    }) {}
    ~Drain() {
        if (t_.joinable()) t_.join();
    }
    const std::vector<uint8_t>& wait() {
        t_.join();
        return got_;
    }

private:
    std::vector<uint8_t> got_;
    std::thread t_;
};

// true when got[from, from + n) is the big file's bytes [off, off + n)
bool is_big_file(const std::vector<uint8_t>& got, size_t from, uint64_t off, size_t n) {
    if (got.size() < from + n) return false;
    for (size_t i = 0; i < n; ++i)
        if (got[from + i] != big_byte(off + i)) return false;
    return true;
}

size_t threads_now() {
    size_t n = 0;
    if (DIR* d = ::opendir("/proc/self/task")) {
        while (dirent* e = ::readdir(d))
            if (e->d_name[0] != '.') ++n;
        ::closedir(d);
    }
    return n;
}

bool peer_readable(int fd) {   // the peer has bytes: the copy is running
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, 30000) == 1 && (p.revents & POLLIN);
}

constexpr size_t kBig = 64u << 20;   // far more than loopback TCP buffers hold

class AsyncFallback : public ::testing::Test {
protected:
    void SetUp() override {
        char a[] = "/var/tmp/vpipe-q-big-XXXXXX";
        file_ = ::mkstemp(a);
        ASSERT_GE(file_, 0);
        path_ = a;
        std::vector<uint8_t> buf(1 << 20);
        for (size_t off = 0; off < kBig; off += buf.size()) {
            for (size_t i = 0; i < buf.size(); ++i) buf[i] = big_byte(off + i);
            ASSERT_EQ(::pwrite(file_, buf.data(), buf.size(), static_cast<off_t>(off)), static_cast<ssize_t>(buf.size()));
        }
        vpipe_set_fallback(1);
        // everything below the threshold: the reason is the threshold's, whatever the cache holds
        prev_min_ = vpipe_set_min_offload(1ull << 40);
        q_ = vpipe_queue_create(8, 0);
        ASSERT_GE(q_, 0);
    }
    void TearDown() override {
        if (q_ >= 0) {
            EXPECT_EQ(vpipe_queue_destroy(q_), 0);
        }
        vpipe_set_min_offload(prev_min_);
        ::close(file_);
        ::unlink(path_.c_str());
    }
    int file_ = -1, q_ = -1;
    uint64_t prev_min_ = 0;
    std::string path_;
};

TEST_F(AsyncFallback, SubmitReturnsBeforeThePeerReadsAndTheWorkerMovesItAll) {
    TcpPair t;
    vpipe_stats s0{}, s1{};
    vpipe_get_stats(&s0);
    // the peer reads nothing until the submit has returned: a copy in the submit would never end
    ASSERT_EQ(vpipe_submit_file_to_socket(q_, file_, t.a, 0, kBig, 21), 0);
    vpipe_completion c{};
    EXPECT_EQ(vpipe_reap(q_, &c, 1), 0);   // 64 MiB cannot be in flight already: not done
    Drain peer(t.b);
    ASSERT_EQ(reap_wait(q_, &c, 1), 1);
    EXPECT_EQ(c.user_data, 21u);
    EXPECT_EQ(c.res, static_cast<int64_t>(kBig));
    EXPECT_EQ(c.result.path, VPIPE_RESULT_FALLBACK);
    EXPECT_STREQ(c.result.reason, "below the offload threshold");
    EXPECT_EQ(c.result.moved, kBig);
    EXPECT_EQ(c.result.guest_copied, kBig);
    EXPECT_EQ(::fcntl(t.a, F_GETFL) & O_NONBLOCK, 0);   // the socket's mode as it was
    ::shutdown(t.a, SHUT_WR);
    const auto& got = peer.wait();
    EXPECT_EQ(got.size(), kBig);
    EXPECT_TRUE(is_big_file(got, 0, 0, kBig));
    vpipe_get_stats(&s1);
    EXPECT_EQ(s1.ops_fallback - s0.ops_fallback, 1u);
    EXPECT_EQ(s1.ops_below_threshold - s0.ops_below_threshold, 1u);
    EXPECT_EQ(s1.bytes_guest - s0.bytes_guest, kBig);
}

TEST_F(AsyncFallback, ANonBlockingSocketGetsEveryByteAndStaysNonBlocking) {
    TcpPair t;
    ASSERT_EQ(::fcntl(t.a, F_SETFL, ::fcntl(t.a, F_GETFL) | O_NONBLOCK), 0);
    const uint64_t off = 12345;   // not page aligned
    const size_t len = kBig - off;
    ASSERT_EQ(vpipe_submit_file_to_socket(q_, file_, t.a, static_cast<off_t>(off), len, 1), 0);
    Drain peer(t.b);
    vpipe_completion c{};
    ASSERT_EQ(reap_wait(q_, &c, 1), 1);
    EXPECT_EQ(c.res, static_cast<int64_t>(len));
    EXPECT_EQ(c.result.path, VPIPE_RESULT_FALLBACK);
    EXPECT_NE(::fcntl(t.a, F_GETFL) & O_NONBLOCK, 0);
    ::shutdown(t.a, SHUT_WR);
    const auto& got = peer.wait();
    EXPECT_EQ(got.size(), len);
    EXPECT_TRUE(is_big_file(got, 0, off, len));
}

TEST_F(AsyncFallback, SocketToFileWaitsForTheSenderOffTheCallersThread) {
    TcpPair t;
    ASSERT_EQ(::fcntl(t.b, F_SETFL, ::fcntl(t.b, F_GETFL) | O_NONBLOCK), 0);   // the source
    char p[] = "/var/tmp/vpipe-q-dst-XXXXXX";
    int dst = ::mkstemp(p);
    ASSERT_GE(dst, 0);
    const size_t len = 16u << 20;
    // nothing has been sent yet: a copy in the submit would wait for it forever
    ASSERT_EQ(vpipe_submit_socket_to_file(q_, t.b, dst, 4096, len, 2), 0);
    vpipe_completion c{};
    EXPECT_EQ(vpipe_reap(q_, &c, 1), 0);
    std::thread sender([&] {
        std::vector<uint8_t> buf(1 << 20);
        for (size_t o = 0; o < len + 10; o += buf.size()) {   // 10 bytes more: left in the socket
            const size_t n = std::min(buf.size(), len + 10 - o);
            for (size_t i = 0; i < n; ++i) buf[i] = big_byte(o + i);
            for (size_t d = 0; d < n;) {
                ssize_t w = ::send(t.a, buf.data() + d, n - d, MSG_NOSIGNAL);
                if (w <= 0) return;
                d += static_cast<size_t>(w);
            }
        }
    });
    ASSERT_EQ(reap_wait(q_, &c, 1), 1);
    sender.join();
    EXPECT_EQ(c.res, static_cast<int64_t>(len));
    EXPECT_EQ(c.result.path, VPIPE_RESULT_FALLBACK);
    EXPECT_NE(::fcntl(t.b, F_GETFL) & O_NONBLOCK, 0);
    std::vector<uint8_t> got(len);
    ASSERT_EQ(::pread(dst, got.data(), len, 4096), static_cast<ssize_t>(len));
    EXPECT_TRUE(is_big_file(got, 0, 0, len));
    uint8_t rest[16];
    ASSERT_EQ(::recv(t.b, rest, sizeof(rest), MSG_DONTWAIT), 10);   // the socket continues right after
    EXPECT_EQ(rest[0], big_byte(len));
    ::close(dst);
    ::unlink(p);
}

TEST_F(AsyncFallback, CancelStopsARunningCopyWithTheExactPrefix) {
    TcpPair t;
    vpipe_stats s0{}, s1{};
    vpipe_get_stats(&s0);
    ASSERT_EQ(vpipe_submit_file_to_socket(q_, file_, t.a, 0, kBig, 31), 0);
    ASSERT_TRUE(peer_readable(t.b));   // the copy runs; the peer does not read: it waits
    ASSERT_EQ(vpipe_cancel(q_, 31), 0);
    vpipe_completion c{};
    ASSERT_EQ(reap_wait(q_, &c, 1), 1);
    EXPECT_EQ(c.user_data, 31u);
    EXPECT_EQ(c.res, -ECANCELED);
    EXPECT_EQ(c.result.path, VPIPE_RESULT_FAILED);
    EXPECT_EQ(c.result.error, ECANCELED);
    EXPECT_STREQ(c.result.reason, "cancelled");
    const uint64_t moved = c.result.moved;
    EXPECT_GT(moved, 0u);
    EXPECT_LT(moved, kBig);
    EXPECT_EQ(c.result.guest_copied, moved);
    errno = 0;
    EXPECT_EQ(vpipe_cancel(q_, 31), -1);
    EXPECT_EQ(errno, ENOENT);
    vpipe_get_stats(&s1);
    EXPECT_EQ(s1.ops_failed - s0.ops_failed, 1u);
    EXPECT_EQ(s1.bytes_guest - s0.bytes_guest, moved);
    // the socket is the application's again, blocking as before, right after the prefix
    EXPECT_EQ(::fcntl(t.a, F_GETFL) & O_NONBLOCK, 0);
    Drain peer(t.b);
    ASSERT_EQ(vpipe_file_to_socket_fd(file_, t.a, static_cast<off_t>(moved), 4096), 4096);
    ASSERT_EQ(::send(t.a, "MARK", 4, MSG_NOSIGNAL), 4);
    ::shutdown(t.a, SHUT_WR);
    const auto& got = peer.wait();
    ASSERT_EQ(got.size(), moved + 4096 + 4);
    EXPECT_TRUE(is_big_file(got, 0, 0, moved + 4096));
    EXPECT_EQ(std::string(got.end() - 4, got.end()), "MARK");
}

TEST_F(AsyncFallback, CancelledSocketToSocketLeavesTheSourceRightAfterThePrefix) {
    TcpPair src, dst;   // src.b sends into src.a; dst.a sends to dst.b, which does not read yet
    // the far end's buffers small: the worker stops in the middle of writing what it received
    const int small = 4096;
    ASSERT_EQ(::setsockopt(dst.a, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
    ASSERT_EQ(::setsockopt(dst.b, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
    std::thread sender([&] {
        std::vector<uint8_t> buf(1 << 20);
        for (size_t o = 0; o < kBig; o += buf.size()) {
            for (size_t i = 0; i < buf.size(); ++i) buf[i] = big_byte(o + i);
            for (size_t d = 0; d < buf.size();) {
                ssize_t w = ::send(src.b, buf.data() + d, buf.size() - d, MSG_NOSIGNAL);
                if (w <= 0) return;
                d += static_cast<size_t>(w);
            }
        }
        ::shutdown(src.b, SHUT_WR);
    });
    ASSERT_EQ(vpipe_submit_socket_to_socket(q_, src.a, dst.a, kBig, 61), 0);
    ASSERT_TRUE(peer_readable(dst.b));   // relaying; the far end full, the worker waits
    ASSERT_EQ(vpipe_cancel(q_, 61), 0);
    vpipe_completion c{};
    ASSERT_EQ(reap_wait(q_, &c, 1), 1);
    EXPECT_EQ(c.res, -ECANCELED);
    const uint64_t moved = c.result.moved;
    EXPECT_GT(moved, 0u);
    EXPECT_LT(moved, kBig);
    // the far end got exactly the prefix...
    Drain far(dst.b);
    ::shutdown(dst.a, SHUT_WR);
    const auto& got = far.wait();
    ASSERT_EQ(got.size(), moved);
    EXPECT_TRUE(is_big_file(got, 0, 0, moved));
    // ...and the source continues right after it: nothing taken that was not written
    Drain rest(src.a);
    const auto& tail = rest.wait();
    sender.join();
    ASSERT_EQ(tail.size(), kBig - moved);
    EXPECT_TRUE(is_big_file(tail, 0, moved, kBig - moved));
}

TEST_F(AsyncFallback, ADescriptorIsBusyUntilTheFallbackCompletes) {
    TcpPair t;
    ASSERT_EQ(vpipe_submit_file_to_socket(q_, file_, t.a, 0, kBig, 41), 0);
    ASSERT_TRUE(peer_readable(t.b));
    errno = 0;
    EXPECT_EQ(vpipe_submit_file_to_socket(q_, file_, t.a, 0, 100, 42), -1);
    EXPECT_EQ(errno, EBUSY);
    errno = 0;
    EXPECT_EQ(vpipe_file_to_socket_fd(file_, t.a, 0, 100), -1);   // the blocking call too
    EXPECT_EQ(errno, EBUSY);
    // a source file may feed several operations
    char p[] = "/var/tmp/vpipe-q-dst-XXXXXX";
    int dst = ::mkstemp(p);
    ASSERT_GE(dst, 0);
    EXPECT_EQ(vpipe_file_to_file_fd(file_, dst, 0, 4096, 0), 4096);
    Drain peer(t.b);
    vpipe_completion c{};
    ASSERT_EQ(reap_wait(q_, &c, 1), 1);
    EXPECT_EQ(c.user_data, 41u);
    EXPECT_EQ(c.res, static_cast<int64_t>(kBig));
    EXPECT_EQ(vpipe_file_to_socket_fd(file_, t.a, 0, 100), 100);   // free again
    ::shutdown(t.a, SHUT_WR);
    const auto& got = peer.wait();
    ASSERT_EQ(got.size(), kBig + 100);
    EXPECT_TRUE(is_big_file(got, 0, 0, kBig));
    EXPECT_TRUE(is_big_file(got, kBig, 0, 100));
    ::close(dst);
    ::unlink(p);
}

TEST_F(AsyncFallback, DestroyStopsARunningCopyAndJoinsItsWorker) {
    TcpPair t;
    EXPECT_EQ(vpipe_queue_destroy(q_), 0);
    q_ = -1;
    const size_t before = threads_now();
    int q = vpipe_queue_create(4, 0);
    ASSERT_GE(q, 0);
    ASSERT_EQ(vpipe_submit_file_to_socket(q, file_, t.a, 0, kBig, 51), 0);
    ASSERT_TRUE(peer_readable(t.b));   // running, the peer not reading
    EXPECT_GT(threads_now(), before);
    ASSERT_EQ(vpipe_queue_destroy(q), 0);
    EXPECT_EQ(threads_now(), before);   // the worker is gone
    vpipe_completion c{};
    EXPECT_EQ(vpipe_reap(q, &c, 1), -1);
    EXPECT_EQ(errno, EBADF);
    // the socket is free, open, blocking as before; the peer gets a prefix, then what follows
    EXPECT_EQ(::fcntl(t.a, F_GETFL) & O_NONBLOCK, 0);
    Drain peer(t.b);
    ASSERT_EQ(::send(t.a, "MARK", 4, MSG_NOSIGNAL), 4);
    ::shutdown(t.a, SHUT_WR);
    const auto& got = peer.wait();
    ASSERT_GE(got.size(), 4u);
    const size_t prefix = got.size() - 4;
    EXPECT_GT(prefix, 0u);
    EXPECT_LT(prefix, kBig);
    EXPECT_TRUE(is_big_file(got, 0, 0, prefix));
    EXPECT_EQ(std::string(got.end() - 4, got.end()), "MARK");
}

}  // namespace
