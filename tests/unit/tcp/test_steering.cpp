// Shadow-socket handover across network namespaces, the real thing: a mini lab
//
//   vpt-client (10.198.0.3) --veth-- [phys0  br0 (10.198.0.1)  vif1] --veth-- vpt-vm (10.198.0.2)
//                                     `------------ vpt-dom0 ----------'
//
// A TCP connection client <-> vm is frozen in the VM, restored in dom0 as a transparent shadow
// socket with the flow steered into dom0's stack, used for 16 MiB each way, then frozen in dom0
// and restored in the VM, which goes on with the conversation. Only the test namespaces'
// 10.198.0.0/24 addresses are ever used. Every namespace is removed in TearDown.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "steering/steering.h"
#include "support/netns_worker.h"
#include "tcp/tcp_repair.h"

using vpipe::UniqueFd;
using vpipe::test::capture;
using vpipe::test::NsWorker;
using vpipe::test::sh;
using vpipe::steering::FlowKey;
using vpipe::steering::Steering;
namespace tcp = vpipe::tcp;
using Clock = std::chrono::steady_clock;

namespace {

const char* const kDom0 = "vpt-dom0";
const char* const kVm = "vpt-vm";
const char* const kClient = "vpt-client";
const char* const kVmIp = "10.198.0.2";
const char* const kClientIp = "10.198.0.3";
constexpr uint16_t kVmPort = 5000;

// deterministic byte stream + FNV-1a
struct Stream {
    uint64_t x;
    explicit Stream(uint64_t seed) : x(seed * 0x9E3779B97F4A7C15ull + 1) {}
    void fill(uint8_t* p, size_t n) {
        for (size_t i = 0; i < n; ++i) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            p[i] = static_cast<uint8_t>(x);
        }
    }
};
struct Fnv {
    uint64_t h = 1469598103934665603ull;
    void add(const uint8_t* p, size_t n) {
        for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
    }
};

uint64_t send_stream(int fd, uint64_t seed, size_t total) {
    Stream s(seed);
    Fnv f;
    std::vector<uint8_t> buf(64 << 10);
    size_t done = 0;
    while (done < total) {
        size_t n = std::min(buf.size(), total - done);
        s.fill(buf.data(), n);
        f.add(buf.data(), n);
        size_t off = 0;
        while (off < n) {
            ssize_t w = send(fd, buf.data() + off, n - off, MSG_NOSIGNAL);
            if (w <= 0) return 0;
            off += static_cast<size_t>(w);
        }
        done += n;
    }
    return f.h;
}

// returns the checksum of exactly `total` bytes, or 0 on EOF/error/timeout
uint64_t recv_stream(int fd, size_t total, int timeout_ms = 30000) {
    Fnv f;
    std::vector<uint8_t> buf(64 << 10);
    size_t done = 0;
    auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    while (done < total) {
        pollfd p{fd, POLLIN, 0};
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
        if (left <= 0 || poll(&p, 1, static_cast<int>(left)) <= 0) return 0;
        ssize_t r = recv(fd, buf.data(), std::min(buf.size(), total - done), MSG_DONTWAIT);
        if (r == 0) return 0;
        if (r < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            return 0;
        }
        f.add(buf.data(), static_cast<size_t>(r));
        done += static_cast<size_t>(r);
    }
    return f.h;
}

uint64_t checksum_of(uint64_t seed, size_t total) {
    Stream s(seed);
    Fnv f;
    std::vector<uint8_t> buf(64 << 10);
    for (size_t done = 0; done < total;) {
        size_t n = std::min(buf.size(), total - done);
        s.fill(buf.data(), n);
        f.add(buf.data(), n);
        done += n;
    }
    return f.h;
}

bool wait_inq(int fd, int want, int ms = 5000) {
    for (int i = 0; i < ms; ++i) {
        int v = 0;
        ioctl(fd, FIONREAD, &v);
        if (v >= want) return true;
        usleep(1000);
    }
    return false;
}

