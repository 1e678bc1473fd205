// The guest's flow block against the real kernel: two namespaces joined by a veth pair,
//
//   vpb-vm (10.197.0.2, runs the block) --veth-- vpb-peer (10.197.0.3)
//
// While a flow is blocked the VM's stack neither sees nor sends its segments; the peer's
// segments are held and reach the socket as soon as the flow is unblocked -- well before the
// peer's retransmission timeout (>= 200 ms), which is what a dropped segment costs. The same
// test with the hold disabled shows the difference (and that the test can fail).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "guest_flow_block.h"
#include "support/netns_worker.h"
#include "util/unique_fd.h"

using vpipe::UniqueFd;
using vpipe::agent::GuestFlowBlock;
using vpipe::test::capture;
using vpipe::test::NsWorker;
using vpipe::test::sh;
using Clock = std::chrono::steady_clock;

namespace {

constexpr const char* kVmIp = "10.197.0.2";
constexpr const char* kPeerIp = "10.197.0.3";
constexpr uint16_t kPort = 6100;
constexpr const char* kTable = "vpipe_guest_test";

sockaddr_in addr(const char* ip, uint16_t port) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    inet_pton(AF_INET, ip, &a.sin_addr);
    return a;
}

int outq(int fd) {
    int v = -1;
    ioctl(fd, SIOCOUTQ, &v);
    return v;
}

// waits up to `ms` for fd to become readable; the time it took, or -1
double readable_after_ms(int fd, int ms) {
    auto t0 = Clock::now();
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, ms) != 1) return -1;
    return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

class FlowBlock : public ::testing::Test {
protected:
    static void remove_namespaces() { sh("ip netns del vpb-vm 2>/dev/null; ip netns del vpb-peer 2>/dev/null"); }

    void SetUp() override {
        if (geteuid() != 0) GTEST_SKIP() << "needs root (network namespaces)";
        remove_namespaces();
        const char* cmds[] = {
            "ip netns add vpb-vm",
            "ip netns add vpb-peer",
            "ip -n vpb-vm link set lo up",
            "ip -n vpb-peer link set lo up",
            "ip -n vpb-vm link add eth0 type veth peer name eth0 netns vpb-peer",
            "ip -n vpb-vm addr add 10.197.0.2/24 dev eth0",
            "ip -n vpb-peer addr add 10.197.0.3/24 dev eth0",
            "ip -n vpb-vm link set eth0 up",
            "ip -n vpb-peer link set eth0 up",
        };
        for (const char* c : cmds) ASSERT_EQ(sh(c), 0) << c;
        vm_ = std::make_unique<NsWorker>("vpb-vm");
        peer_ = std::make_unique<NsWorker>("vpb-peer");
        ASSERT_TRUE(vm_->ok() && peer_->ok());
    }
    void TearDown() override {
        if (vm_) vm_->run([this] {
            block_.reset();
            return 0;
        });
        vm_.reset();
        peer_.reset();
        remove_namespaces();
    }

    void make_block(int hold_queue) {
        vm_->run([&] {
            block_ = GuestFlowBlock::create(kTable, hold_queue);
            return 0;
        });
        ASSERT_TRUE(block_);
    }

    // a connection peer -> vm; fills vm_fd_, peer_fd_ and the VM-side flow state
    void connect_pair() {
        UniqueFd l(vm_->run([] {
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            int one = 1;
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
            sockaddr_in a = addr(kVmIp, kPort);
            if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) < 0 || listen(fd, 4) < 0) return -1;
            return fd;
        }));
        ASSERT_TRUE(l);
        peer_fd_ = UniqueFd(peer_->run([] {
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            sockaddr_in a = addr(kVmIp, kPort);
            return connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 ? fd : -1;
        }));
        ASSERT_TRUE(peer_fd_);
        vm_fd_ = UniqueFd(accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC));
        ASSERT_TRUE(vm_fd_);
        sockaddr_in local{}, remote{};
        socklen_t ll = sizeof(local), rl = sizeof(remote);
        getsockname(vm_fd_.get(), reinterpret_cast<sockaddr*>(&local), &ll);
        getpeername(vm_fd_.get(), reinterpret_cast<sockaddr*>(&remote), &rl);
        st_ = {};
        st_.family = VPIPE_AF_INET;
        std::memcpy(st_.local_addr, &local.sin_addr, 4);
        std::memcpy(st_.remote_addr, &remote.sin_addr, 4);
        st_.local_port = local.sin_port;
        st_.remote_port = remote.sin_port;
    }

    int block() { return vm_->run([this] { return block_->block(st_); }); }
    int unblock() { return vm_->run([this] { return block_->unblock(st_); }); }

    // the peer sends `n` bytes while the flow is blocked: nothing may reach the VM's socket and
    // nothing may be acknowledged
    void send_while_blocked(size_t n) {
        std::vector<uint8_t> b(n);
        for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(i * 7 + 3);
        ASSERT_EQ(send(peer_fd_.get(), b.data(), n, MSG_NOSIGNAL), static_cast<ssize_t>(n));
        // an absence is checked: give a segment that leaked through time to arrive (on veth it
        // takes microseconds), then nothing may be there
        usleep(50 * 1000);
        uint8_t x;
        EXPECT_EQ(recv(vm_fd_.get(), &x, 1, MSG_DONTWAIT), -1);
        EXPECT_EQ(errno, EAGAIN);
        EXPECT_EQ(outq(peer_fd_.get()), static_cast<int>(n)) << "the VM acknowledged a blocked segment";
    }

    void expect_bytes(size_t n) {
        std::vector<uint8_t> got;
        auto deadline = Clock::now() + std::chrono::seconds(5);
        while (got.size() < n && Clock::now() < deadline) {
            uint8_t buf[4096];
            pollfd p{vm_fd_.get(), POLLIN, 0};
            if (poll(&p, 1, 100) != 1) continue;
            ssize_t r = recv(vm_fd_.get(), buf, sizeof(buf), MSG_DONTWAIT);
            if (r > 0) got.insert(got.end(), buf, buf + r);
        }
        ASSERT_EQ(got.size(), n);
        for (size_t i = 0; i < n; ++i) ASSERT_EQ(got[i], static_cast<uint8_t>(i * 7 + 3)) << i;
    }

    std::unique_ptr<NsWorker> vm_, peer_;
    std::unique_ptr<GuestFlowBlock> block_;
    UniqueFd vm_fd_, peer_fd_;
    vpipe_tcp_state st_{};
};

