// vpipe_tcp on the real kernel, same namespace: freeze / close or disconnect silently /
// restore / replace_fd over loopback, IPv4 and IPv6, with bytes left in both queues.
//
// The whole process runs in a private, anonymous network namespace (unshare in main()), so the
// nft rules used to hold back acknowledgements never touch the host and vanish with the process.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <span>
#include <thread>
#include <vector>

#include "tcp/tcp_repair.h"

using vpipe::UniqueFd;
namespace tcp = vpipe::tcp;

namespace {

std::vector<uint8_t> pattern(size_t n, uint32_t seed) {
    std::vector<uint8_t> v(n);
    uint32_t x = seed * 2654435761u + 1;
    for (auto& b : v) {
        x = x * 1103515245u + 12345u;
        b = static_cast<uint8_t>(x >> 16);
    }
    return v;
}

void write_all(int fd, const std::vector<uint8_t>& d) {
    size_t off = 0;
    while (off < d.size()) {
        ssize_t n = send(fd, d.data() + off, d.size() - off, MSG_NOSIGNAL);
        ASSERT_GT(n, 0) << strerror(errno);
        off += static_cast<size_t>(n);
    }
}

// reads exactly n bytes (poll with a deadline: a blocked conversation fails instead of hanging)
std::vector<uint8_t> read_n(int fd, size_t n, int timeout_ms = 10000) {
    std::vector<uint8_t> v(n);
    size_t off = 0;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (off < n) {
        pollfd p{fd, POLLIN, 0};
        int left = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                        deadline - std::chrono::steady_clock::now())
                                        .count());
        if (left <= 0 || poll(&p, 1, left) <= 0) break;
        ssize_t r = recv(fd, v.data() + off, n - off, MSG_DONTWAIT);
        if (r == 0) break;  // FIN
        if (r < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            break;  // RST and friends
        }
        off += static_cast<size_t>(r);
    }
    v.resize(off);
    return v;
}

int sh(const std::string& cmd) {
    int rc = system(cmd.c_str());
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

int tcp_state(int fd) {
    struct tcp_info ti {};
    socklen_t l = sizeof(ti);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &l) < 0) return -1;
    return ti.tcpi_state;
}

int outq(int fd) {
    int v = -1;
    ioctl(fd, SIOCOUTQ, &v);
    return v;
}
int inq(int fd) {
    int v = -1;
    ioctl(fd, SIOCINQ, &v);
    return v;
}

struct Pair {
    UniqueFd client, server;  // client = the connection we freeze (the "VM application")
    uint16_t cport = 0, sport = 0;
};