int tcp_state(int fd) {
    struct tcp_info ti {};
    socklen_t l = sizeof(ti);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &l) < 0) return -1;
    return ti.tcpi_state;
}

double us(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

struct Percentiles {
    std::vector<double> v;
    void add(double x) { v.push_back(x); }
    double p(double q) {
        std::sort(v.begin(), v.end());
        if (v.empty()) return 0;
        size_t i = static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5);
        return v[std::min(i, v.size() - 1)];
    }
};

class Lab : public ::testing::Test {
protected:
    static void remove_namespaces() {
        for (const char* ns : {kClient, kVm, kDom0}) sh(std::string("ip netns del ") + ns + " 2>/dev/null");
    }

    void SetUp() override {
        remove_namespaces();
        const std::string cmds[] = {
            "ip netns add vpt-dom0",
            "ip netns add vpt-vm",
            "ip netns add vpt-client",
            "ip -n vpt-dom0 link set lo up",
            "ip -n vpt-vm link set lo up",
            "ip -n vpt-client link set lo up",
            "ip -n vpt-dom0 link add br0 type bridge stp_state 0 forward_delay 0",
            "ip -n vpt-dom0 addr add 10.198.0.1/24 dev br0",
            "ip -n vpt-dom0 link set br0 up",
            "ip -n vpt-dom0 link add vif1 type veth peer name eth0 netns vpt-vm",
            "ip -n vpt-dom0 link add phys0 type veth peer name eth0 netns vpt-client",
            "ip -n vpt-dom0 link set vif1 master br0 up",
            "ip -n vpt-dom0 link set phys0 master br0 up",
            "ip -n vpt-vm addr add 10.198.0.2/24 dev eth0",
            "ip -n vpt-vm link set eth0 up",
            "ip -n vpt-client addr add 10.198.0.3/24 dev eth0",
            "ip -n vpt-client link set eth0 up",
        };
        for (const auto& c : cmds) ASSERT_EQ(sh(c), 0) << c;
        dom0_ = std::make_unique<NsWorker>(kDom0);
        vm_ = std::make_unique<NsWorker>(kVm);
        client_ = std::make_unique<NsWorker>(kClient);
        ASSERT_TRUE(dom0_->ok() && vm_->ok() && client_->ok());
        steering_ = dom0_->run([] { return Steering::create(); });
        ASSERT_TRUE(steering_);
    }

    void TearDown() override {
        if (steering_) dom0_->run([this] { steering_.reset(); });
        dom0_.reset();
        vm_.reset();
        client_.reset();
        remove_namespaces();
        for (const char* ns : {kClient, kVm, kDom0})
            EXPECT_NE(sh(std::string("ip netns list | grep -qw ") + ns), 0) << ns << " left behind";
    }

    // client connects to the vm; returns {vm side, client side}
    std::pair<UniqueFd, UniqueFd> connect_pair() {
        UniqueFd l = vm_->run([] {
            UniqueFd s(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
            int one = 1;
            setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
            sockaddr_in a{};
            a.sin_family = AF_INET;
            a.sin_port = htons(kVmPort);
            inet_pton(AF_INET, kVmIp, &a.sin_addr);
            if (bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) || listen(s.get(), 4)) s.reset();
            return s;
        });
        EXPECT_TRUE(l);
        UniqueFd c = client_->run([] {
            UniqueFd s(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
            sockaddr_in a{};
            a.sin_family = AF_INET;
            a.sin_port = htons(kVmPort);
            inet_pton(AF_INET, kVmIp, &a.sin_addr);
            if (connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a))) s.reset();
            return s;
        });
        EXPECT_TRUE(c);
        UniqueFd v(accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC));
        EXPECT_TRUE(v);
        return {std::move(v), std::move(c)};
    }

    std::string dom0_ruleset() { return capture("ip netns exec vpt-dom0 nft list ruleset 2>&1"); }

    std::unique_ptr<NsWorker> dom0_, vm_, client_;
    std::unique_ptr<Steering> steering_;
};