TEST_F(FlowBlock, HeldSegmentsReachTheSocketAtUnblock) {
    make_block(GuestFlowBlock::kDefaultHoldQueue);
    connect_pair();
    ASSERT_EQ(block(), 0);
    EXPECT_EQ(block_->blocked(), 1);
    const std::string rules = capture("ip netns exec vpb-vm nft list table ip " + std::string(kTable));
    EXPECT_NE(rules.find("elements = {"), std::string::npos) << rules;
    send_while_blocked(1000);
    ASSERT_EQ(unblock(), 0);
    // re-injected at once; a dropped segment would wait for the peer's RTO (>= 200 ms)
    const double ms = readable_after_ms(vm_fd_.get(), 150);
    EXPECT_GE(ms, 0) << "the held segment did not arrive before the peer's retransmission";
    EXPECT_GE(block_->reinjected(), 1u);
    expect_bytes(1000);
    EXPECT_EQ(block_->blocked(), 0);
    // the connection goes on both ways
    ASSERT_EQ(send(vm_fd_.get(), "ok", 2, MSG_NOSIGNAL), 2);
    char r[2];
    pollfd p{peer_fd_.get(), POLLIN, 0};
    ASSERT_EQ(poll(&p, 1, 2000), 1);
    EXPECT_EQ(recv(peer_fd_.get(), r, 2, 0), 2);
}

TEST_F(FlowBlock, WithoutHoldTheSegmentWaitsForTheRetransmission) {
    make_block(-1);
    connect_pair();
    ASSERT_EQ(block(), 0);
    send_while_blocked(1000);
    ASSERT_EQ(unblock(), 0);
    EXPECT_EQ(readable_after_ms(vm_fd_.get(), 100), -1) << "dropped, so only the retransmission delivers it";
    EXPECT_EQ(block_->reinjected(), 0u);
    expect_bytes(1000);  // ... which does, later
}

TEST_F(FlowBlock, OutgoingSegmentsAreDroppedNotHeld) {
    make_block(GuestFlowBlock::kDefaultHoldQueue);
    connect_pair();
    ASSERT_EQ(block(), 0);
    ASSERT_EQ(send(vm_fd_.get(), "x", 1, MSG_NOSIGNAL), 1);
    pollfd p{peer_fd_.get(), POLLIN, 0};
    EXPECT_EQ(poll(&p, 1, 100), 0) << "a blocked flow's segment left the VM";
    ASSERT_EQ(unblock(), 0);
    EXPECT_EQ(block_->reinjected(), 0u);
    ASSERT_EQ(poll(&p, 1, 5000), 1);  // the VM's own retransmission
}

TEST_F(FlowBlock, OtherFlowsPassAndManySegmentsKeepTheirOrder) {
    make_block(GuestFlowBlock::kDefaultHoldQueue);
    connect_pair();
    ASSERT_EQ(block(), 0);
    // an unrelated connection of the same VM is untouched meanwhile
    {
        UniqueFd fresh(peer_->run([] {
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            sockaddr_in a = addr(kVmIp, 22);  // nothing listens: an immediate RST is the answer
            int r = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
            return r < 0 && errno == ECONNREFUSED ? fd : -1;
        }));
        EXPECT_TRUE(fresh) << "an unblocked flow was held";
    }
    // 64 segments (TCP_NODELAY, one send each) held and re-injected in arrival order
    std::vector<uint8_t> all;
    for (int i = 0; i < 64; ++i) {
        uint8_t seg[100];
        for (int j = 0; j < 100; ++j) seg[j] = static_cast<uint8_t>((i * 100 + j) * 7 + 3);
        ASSERT_EQ(send(peer_fd_.get(), seg, sizeof(seg), MSG_NOSIGNAL), 100);
        all.insert(all.end(), seg, seg + 100);
    }
    // the 64 segments reach the hold queue (not observable until unblock re-injects them; a
    // segment still in flight then is delivered normally and the checks still hold)
    usleep(50 * 1000);
    ASSERT_EQ(unblock(), 0);
    EXPECT_GE(readable_after_ms(vm_fd_.get(), 150), 0);
    expect_bytes(all.size());
    EXPECT_GE(block_->reinjected(), 2u);
}

TEST_F(FlowBlock, DestroyLeavesNothingBehind) {
    make_block(GuestFlowBlock::kDefaultHoldQueue);
    connect_pair();
    ASSERT_EQ(block(), 0);
    vm_->run([this] {
        block_.reset();
        return 0;
    });
    EXPECT_NE(sh("ip netns exec vpb-vm nft list table ip " + std::string(kTable) + " >/dev/null 2>&1"), 0);
    // a second block binds the same queue again (the first released it)
    make_block(GuestFlowBlock::kDefaultHoldQueue);
    EXPECT_EQ(block(), 0);
    EXPECT_EQ(unblock(), 0);
}

}  // namespace