// A connected pair over loopback of `family`. Big receive buffers so that queues can hold MBs.
Pair make_pair(int family, int client_rcvbuf = 0) {
    Pair p;
    UniqueFd l(socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    EXPECT_TRUE(l);
    sockaddr_storage ss{};
    socklen_t sl;
    if (family == AF_INET) {
        auto* s = reinterpret_cast<sockaddr_in*>(&ss);
        s->sin_family = AF_INET;
        s->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sl = sizeof(*s);
    } else {
        auto* s = reinterpret_cast<sockaddr_in6*>(&ss);
        s->sin6_family = AF_INET6;
        s->sin6_addr = in6addr_loopback;
        sl = sizeof(*s);
    }
    EXPECT_EQ(bind(l.get(), reinterpret_cast<sockaddr*>(&ss), sl), 0) << strerror(errno);
    EXPECT_EQ(listen(l.get(), 4), 0);
    socklen_t gl = sizeof(ss);
    getsockname(l.get(), reinterpret_cast<sockaddr*>(&ss), &gl);
    p.client.reset(socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (client_rcvbuf) {
        EXPECT_EQ(setsockopt(p.client.get(), SOL_SOCKET, SO_RCVBUFFORCE, &client_rcvbuf,
                             sizeof(client_rcvbuf)), 0);
    }
    EXPECT_EQ(connect(p.client.get(), reinterpret_cast<sockaddr*>(&ss), gl), 0) << strerror(errno);
    p.server.reset(accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC));
    EXPECT_TRUE(p.server);
    sockaddr_storage cs{};
    socklen_t cl = sizeof(cs);
    getsockname(p.client.get(), reinterpret_cast<sockaddr*>(&cs), &cl);
    p.sport = ntohs(family == AF_INET ? reinterpret_cast<sockaddr_in*>(&ss)->sin_port
                                      : reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
    p.cport = ntohs(family == AF_INET ? reinterpret_cast<sockaddr_in*>(&cs)->sin_port
                                      : reinterpret_cast<sockaddr_in6*>(&cs)->sin6_port);
    return p;
}

// nft in our private namespace: drop what the client sends to the server (the server never
// sees it, so it stays unacknowledged in the client's send queue).
void block_client_to_server(uint16_t sport, uint16_t cport) {
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "nft add table inet vpt_test && nft 'add chain inet vpt_test out { type filter hook "
             "output priority 0; }' && nft add rule inet vpt_test out tcp sport %u tcp dport %u drop",
             cport, sport);
    ASSERT_EQ(sh(cmd), 0);
}
void unblock() { sh("nft delete table inet vpt_test 2>/dev/null"); }

class Repair : public ::testing::TestWithParam<int> {
protected:
    void TearDown() override { unblock(); }
};

// The full same-namespace hand-over: both queues non-empty, then freeze, drop the connection
// silently, restore into a fresh socket, put it on the application's descriptor number and go on.
void handover_roundtrip(int family, bool disconnect_instead_of_close, size_t unread, size_t unacked) {
    Pair p = make_pair(family, unread > (64u << 10) ? static_cast<int>(2 * unread) : 0);
    const int app = p.client.get();

    // a little conversation first
    auto a = pattern(1000, 1), b = pattern(3000, 2);
    write_all(app, a);
    ASSERT_EQ(read_n(p.server.get(), a.size()), a);
    write_all(p.server.get(), b);
    ASSERT_EQ(read_n(app, b.size()), b);

    // unread bytes in the app's receive queue
    auto pending_in = pattern(unread, 3);
    write_all(p.server.get(), pending_in);
    for (int i = 0; i < 200 && inq(app) < static_cast<int>(unread); ++i) usleep(5000);
    ASSERT_EQ(inq(app), static_cast<int>(unread));

    // unacknowledged bytes in the app's send queue
    auto pending_out = pattern(unacked, 4);
    if (unacked) {
        if (unacked > (64u << 10)) {
            int sb = static_cast<int>(4 * unacked);
            ASSERT_EQ(setsockopt(app, SOL_SOCKET, SO_SNDBUFFORCE, &sb, sizeof(sb)), 0);
        }
        block_client_to_server(p.sport, p.cport);
        write_all(app, pending_out);
        for (int i = 0; i < 100 && outq(app) < static_cast<int>(unacked); ++i) usleep(5000);
        ASSERT_EQ(outq(app), static_cast<int>(unacked));
    }

    vpipe_tcp_state st{};
    std::vector<uint8_t> sndq, rcvq;
    ASSERT_EQ(tcp::freeze(app, &st, &sndq, &rcvq), 0);
    EXPECT_EQ(st.family, family == AF_INET ? VPIPE_AF_INET : VPIPE_AF_INET6);
    EXPECT_EQ(ntohs(st.local_port), p.cport);
    EXPECT_EQ(ntohs(st.remote_port), p.sport);
    EXPECT_EQ(st.sndq_len, unacked);
    EXPECT_EQ(st.rcvq_len, unread);
    EXPECT_EQ(sndq, pending_out);
    EXPECT_EQ(rcvq, pending_in);
    EXPECT_EQ(st.carry_offset, 0u);
    EXPECT_TRUE(st.options & VPIPE_TCPOPT_SACK);
    EXPECT_TRUE(st.options & VPIPE_TCPOPT_TIMESTAMP);
    EXPECT_TRUE(st.options & VPIPE_TCPOPT_WSCALE);
    EXPECT_GT(st.mss, 500u);
    EXPECT_GE(st.max_window, st.snd_wnd);

    // the application's descriptor: either closed (number freed) or kept as an unconnected socket
    int app_num = app;
    int fl = fcntl(app, F_GETFD);
    if (disconnect_instead_of_close) {
        ASSERT_EQ(tcp::disconnect_silently(app), 0);
    } else {
        ASSERT_EQ(tcp::close_silently(p.client.release()), 0);
    }

    UniqueFd fresh;
    tcp::RestoreOptions ro;
    EXPECT_LE(st.sndq_unsent, st.sndq_len);
    ASSERT_EQ(tcp::restore(st, sndq, rcvq, ro, &fresh), 0);
    // the part never transmitted is the caller's to queue (the flow stays blocked here, so it
    // sits in the send queue like the rest)
    ASSERT_EQ(tcp::send_unsent(fresh.get(), std::span<const uint8_t>(sndq).last(st.sndq_unsent)), 0);

    // the restored connection reads back as the same connection
    {
        vpipe_tcp_state st2{};
        std::vector<uint8_t> s2, r2;
        ASSERT_EQ(tcp::freeze(fresh.get(), &st2, &s2, &r2), 0);
        EXPECT_EQ(st2.snd_seq, st.snd_seq);
        EXPECT_EQ(st2.rcv_seq, st.rcv_seq);
        EXPECT_EQ(st2.options, st.options);
        EXPECT_EQ(st2.snd_wscale, st.snd_wscale);
        EXPECT_EQ(st2.rcv_wscale, st.rcv_wscale);
        EXPECT_EQ(st2.mss, st.mss);
        // leaving repair sent a window probe; the peer's answer may have refreshed snd_wl1
        // (up to rcv_nxt), and our probe advertised a window (rcv_wup up to rcv_nxt)
        EXPECT_LE(st2.snd_wl1 - st.snd_wl1, st.rcv_seq - st.snd_wl1);
        EXPECT_LE(st2.rcv_wup - st.rcv_wup, st.rcv_seq - st.rcv_wup);
        EXPECT_EQ(st2.max_window, st.max_window);
        EXPECT_EQ(memcmp(st2.local_addr, st.local_addr, 16), 0);
        EXPECT_EQ(s2, sndq);
        EXPECT_EQ(r2, rcvq);
        // the kernel clock moved on a bit
        EXPECT_LT(st2.timestamp - st.timestamp, 10000u);
        ASSERT_EQ(tcp::unfreeze(fresh.get()), 0);
    }

    if (disconnect_instead_of_close) {
        ASSERT_EQ(tcp::copy_socket_options(app_num, fresh.get()), 0);
    }
    ASSERT_EQ(tcp::replace_fd(app_num, fresh.get()), 0);
    fresh.reset();
    p.client.release();
    p.client.reset(app_num);
    EXPECT_EQ(fcntl(app_num, F_GETFD) & FD_CLOEXEC, fl & FD_CLOEXEC);
    EXPECT_EQ(tcp_state(app_num), 1 /* ESTABLISHED */);

    if (unacked) unblock();
    // unread bytes are still there, then the conversation goes on in both directions
    EXPECT_EQ(read_n(app_num, unread), pending_in);
    // the unacked bytes reach the server (retransmitted by the restored socket)
    EXPECT_EQ(read_n(p.server.get(), unacked), pending_out);
    auto c = pattern(200000, 5), d = pattern(300000, 6);
    std::thread w([&] { write_all(app_num, c); });
    EXPECT_EQ(read_n(p.server.get(), c.size()), c);
    w.join();
    std::thread w2([&] { write_all(p.server.get(), d); });
    EXPECT_EQ(read_n(app_num, d.size()), d);
    w2.join();

    // the server never saw FIN or RST
    EXPECT_EQ(tcp_state(p.server.get()), 1);
    int err = 0;
    socklen_t el = sizeof(err);
    getsockopt(p.server.get(), SOL_SOCKET, SO_ERROR, &err, &el);
    EXPECT_EQ(err, 0);
    char x;
    EXPECT_EQ(recv(p.server.get(), &x, 1, MSG_DONTWAIT), -1);
    EXPECT_EQ(errno, EAGAIN);

    // orderly end
    shutdown(app_num, SHUT_WR);
    EXPECT_EQ(recv(p.server.get(), &x, 1, 0), 0);
}

TEST_P(Repair, HandoverCloseSilently) { handover_roundtrip(GetParam(), false, 5000, 0); }
TEST_P(Repair, HandoverDisconnectKeepsNumber) { handover_roundtrip(GetParam(), true, 7777, 0); }
TEST_P(Repair, HandoverWithUnackedBytes) { handover_roundtrip(GetParam(), true, 1234, 20000); }
TEST_P(Repair, HandoverLargeQueues) { handover_roundtrip(GetParam(), true, 3 << 20, 1 << 20); }
TEST_P(Repair, HandoverEmptyQueues) { handover_roundtrip(GetParam(), false, 0, 0); }

// A restored connection whose send queue already holds more than the application's SO_SNDBUF
// (the in-flight part is refilled in repair mode, then copy_socket_options() puts the
// application's smaller limit back) must still take its never-transmitted tail: send_unsent()
// raises the limit from what the queue holds, not from the limit. The in-flight part here is
// the last 4 MiB the peer already has (it acknowledges the retransmission as a duplicate); the
// tail is new and must reach the peer byte-exact.
TEST_P(Repair, UnsentTailFitsOverAFullSendQueue) {
    Pair p = make_pair(GetParam());
    const size_t in_flight = 4u << 20, unsent = 32u << 10;
    auto a = pattern(in_flight, 21), tail = pattern(unsent, 22);
    int big = static_cast<int>(2 * in_flight);
    ASSERT_EQ(setsockopt(p.server.get(), SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof(big)), 0);
    std::thread w([&] { write_all(p.client.get(), a); });
    ASSERT_EQ(read_n(p.server.get(), a.size()), a);
    w.join();
    for (int i = 0; i < 200 && outq(p.client.get()) > 0; ++i) usleep(5000);
    ASSERT_EQ(outq(p.client.get()), 0);

    vpipe_tcp_state st{};
    std::vector<uint8_t> sq, rq;
    ASSERT_EQ(tcp::freeze(p.client.get(), &st, &sq, &rq), 0);
    ASSERT_EQ(st.sndq_len, 0u);
    ASSERT_EQ(tcp::disconnect_silently(p.client.get()), 0);
    // the carried queue: `a` as sent-but-unacknowledged, then `tail` never transmitted
    std::vector<uint8_t> carried(a);
    carried.insert(carried.end(), tail.begin(), tail.end());
    st.snd_seq += static_cast<uint32_t>(unsent);
    st.sndq_len = static_cast<uint32_t>(carried.size());
    st.sndq_unsent = static_cast<uint32_t>(unsent);
    // as in a hand-back, the peer hears nothing until the tail is queued (its ACK would empty
    // the queue at once over loopback)
    block_client_to_server(p.sport, p.cport);
    UniqueFd fresh;
    ASSERT_EQ(tcp::restore(st, carried, {}, tcp::RestoreOptions{}, &fresh), 0);
    // what copy_socket_options() does for an application that set SO_SNDBUF (64 KiB)
    int small = 64 << 10;
    ASSERT_EQ(setsockopt(fresh.get(), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
    ASSERT_EQ(tcp::send_unsent(fresh.get(), std::span<const uint8_t>(carried).last(unsent)), 0);
    EXPECT_EQ(outq(fresh.get()), static_cast<int>(carried.size()));
    unblock();
    EXPECT_EQ(read_n(p.server.get(), tail.size()), tail);
    // the connection goes on
    auto more = pattern(1000, 23);
    write_all(fresh.get(), more);
    EXPECT_EQ(read_n(p.server.get(), more.size()), more);
}

// Abort path: freeze then unfreeze, the connection goes on in place.
TEST_P(Repair, UnfreezeContinuesInPlace) {
    Pair p = make_pair(GetParam());
    vpipe_tcp_state st{};
    std::vector<uint8_t> sq, rq;
    auto a = pattern(4096, 9);
    write_all(p.server.get(), a);
    for (int i = 0; i < 100 && inq(p.client.get()) < 4096; ++i) usleep(2000);
    ASSERT_EQ(tcp::freeze(p.client.get(), &st, &sq, &rq), 0);
    EXPECT_EQ(rq, a);
    ASSERT_EQ(tcp::unfreeze(p.client.get()), 0);
    EXPECT_EQ(read_n(p.client.get(), a.size()), a);
    auto b = pattern(100000, 10);
    std::thread w([&] { write_all(p.client.get(), b); });
    EXPECT_EQ(read_n(p.server.get(), b.size()), b);
    w.join();
}

// What a frozen socket does with segments that still reach it: the reason callers must block
// or steer the flow before freeze(). Documents the kernel's behaviour (see the report).
TEST_P(Repair, FrozenSocketBehaviour) {
    Pair p = make_pair(GetParam());
    vpipe_tcp_state st{};
    std::vector<uint8_t> sq, rq;
    ASSERT_EQ(tcp::freeze(p.client.get(), &st, &sq, &rq), 0);
    auto a = pattern(1000, 11);
    write_all(p.server.get(), a);
    usleep(300000);  // lets the bytes arrive; the checks below hold for however many did
    int in_frozen = inq(p.client.get());
    int server_unacked = outq(p.server.get());
    printf("[ info ] frozen socket: SIOCINQ after peer sent 1000 bytes = %d, peer's unacked = %d\n",
           in_frozen, server_unacked);
    // a freeze taken now sees the moved connection
    vpipe_tcp_state st2{};
    ASSERT_EQ(tcp::freeze(p.client.get(), &st2, &sq, &rq), 0);
    EXPECT_EQ(st2.rcv_seq - st.rcv_seq, static_cast<uint32_t>(in_frozen));
    ASSERT_EQ(tcp::unfreeze(p.client.get()), 0);
    EXPECT_EQ(read_n(p.client.get(), a.size()), a);
}

INSTANTIATE_TEST_SUITE_P(Family, Repair, ::testing::Values(AF_INET, AF_INET6),
                         [](const auto& pi) { return pi.param == AF_INET ? "v4" : "v6"; });

// ---- errors ---------------------------------------------------------------------------------

TEST(RepairErrors, NotASocket) {
    int pfd[2];
    ASSERT_EQ(pipe(pfd), 0);
    vpipe_tcp_state st{};
    std::vector<uint8_t> a, b;
    EXPECT_EQ(tcp::freeze(pfd[0], &st, &a, &b), -ENOTSOCK);
    close(pfd[0]);
    close(pfd[1]);
    EXPECT_EQ(tcp::freeze(12345, &st, &a, &b), -EBADF);
}

TEST(RepairErrors, Udp) {
    UniqueFd u(socket(AF_INET, SOCK_DGRAM, 0));
    vpipe_tcp_state st{};
    std::vector<uint8_t> a, b;
    EXPECT_EQ(tcp::freeze(u.get(), &st, &a, &b), -EPROTONOSUPPORT);
}

TEST(RepairErrors, UnixStream) {
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    UniqueFd x(sv[0]), y(sv[1]);
    vpipe_tcp_state st{};
    std::vector<uint8_t> a, b;
    EXPECT_EQ(tcp::freeze(x.get(), &st, &a, &b), -EPROTONOSUPPORT);
    EXPECT_EQ(write(x.get(), "k", 1), 1);  // still usable
    char c = 0;
    EXPECT_EQ(read(y.get(), &c, 1), 1);
}

TEST(RepairErrors, ListenerStaysUsable) {
    UniqueFd l(socket(AF_INET, SOCK_STREAM, 0));
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(bind(l.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
    ASSERT_EQ(listen(l.get(), 1), 0);
    vpipe_tcp_state st{};
    std::vector<uint8_t> a, b;
    EXPECT_EQ(tcp::freeze(l.get(), &st, &a, &b), -ENOTCONN);
    EXPECT_EQ(tcp::close_silently(l.get()), -EPERM);  // not closed
    socklen_t sl = sizeof(sa);
    getsockname(l.get(), reinterpret_cast<sockaddr*>(&sa), &sl);
    UniqueFd c(socket(AF_INET, SOCK_STREAM, 0));
    ASSERT_EQ(connect(c.get(), reinterpret_cast<sockaddr*>(&sa), sl), 0);
    UniqueFd s(accept(l.get(), nullptr, nullptr));
    EXPECT_TRUE(s);
}

TEST(RepairErrors, UnconnectedStaysUsable) {
    UniqueFd l(socket(AF_INET6, SOCK_STREAM, 0));
    sockaddr_in6 sa{};
    sa.sin6_family = AF_INET6;
    sa.sin6_addr = in6addr_loopback;
    ASSERT_EQ(bind(l.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
    ASSERT_EQ(listen(l.get(), 1), 0);
    socklen_t sl = sizeof(sa);
    getsockname(l.get(), reinterpret_cast<sockaddr*>(&sa), &sl);
    UniqueFd c(socket(AF_INET6, SOCK_STREAM, 0));
    vpipe_tcp_state st{};
    std::vector<uint8_t> a, b;
    EXPECT_EQ(tcp::freeze(c.get(), &st, &a, &b), -ENOTCONN);
    ASSERT_EQ(connect(c.get(), reinterpret_cast<sockaddr*>(&sa), sl), 0) << strerror(errno);
    UniqueFd s(accept(l.get(), nullptr, nullptr));
    ASSERT_TRUE(s);
    EXPECT_EQ(write(c.get(), "abc", 3), 3);
    char buf[3];
    EXPECT_EQ(read(s.get(), buf, 3), 3);
}

TEST(RepairErrors, FailedRestoreLeavesNothing) {
    vpipe_tcp_state st{};
    UniqueFd out;
    std::vector<uint8_t> none;
    EXPECT_EQ(tcp::restore(st, none, none, {}, &out), -EINVAL);  // family 0
    st.family = VPIPE_AF_INET;
    st.local_port = htons(1);
    st.remote_port = htons(2);
    st.mss = 1460;
    st.sndq_len = 3;
    EXPECT_EQ(tcp::restore(st, none, none, {}, &out), -EINVAL);  // queue length mismatch
    st.sndq_len = 0;
    // 10.198.0.77 is no local address here and the socket is not transparent
    uint8_t a[4] = {10, 198, 0, 77}, b[4] = {10, 198, 0, 78};
    memcpy(st.local_addr, a, 4);
    memcpy(st.remote_addr, b, 4);
    EXPECT_EQ(tcp::restore(st, none, none, {}, &out), -EADDRNOTAVAIL);
    EXPECT_FALSE(out);
}

TEST(RepairErrors, RestoreOntoLiveTupleFails) {
    Pair p = make_pair(AF_INET);
    vpipe_tcp_state st{};
    std::vector<uint8_t> a, b;
    ASSERT_EQ(tcp::freeze(p.client.get(), &st, &a, &b), 0);
    UniqueFd out;
    // the frozen original still owns the 4-tuple in this namespace
    int r = tcp::restore(st, a, b, {}, &out);
    EXPECT_TRUE(r == -EADDRNOTAVAIL || r == -EADDRINUSE) << r;
    ASSERT_EQ(tcp::unfreeze(p.client.get()), 0);
    EXPECT_EQ(write(p.client.get(), "z", 1), 1);
    char c;
    EXPECT_EQ(read(p.server.get(), &c, 1), 1);
}

// ---- fd helpers ----------------------------------------------------------------------------

TEST(FdHelpers, CopySocketOptions) {
    Pair p = make_pair(AF_INET);
    Pair q = make_pair(AF_INET);
    int from = p.client.get(), to = q.client.get();
    int one = 1, idle = 77, intvl = 9, cnt = 4, prio = 5, tos = 0x28, lowat = 12345;
    unsigned uto = 4321;
    linger lg{1, 3};
    timeval tv{2, 500000};
    setsockopt(from, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    setsockopt(from, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(from, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    setsockopt(from, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
    setsockopt(from, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(from, IPPROTO_TCP, TCP_USER_TIMEOUT, &uto, sizeof(uto));
    setsockopt(from, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof(lowat));
    setsockopt(from, IPPROTO_IP, IP_TOS, &tos, sizeof(tos));  // (older kernels: sets priority)
    setsockopt(from, SOL_SOCKET, SO_PRIORITY, &prio, sizeof(prio));
    setsockopt(from, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    setsockopt(from, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(from, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    int buf = 96 * 1024, mark = 0x42;
    setsockopt(from, SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
    setsockopt(from, SOL_SOCKET, SO_MARK, &mark, sizeof(mark));
    ASSERT_EQ(setsockopt(from, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)), 0);
    const char* cc = "cubic";
    ASSERT_EQ(setsockopt(from, IPPROTO_TCP, TCP_CONGESTION, cc, strlen(cc)), 0);
    fcntl(from, F_SETFL, fcntl(from, F_GETFL) | O_NONBLOCK);

    ASSERT_EQ(tcp::copy_socket_options(from, to), 0);

    auto geti = [&](int level, int name) {
        int v = -1;
        socklen_t l = sizeof(v);
        getsockopt(to, level, name, &v, &l);
        return v;
    };
    EXPECT_EQ(geti(SOL_SOCKET, SO_KEEPALIVE), 1);
    EXPECT_EQ(geti(IPPROTO_TCP, TCP_KEEPIDLE), idle);
    EXPECT_EQ(geti(IPPROTO_TCP, TCP_KEEPINTVL), intvl);
    EXPECT_EQ(geti(IPPROTO_TCP, TCP_KEEPCNT), cnt);
    EXPECT_EQ(geti(IPPROTO_TCP, TCP_NODELAY), 1);
    EXPECT_EQ(geti(IPPROTO_TCP, TCP_USER_TIMEOUT), static_cast<int>(uto));
    EXPECT_EQ(geti(IPPROTO_TCP, TCP_NOTSENT_LOWAT), lowat);
    EXPECT_EQ(geti(SOL_SOCKET, SO_PRIORITY), prio);
    EXPECT_EQ(geti(IPPROTO_IP, IP_TOS), tos);
    EXPECT_EQ(geti(SOL_SOCKET, SO_SNDBUF), 2 * buf);
    EXPECT_EQ(geti(SOL_SOCKET, SO_MARK), mark);
    EXPECT_EQ(geti(SOL_SOCKET, SO_REUSEPORT), 1);
    linger lg2{};
    socklen_t ll = sizeof(lg2);
    getsockopt(to, SOL_SOCKET, SO_LINGER, &lg2, &ll);
    EXPECT_EQ(lg2.l_onoff, 1);
    EXPECT_EQ(lg2.l_linger, 3);
    timeval tv2{};
    socklen_t tl = sizeof(tv2);
    getsockopt(to, SOL_SOCKET, SO_SNDTIMEO, &tv2, &tl);
    EXPECT_EQ(tv2.tv_sec, 2);
    EXPECT_EQ(tv2.tv_usec, 500000);
    char name[16] = {};
    socklen_t nl = sizeof(name);
    getsockopt(to, IPPROTO_TCP, TCP_CONGESTION, name, &nl);
    EXPECT_STREQ(name, "cubic");
    EXPECT_TRUE(fcntl(to, F_GETFL) & O_NONBLOCK);
    // without kCopyBuffers the receive buffer stays as it was
    int rb = 0;
    socklen_t rl = sizeof(rb);
    getsockopt(to, SOL_SOCKET, SO_RCVBUF, &rb, &rl);
    int small = 8192;
    setsockopt(from, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    ASSERT_EQ(tcp::copy_socket_options(from, to, 0), 0);
    EXPECT_EQ(geti(SOL_SOCKET, SO_RCVBUF), rb);
}

TEST(FdHelpers, ReplaceFdKeepsCloexec) {
    int pa[2], pb[2];
    ASSERT_EQ(pipe2(pa, 0), 0);
    ASSERT_EQ(pipe2(pb, O_CLOEXEC), 0);
    ASSERT_EQ(tcp::replace_fd(pa[1], pb[1]), 0);  // pa[1] had no CLOEXEC
    EXPECT_EQ(fcntl(pa[1], F_GETFD) & FD_CLOEXEC, 0);
    ASSERT_EQ(write(pa[1], "q", 1), 1);
    char c;
    ASSERT_EQ(read(pb[0], &c, 1), 1);  // pa[1] now writes into pipe b
    EXPECT_EQ(tcp::replace_fd(pa[1], pa[1]), -EINVAL);
    EXPECT_EQ(tcp::replace_fd(pa[1], 4000), -EBADF);
    EXPECT_EQ(tcp::replace_fd(-1, pa[0]), -EINVAL);
    for (int f : {pa[0], pa[1], pb[0], pb[1]}) close(f);
}

}  // namespace

int main(int argc, char** argv) {
    ::testing::InitGoogleTest(&argc, argv);
    // a private network namespace for this process (single-threaded here): loopback only
    if (unshare(CLONE_NEWNET) != 0) {
        fprintf(stderr, "unshare(CLONE_NEWNET): %s (needs root)\n", strerror(errno));
        return 1;
    }
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    ifreq ifr{};
    strcpy(ifr.ifr_name, "lo");
    ioctl(s, SIOCGIFFLAGS, &ifr);
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0) {
        perror("lo up");
        return 1;
    }
    close(s);
    return RUN_ALL_TESTS();
}