// ---- the hand-over steps, as the engine / the guest would do them ----------------------------

struct Timing {
    double freeze = 0, restore = 0, steer = 0, total = 0;
};

// VM -> dom0. `app` stays the application's descriptor (disconnected); returns the shadow.
UniqueFd to_dom0(NsWorker& vm, NsWorker& dom0, Steering& st, int app, Timing* t = nullptr) {
    auto t0 = Clock::now();
    vpipe_tcp_state s{};
    std::vector<uint8_t> sq, rq;
    // Stands in for the guest blocking its 4-tuple before it freezes: a frozen socket still
    // takes (and ACKs) segments, and a disconnected one would answer them with RST.
    FlowKey key = FlowKey::from_tcp_state(vpipe_tcp_state{});
    {
        sockaddr_in l{}, p{};
        socklen_t ll = sizeof(l), pl = sizeof(p);
        getsockname(app, reinterpret_cast<sockaddr*>(&l), &ll);
        getpeername(app, reinterpret_cast<sockaddr*>(&p), &pl);
        key.family = AF_INET;
        memcpy(key.local_addr.data(), &l.sin_addr, 4);
        memcpy(key.remote_addr.data(), &p.sin_addr, 4);
        key.local_port = ntohs(l.sin_port);
        key.remote_port = ntohs(p.sin_port);
        auto h = Clock::now();
        EXPECT_EQ(dom0.run([&] { return st.hold_flow(key); }), 0) << st.last_error();
        t0 += Clock::now() - h;  // not part of the hand-over proper
    }
    // the guest side: freeze and let go of the 4-tuple
    int r = vm.run([&] {
        auto a = Clock::now();
        int rr = tcp::freeze(app, &s, &sq, &rq);
        if (t) t->freeze = us(Clock::now() - a);
        if (rr == 0) rr = tcp::disconnect_silently(app);
        return rr;
    });
    EXPECT_EQ(r, 0);
    if (r) return {};
    EXPECT_EQ(FlowKey::from_tcp_state(s), key);
    UniqueFd shadow;
    r = dom0.run([&] {
        auto a = Clock::now();
        tcp::RestoreOptions ro;
        ro.transparent = true;
        ro.no_window_probe = true;  // its answer would be dropped by the hold anyway
        int rr = tcp::restore(s, sq, rq, ro, &shadow);
        auto b = Clock::now();
        if (rr == 0) rr = st.add_flow(key);
        auto c = Clock::now();
        if (t) {
            t->restore = us(b - a);
            t->steer = us(c - b);
        }
        return rr;
    });
    EXPECT_EQ(r, 0) << st.last_error();
    if (t) t->total = us(Clock::now() - t0);
    return shadow;
}

// dom0 -> VM: the shadow is frozen and closed silently, the VM restores onto `app`.
void to_vm(NsWorker& vm, NsWorker& dom0, Steering& st, UniqueFd shadow, int app, Timing* t = nullptr) {
    auto t0 = Clock::now();
    vpipe_tcp_state s{};
    std::vector<uint8_t> sq, rq;
    int r = dom0.run([&] {
        auto a = Clock::now();
        int rr = tcp::freeze(shadow.get(), &s, &sq, &rq);
        if (t) t->freeze = us(Clock::now() - a);
        if (rr) return rr;
        auto b = Clock::now();
        // client frames are dropped (not handed to the VM, which has no socket yet)
        rr = st.hold_flow(FlowKey::from_tcp_state(s));
        if (t) t->steer = us(Clock::now() - b);
        if (rr) return rr;
        return tcp::close_silently(shadow.release());
    });
    ASSERT_EQ(r, 0) << st.last_error();
    r = vm.run([&] {
        auto a = Clock::now();
        UniqueFd fresh;
        tcp::RestoreOptions ro;
        ro.no_window_probe = true;  // the flow is still held in dom0
        int rr = tcp::restore(s, sq, rq, ro, &fresh);
        if (t) t->restore = us(Clock::now() - a);
        if (rr) return rr;
        if ((rr = tcp::copy_socket_options(app, fresh.get()))) return rr;
        return tcp::replace_fd(app, fresh.get());
    });
    ASSERT_EQ(r, 0);
    r = dom0.run([&] { return st.remove_flow(FlowKey::from_tcp_state(s)); });
    ASSERT_EQ(r, 0) << st.last_error();
    if (t) t->total = us(Clock::now() - t0);
}

