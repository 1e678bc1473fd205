// The non-blocking form (vpipe_queue_create / vpipe_submit_* / vpipe_reap / vpipe_cancel) with
// no guest component reachable: the queue's own logic -- argument errors at once and no
// completion, the completion descriptor's readiness, the fallback visible in the completion and
// counted, queue-full EAGAIN, cancel's answers, EBUSY for a descriptor a queue already holds.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include <vpipe/vpipe.h>

namespace {

bool readable(int fd) {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
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
    ASSERT_EQ(::epoll_wait(ep, &got, 1, 1000), 1);
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
    ASSERT_EQ(vpipe_reap(q_, &c, 1), 1);
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
    for (uint64_t i = 0; i < 4; ++i)
        ASSERT_EQ(vpipe_submit_file_to_file(q_, in_, out_, 0, 100, 0, i), 0) << i;
    errno = 0;
    EXPECT_EQ(vpipe_submit_file_to_file(q_, in_, out_, 0, 100, 0, 4), -1);
    EXPECT_EQ(errno, EAGAIN);
    vpipe_completion c[8]{};
    ASSERT_EQ(vpipe_reap(q_, c, 1), 1);
    EXPECT_EQ(c[0].user_data, 0u);   // in submission order
    EXPECT_EQ(vpipe_submit_file_to_file(q_, in_, out_, 0, 100, 0, 4), 0);
    ASSERT_EQ(vpipe_reap(q_, c, 8), 4);
    for (int i = 0; i < 4; ++i) {
        EXPECT_EQ(c[i].user_data, static_cast<uint64_t>(i + 1));
        EXPECT_EQ(c[i].res, 100);
    }
}

TEST_F(Queue, CancelSaysWhereTheOperationIs) {
    errno = 0;
    EXPECT_EQ(vpipe_cancel(q_, 42), -1);
    EXPECT_EQ(errno, ENOENT);
    ASSERT_EQ(vpipe_submit_file_to_file(q_, in_, out_, 0, 100, 0, 42), 0);
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
    EXPECT_EQ(vpipe_reap(q_, &c, 1), 0);
    EXPECT_EQ(vpipe_reap(q2, &c, 1), 1);
    EXPECT_EQ(vpipe_queue_destroy(q2), 0);
    int q3 = vpipe_queue_create(0, 0);
    EXPECT_EQ(q3, q2);
    EXPECT_EQ(vpipe_queue_destroy(q3), 0);
}

}  // namespace