TEST_F(Lab, HandoverToDom0AndBack16MiB) {
    auto [vmfd, cfd] = connect_pair();
    ASSERT_TRUE(vmfd && cfd);
    const int app = vmfd.get();
    int one = 1, idle = 33;
    setsockopt(app, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(app, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));

    // a little conversation, then 3000 bytes the application has not read yet
    ASSERT_NE(send_stream(cfd.get(), 1, 1000), 0u);
    ASSERT_EQ(recv_stream(app, 1000), checksum_of(1, 1000));
    ASSERT_NE(send_stream(app, 2, 2000), 0u);
    ASSERT_EQ(recv_stream(cfd.get(), 2000), checksum_of(2, 2000));
    ASSERT_NE(send_stream(cfd.get(), 3, 3000), 0u);
    ASSERT_TRUE(wait_inq(app, 3000));

    // ---- to dom0
    UniqueFd shadow = to_dom0(*vm_, *dom0_, *steering_, app);
    ASSERT_TRUE(shadow);
    std::vector<FlowKey> fl;
    ASSERT_EQ(dom0_->run([&] { return steering_->flows(&fl); }), 0);
    ASSERT_EQ(fl.size(), 1u);
    EXPECT_EQ(fl[0].to_string(), std::string(kClientIp) + ":" + std::to_string(fl[0].remote_port) + " -> " +
                                     kVmIp + ":5000");
    printf("[ info ] dom0 ruleset while offloaded:\n%s", dom0_ruleset().c_str());

    // the bytes the application had not read are in the shadow socket
    EXPECT_EQ(recv_stream(shadow.get(), 3000), checksum_of(3, 3000));

    // dom0 <-> client, 16 MiB each way at once
    constexpr size_t kBig = 16u << 20;
    uint64_t got_client = 0, got_dom0 = 0, sent_dom0 = 0, sent_client = 0;
    auto t0 = Clock::now();
    std::thread a([&] { sent_dom0 = send_stream(shadow.get(), 10, kBig); });
    std::thread b([&] { sent_client = send_stream(cfd.get(), 11, kBig); });
    std::thread c([&] { got_client = recv_stream(cfd.get(), kBig); });
    got_dom0 = recv_stream(shadow.get(), kBig);
    a.join();
    b.join();
    c.join();
    double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    printf("[ info ] shadow socket <-> client: 2 x 16 MiB in %.3f s\n", secs);
    EXPECT_EQ(got_client, checksum_of(10, kBig));
    EXPECT_EQ(sent_dom0, checksum_of(10, kBig));
    EXPECT_EQ(got_dom0, checksum_of(11, kBig));
    EXPECT_EQ(sent_client, checksum_of(11, kBig));

    // 5000 bytes dom0 does not read: they travel back to the VM
    ASSERT_NE(send_stream(cfd.get(), 12, 5000), 0u);
    ASSERT_TRUE(wait_inq(shadow.get(), 5000));

    // ---- back to the VM
    to_vm(*vm_, *dom0_, *steering_, std::move(shadow), app);
    EXPECT_EQ(tcp_state(app), 1);
    int v = 0;
    socklen_t vl = sizeof(v);
    getsockopt(app, IPPROTO_TCP, TCP_KEEPIDLE, &v, &vl);
    EXPECT_EQ(v, idle);  // the application's options survived

    EXPECT_EQ(recv_stream(app, 5000), checksum_of(12, 5000));
    std::thread d([&] { sent_client = send_stream(cfd.get(), 13, 1 << 20); });
    EXPECT_EQ(recv_stream(app, 1 << 20), checksum_of(13, 1 << 20));
    d.join();
    std::thread e([&] { send_stream(app, 14, 1 << 20); });
    EXPECT_EQ(recv_stream(cfd.get(), 1 << 20), checksum_of(14, 1 << 20));
    e.join();

    // the client never saw FIN or RST
    EXPECT_EQ(tcp_state(cfd.get()), 1);
    int err = 0;
    socklen_t el = sizeof(err);
    getsockopt(cfd.get(), SOL_SOCKET, SO_ERROR, &err, &el);
    EXPECT_EQ(err, 0);

    // nothing of the flow left in dom0's ruleset
    ASSERT_EQ(dom0_->run([&] { return steering_->flows(&fl); }), 0);
    EXPECT_TRUE(fl.empty());
    std::string rs = dom0_ruleset();
    EXPECT_EQ(rs.find("10.198.0"), std::string::npos) << rs;
    EXPECT_NE(rs.find("table bridge vpipe"), std::string::npos) << rs;

    // destroy(): no table, no rule, no route left
    dom0_->run([&] { steering_->destroy(); });
    rs = dom0_ruleset();
    EXPECT_EQ(rs.find("vpipe"), std::string::npos) << rs;
    std::string rules = capture("ip -n vpt-dom0 rule; ip -n vpt-dom0 -6 rule");
    EXPECT_EQ(rules.find("0x7670"), std::string::npos) << rules;
    std::string routes = capture("ip -n vpt-dom0 route show table 7670 2>&1; ip -n vpt-dom0 -6 route show table 7670 2>&1");
    EXPECT_EQ(routes.find("local"), std::string::npos) << routes;

    // orderly close by the VM application
    shutdown(app, SHUT_WR);
    char x;
    EXPECT_EQ(recv(cfd.get(), &x, 1, 0), 0);
}

TEST_F(Lab, SteeringElementsAndErrors) {
    FlowKey k;
    k.family = AF_INET;
    inet_pton(AF_INET, kClientIp, k.remote_addr.data());
    inet_pton(AF_INET, kVmIp, k.local_addr.data());
    k.remote_port = 40000;
    k.local_port = kVmPort;
    FlowKey k6;
    k6.family = AF_INET6;
    inet_pton(AF_INET6, "fd98::3", k6.remote_addr.data());
    inet_pton(AF_INET6, "fd98::2", k6.local_addr.data());
    k6.remote_port = 40001;
    k6.local_port = kVmPort;
    ASSERT_EQ(sh("ip -n vpt-dom0 addr add fd98::1/64 dev br0 nodad"), 0);
    std::vector<FlowKey> fl;
    dom0_->run([&] {
        EXPECT_EQ(steering_->add_flow(k), 0) << steering_->last_error();
        EXPECT_EQ(steering_->add_flow(k), -EEXIST);
        EXPECT_EQ(steering_->add_flow(k6), 0) << steering_->last_error();
        EXPECT_EQ(steering_->flows(&fl), 0);
        EXPECT_EQ(fl.size(), 2u);
        EXPECT_TRUE(std::find(fl.begin(), fl.end(), k) != fl.end());
        EXPECT_TRUE(std::find(fl.begin(), fl.end(), k6) != fl.end());
        EXPECT_EQ(steering_->hold_flow(k), 0) << steering_->last_error();
        EXPECT_EQ(steering_->flows(&fl), 0);
        EXPECT_EQ(fl.size(), 1u);
        EXPECT_EQ(steering_->add_flow(k), 0) << steering_->last_error();  // hold -> steer
        EXPECT_EQ(steering_->remove_flow(k), 0);
        EXPECT_EQ(steering_->remove_flow(k), -ENOENT);
        EXPECT_EQ(steering_->remove_flow(k6), 0);
        EXPECT_EQ(steering_->flows(&fl), 0);
        EXPECT_TRUE(fl.empty());
        FlowKey bad = k;
        bad.family = 0;
        EXPECT_EQ(steering_->add_flow(bad), -EINVAL);
        // an address not routed via a bridge
        FlowKey lo = k;
        inet_pton(AF_INET, "127.0.0.1", lo.local_addr.data());
        EXPECT_EQ(steering_->add_flow(lo), -ENETUNREACH);
    });
    std::string rs = dom0_ruleset();
    printf("[ info ] nft ruleset created by Steering::create():\n%s", rs.c_str());
    dom0_->run([&] {
        // a second create() with the same table replaces it (no duplicates)
        auto again = Steering::create();
        EXPECT_TRUE(again);
        rs = dom0_ruleset();
    });
    size_t n = 0;
    for (size_t p = rs.find("table bridge vpipe"); p != std::string::npos; p = rs.find("table bridge vpipe", p + 1)) ++n;
    EXPECT_EQ(n, 1u) << rs;
}

// p50/p99 of the hand-over steps over many round trips (the issue asks for these numbers).
TEST_F(Lab, HandoverLatency) {
    int iters = 200;
    if (const char* e = getenv("VPIPE_HANDOVER_ITERS")) iters = std::max(1, atoi(e));
    auto [vmfd, cfd] = connect_pair();
    ASSERT_TRUE(vmfd && cfd);
    const int app = vmfd.get();
    Percentiles f_vm, r_d0, add, tot_in, f_d0, r_vm, hold, tot_out;
    uint8_t ping[64], pong[64];
    for (int i = 0; i < iters; ++i) {
        Timing ti, to;
        UniqueFd shadow = to_dom0(*vm_, *dom0_, *steering_, app, &ti);
        ASSERT_TRUE(shadow) << "iteration " << i;
        // one exchange through the shadow socket
        memset(ping, i & 0xff, sizeof(ping));
        ASSERT_EQ(send(cfd.get(), ping, sizeof(ping), 0), 64);
        ASSERT_EQ(recv(shadow.get(), pong, sizeof(pong), MSG_WAITALL), 64);
        ASSERT_EQ(memcmp(ping, pong, 64), 0);
        ASSERT_EQ(send(shadow.get(), pong, sizeof(pong), 0), 64);
        ASSERT_EQ(recv(cfd.get(), ping, sizeof(ping), MSG_WAITALL), 64);
        to_vm(*vm_, *dom0_, *steering_, std::move(shadow), app, &to);
        if (HasFatalFailure()) return;
        // and one through the VM's socket
        ASSERT_EQ(send(cfd.get(), ping, sizeof(ping), 0), 64);
        ASSERT_EQ(recv(app, pong, sizeof(pong), MSG_WAITALL), 64);
        ASSERT_EQ(send(app, pong, sizeof(pong), 0), 64);
        ASSERT_EQ(recv(cfd.get(), ping, sizeof(ping), MSG_WAITALL), 64);
        f_vm.add(ti.freeze);
        r_d0.add(ti.restore);
        add.add(ti.steer);
        tot_in.add(ti.total);
        f_d0.add(to.freeze);
        r_vm.add(to.restore);
        hold.add(to.steer);
        tot_out.add(to.total);
    }
    EXPECT_EQ(tcp_state(cfd.get()), 1);
    auto line = [](const char* what, Percentiles& p) {
        printf("[ info ] %-44s p50 %8.1f us   p99 %8.1f us\n", what, p.p(0.5), p.p(0.99));
    };
    printf("[ info ] hand-over latency over %d round trips (IPv4, empty queues):\n", iters);
    line("VM->dom0 freeze (guest)", f_vm);
    line("VM->dom0 restore shadow (dom0)", r_d0);
    line("VM->dom0 add_flow (dom0)", add);
    line("VM->dom0 whole hand-over (incl. thread hops)", tot_in);
    line("dom0->VM freeze shadow (dom0)", f_d0);
    line("dom0->VM hold_flow (dom0)", hold);
    line("dom0->VM restore + options + replace_fd (guest)", r_vm);
    line("dom0->VM whole hand-back incl. remove_flow", tot_out);
}

}  // namespace
