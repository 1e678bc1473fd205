// tcp_repair: see tcp_repair.h.
//
// Kernel behaviour this code relies on (Linux 6.x, verified by tests/unit/tcp):
//  - TCP_REPAIR=1 is accepted only in ESTABLISHED or CLOSE and with CAP_NET_ADMIN
//    (tcp_can_repair_sock); a listener gives EPERM, so freeze() checks the state first to
//    report ENOTCONN.
//  - In repair mode getsockopt(TCP_MAXSEG) returns mss_clamp, the value TCPOPT_MAXSEG restores.
//  - TCP_QUEUE_SEQ reads write_seq (send queue selected) / rcv_nxt (receive queue selected); it
//    can be SET only while the socket is CLOSE, i.e. before connect().
//  - recv(MSG_PEEK) with the send queue selected copies the whole send queue (retransmit queue
//    + write queue: sent-unacked and unsent bytes); SIOCOUTQ is its length.
//  - connect() in repair mode sends no SYN and goes straight to ESTABLISHED.
//  - TCP_REPAIR_OPTIONS only while ESTABLISHED and before anything was queued.
//  - send() with the receive queue selected appends one skb per call (at most MAX_SKB_FRAGS
//    pages plus a linear part; it returns a short count) and fails with ENOMEM when the receive
//    buffer can't take it; send() with the send queue selected marks the bytes as already sent
//    (retransmit queue), bounded by SO_SNDBUF (EAGAIN with MSG_DONTWAIT when full).
//  - TCP_REPAIR_WINDOW is validated against rcv_nxt (snd_wl1 <= rcv_nxt + rcv_wnd,
//    rcv_wup <= rcv_nxt), so it goes after the receive queue has been refilled.
//  - close() and connect(AF_UNSPEC) in repair mode disconnect without FIN or RST.
//  - repair mode does not stop input: a frozen socket queues AND ACKs incoming data.
#include "tcp/tcp_repair.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/sock_diag.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace vpipe::tcp {
namespace {

// linux/tcp.h provides these, but be explicit about the values this code depends on.
static_assert(TCP_REPAIR == 19 && TCP_REPAIR_QUEUE == 20 && TCP_QUEUE_SEQ == 21 &&
              TCP_REPAIR_OPTIONS == 22 && TCP_REPAIR_WINDOW == 29);
#ifndef TCP_REPAIR_ON
constexpr int TCP_REPAIR_ON = 1;
constexpr int TCP_REPAIR_OFF = 0;
constexpr int TCP_REPAIR_OFF_NO_WP = -1;
#endif
// TCP option kinds (RFC 793 / 7323 / 2018) accepted by TCP_REPAIR_OPTIONS
constexpr uint32_t kOptMaxseg = 2;
constexpr uint32_t kOptWindow = 3;
constexpr uint32_t kOptSackPerm = 4;
constexpr uint32_t kOptTimestamp = 8;

int neg_errno() { return errno ? -errno : -EIO; }

int set_int(int fd, int level, int name, int val) {
    if (setsockopt(fd, level, name, &val, sizeof(val)) < 0) return neg_errno();
    return 0;
}

int get_int(int fd, int level, int name, int* val) {
    socklen_t len = sizeof(*val);
    if (getsockopt(fd, level, name, val, &len) < 0) return neg_errno();
    return 0;
}

int select_queue(int fd, int q) { return set_int(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, q); }

// Reads exactly `len` bytes of the selected queue with MSG_PEEK. Asks for one byte more to
// notice a queue that grew since its length was read.
int peek_queue(int fd, uint32_t len, std::vector<uint8_t>* out) {
    out->resize(static_cast<size_t>(len) + 1);
    ssize_t n = recv(fd, out->data(), out->size(), MSG_PEEK | MSG_DONTWAIT);
    if (n < 0) {
        int e = errno;
        out->clear();
        if (len == 0 && (e == EAGAIN || e == EWOULDBLOCK)) return 0;
        return -e;
    }
    if (static_cast<uint64_t>(n) != len) {
        out->clear();
        return -EAGAIN;
    }
    out->resize(len);
    return 0;
}

int check_tcp_socket(int fd, int* family) {
    int type = 0;
    if (get_int(fd, SOL_SOCKET, SO_TYPE, &type) < 0) return errno == ENOTSOCK ? -ENOTSOCK : neg_errno();
    int domain = 0, proto = 0;
    if (get_int(fd, SOL_SOCKET, SO_DOMAIN, &domain) < 0) return neg_errno();
    if (get_int(fd, SOL_SOCKET, SO_PROTOCOL, &proto) < 0) return neg_errno();
    if (type != SOCK_STREAM || (domain != AF_INET && domain != AF_INET6) || proto != IPPROTO_TCP)
        return -EPROTONOSUPPORT;
    *family = domain;
    return 0;
}

int tcp_info_of(int fd, struct tcp_info* ti) {
    memset(ti, 0, sizeof(*ti));
    socklen_t len = sizeof(*ti);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, ti, &len) < 0) return neg_errno();
    if (len < offsetof(struct tcp_info, tcpi_rto)) return -EPROTO;
    return 0;
}

// TCP_ESTABLISHED from include/net/tcp_states.h
constexpr uint8_t kStateEstablished = 1;

int addr_to_state(const sockaddr_storage& ss, uint8_t* addr, uint16_t* port) {
    memset(addr, 0, 16);
    if (ss.ss_family == AF_INET) {
        const auto* sin = reinterpret_cast<const sockaddr_in*>(&ss);
        memcpy(addr, &sin->sin_addr, 4);
        *port = sin->sin_port;
        return 0;
    }
    if (ss.ss_family == AF_INET6) {
        const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&ss);
        memcpy(addr, &sin6->sin6_addr, 16);
        *port = sin6->sin6_port;
        return 0;
    }
    return -EPROTONOSUPPORT;
}

socklen_t state_to_addr(uint8_t family, const uint8_t* addr, uint16_t port, sockaddr_storage* ss) {
    memset(ss, 0, sizeof(*ss));
    if (family == VPIPE_AF_INET) {
        auto* sin = reinterpret_cast<sockaddr_in*>(ss);
        sin->sin_family = AF_INET;
        sin->sin_port = port;
        memcpy(&sin->sin_addr, addr, 4);
        return sizeof(*sin);
    }
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(ss);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = port;
    memcpy(&sin6->sin6_addr, addr, 16);
    return sizeof(*sin6);
}

// Everything freeze() reads once the socket is in repair mode.
int read_frozen(int fd, int family, vpipe_tcp_state* st, std::vector<uint8_t>* sndq,
                std::vector<uint8_t>* rcvq) {
    struct tcp_info ti;
    int r = tcp_info_of(fd, &ti);
    if (r < 0) return r;
    if (ti.tcpi_state != kStateEstablished) return -ENOTCONN;

    sockaddr_storage local{}, remote{};
    socklen_t ll = sizeof(local), rl = sizeof(remote);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &ll) < 0) return neg_errno();
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&remote), &rl) < 0) return neg_errno();
    st->family = family == AF_INET ? VPIPE_AF_INET : VPIPE_AF_INET6;
    if ((r = addr_to_state(local, st->local_addr, &st->local_port)) < 0) return r;
    if ((r = addr_to_state(remote, st->remote_addr, &st->remote_port)) < 0) return r;

    st->options = 0;
    st->snd_wscale = st->rcv_wscale = 0;
    if (ti.tcpi_options & TCPI_OPT_SACK) st->options |= VPIPE_TCPOPT_SACK;
    if (ti.tcpi_options & TCPI_OPT_TIMESTAMPS) st->options |= VPIPE_TCPOPT_TIMESTAMP;
    if (ti.tcpi_options & TCPI_OPT_WSCALE) {
        st->options |= VPIPE_TCPOPT_WSCALE;
        st->snd_wscale = ti.tcpi_snd_wscale;
        st->rcv_wscale = ti.tcpi_rcv_wscale;
    }

    int v = 0;
    if ((r = get_int(fd, IPPROTO_TCP, TCP_MAXSEG, &v)) < 0) return r;
    st->mss = static_cast<uint32_t>(v);
    if ((r = get_int(fd, IPPROTO_TCP, TCP_TIMESTAMP, &v)) < 0) return r;
    st->timestamp = static_cast<uint32_t>(v);

    struct tcp_repair_window w {};
    socklen_t wl = sizeof(w);
    if (getsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &w, &wl) < 0) return neg_errno();
    st->snd_wl1 = w.snd_wl1;
    st->snd_wnd = w.snd_wnd;
    st->max_window = w.max_window;
    st->rcv_wnd = w.rcv_wnd;
    st->rcv_wup = w.rcv_wup;

    int outq = 0, inq = 0, unsent = 0;
    if (ioctl(fd, SIOCOUTQ, &outq) < 0) return neg_errno();
    if (ioctl(fd, SIOCOUTQNSD, &unsent) < 0) return neg_errno();
    if (ioctl(fd, SIOCINQ, &inq) < 0) return neg_errno();
    if (outq < 0 || inq < 0 || unsent < 0 || unsent > outq) return -EPROTO;

    if ((r = select_queue(fd, TCP_SEND_QUEUE)) < 0) return r;
    if ((r = get_int(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, &v)) < 0) return r;
    st->snd_seq = static_cast<uint32_t>(v);
    if ((r = peek_queue(fd, static_cast<uint32_t>(outq), sndq)) < 0) return r;

    if ((r = select_queue(fd, TCP_RECV_QUEUE)) < 0) return r;
    if ((r = get_int(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, &v)) < 0) return r;
    st->rcv_seq = static_cast<uint32_t>(v);
    if ((r = peek_queue(fd, static_cast<uint32_t>(inq), rcvq)) < 0) return r;

    if ((r = select_queue(fd, TCP_NO_QUEUE)) < 0) return r;

    // the connection must not have moved while we looked at it (segments still arrive in
    // repair mode if the caller did not block the flow; a retransmission timer may still send)
    int inq2 = 0, seq2 = 0, outq2 = 0, unsent2 = 0;
    if (ioctl(fd, SIOCINQ, &inq2) < 0 || ioctl(fd, SIOCOUTQ, &outq2) < 0 ||
        ioctl(fd, SIOCOUTQNSD, &unsent2) < 0)
        return neg_errno();
    if ((r = select_queue(fd, TCP_RECV_QUEUE)) < 0) return r;
    r = get_int(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, &seq2);
    select_queue(fd, TCP_NO_QUEUE);
    if (r < 0) return r;
    if (inq2 != inq || outq2 != outq || unsent2 != unsent || static_cast<uint32_t>(seq2) != st->rcv_seq)
        return -EAGAIN;

    st->sndq_len = static_cast<uint32_t>(sndq->size());
    st->rcvq_len = static_cast<uint32_t>(rcvq->size());
    st->sndq_unsent = static_cast<uint32_t>(unsent);
    st->carry_offset = 0;
    st->reserved0 = 0;
    return 0;
}

// Enters repair mode if the socket is not in it yet. Returns the -errno if impossible.
int ensure_repair(int fd) { return set_int(fd, IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON); }

// Raises SO_SNDBUF / SO_RCVBUF so that `more` further bytes fit. Returns -ENOBUFS when it
// can't grow.
//
// The new limit counts from what the queue already holds (its truesize, SO_MEMINFO), not from
// the current limit: the limit may be far below it. A restored connection's send queue holds the
// in-flight part refilled in repair mode (skbs with more overhead than the frozen socket's), and
// copy_socket_options() then put the application's SO_SNDBUF back; a raise counted from that
// limit could leave it under the queue, so the unsent tail still met EAGAIN and the agent reset
// a healthy connection (seen in Sockets.EngineStoppedMidSocketToSocket with a paused far end).
int grow_buffer(int fd, bool send_queue, size_t more) {
    const int name = send_queue ? SO_SNDBUF : SO_RCVBUF;
    const int force = send_queue ? SO_SNDBUFFORCE : SO_RCVBUFFORCE;
    int cur = 0;
    int r = get_int(fd, SOL_SOCKET, name, &cur);
    if (r < 0) return r;
    size_t held = 0;
    uint32_t mem[SK_MEMINFO_VARS] = {};
    socklen_t ml = sizeof(mem);
    if (getsockopt(fd, SOL_SOCKET, SO_MEMINFO, mem, &ml) == 0 && ml >= sizeof(uint32_t) * (SK_MEMINFO_WMEM_QUEUED + 1))
        held = send_queue ? mem[SK_MEMINFO_WMEM_QUEUED] : mem[SK_MEMINFO_RMEM_ALLOC];
    size_t want = std::max(static_cast<size_t>(cur), held) + 2 * more + (256u << 10);
    if (want > (1u << 30)) return -ENOBUFS;
    int half = static_cast<int>(want / 2);  // the kernel doubles the value
    if (set_int(fd, SOL_SOCKET, force, half) < 0 && set_int(fd, SOL_SOCKET, name, half) < 0)
        return neg_errno();
    int now = 0;
    if ((r = get_int(fd, SOL_SOCKET, name, &now)) < 0) return r;
    return now > cur ? 0 : -ENOBUFS;
}

// Refills the selected queue with `data`. Each send() is bounded by the kernel: the receive
// queue takes one skb per call (short counts), fails with ENOMEM for a linear part too large
// for the allocator, and when the receive buffer is full; the send queue is bounded by
// SO_SNDBUF (EAGAIN). A full buffer is raised (which pins its size: no autotuning).
int refill(int fd, std::span<const uint8_t> data, bool send_queue) {
    size_t off = 0;
    size_t chunk = data.size();
    bool grown = false;
    while (off < data.size()) {
        size_t n = std::min(chunk, data.size() - off);
        ssize_t w = send(fd, data.data() + off, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w > 0) {
            off += static_cast<size_t>(w);
            grown = false;
            continue;
        }
        int e = w == 0 ? EIO : errno;
        if (e == EINTR) continue;
        if (!send_queue && (e == ENOMEM || e == ENOBUFS) && chunk > (64u << 10)) {
            chunk /= 2;
            continue;
        }
        if (!grown && (e == EAGAIN || e == EWOULDBLOCK || e == ENOMEM || e == ENOBUFS)) {
            int r = grow_buffer(fd, send_queue, data.size() - off);
            if (r < 0) return r;
            grown = true;  // one raise per stall; a second stall in a row is an error
            continue;
        }
        return -e;
    }
    return 0;
}

}  // namespace

int freeze(int fd, vpipe_tcp_state* st, std::vector<uint8_t>* sndq, std::vector<uint8_t>* rcvq) {
    if (!st || !sndq || !rcvq) return -EINVAL;
    int family = 0;
    int r = check_tcp_socket(fd, &family);
    if (r < 0) return r;
    struct tcp_info ti;
    if ((r = tcp_info_of(fd, &ti)) < 0) return r;
    if (ti.tcpi_state != kStateEstablished) return -ENOTCONN;

    if ((r = ensure_repair(fd)) < 0) return r;
    vpipe_tcp_state tmp{};
    // A segment that was in flight when the caller blocked the flow (or an ACK the stack still
    // processes in repair mode) can move the queues while they are read: read_frozen answers
    // EAGAIN. Read them again once it settled, a few times, before giving up.
    for (int attempt = 0;; ++attempt) {
        r = read_frozen(fd, family, &tmp, sndq, rcvq);
        if (r != -EAGAIN || attempt == 4) break;
        select_queue(fd, TCP_NO_QUEUE);
        usleep(1000);
    }
    if (r < 0) {
        int saved = errno;
        select_queue(fd, TCP_NO_QUEUE);
        // nothing was changed: leave quietly, no window probe
        set_int(fd, IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP);
        sndq->clear();
        rcvq->clear();
        errno = saved;
        return r;
    }
    *st = tmp;
    return 0;
}

int unfreeze(int fd) {
    select_queue(fd, TCP_NO_QUEUE);
    return set_int(fd, IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF);
}

int close_silently(int fd) {
    int r = ensure_repair(fd);
    if (r < 0) return r;
    if (::close(fd) < 0 && errno != EINTR) return neg_errno();
    return 0;
}

int disconnect_silently(int fd) {
    int r = ensure_repair(fd);
    if (r < 0) return r;
    sockaddr sa{};
    sa.sa_family = AF_UNSPEC;
    if (connect(fd, &sa, sizeof(sa)) < 0) return neg_errno();
    // the socket is CLOSE now; leave repair mode so that it behaves like any unconnected socket
    return set_int(fd, IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP);
}

int restore(const vpipe_tcp_state& st, std::span<const uint8_t> sndq, std::span<const uint8_t> rcvq,
            const RestoreOptions& opt, UniqueFd* out) {
    if (!out) return -EINVAL;
    if (st.family != VPIPE_AF_INET && st.family != VPIPE_AF_INET6) return -EINVAL;
    if (st.local_port == 0 || st.remote_port == 0) return -EINVAL;
    if (sndq.size() != st.sndq_len || rcvq.size() != st.rcvq_len || st.sndq_unsent > st.sndq_len)
        return -EINVAL;
    if (st.options & ~(VPIPE_TCPOPT_SACK | VPIPE_TCPOPT_TIMESTAMP | VPIPE_TCPOPT_WSCALE)) return -EINVAL;
    if ((st.options & VPIPE_TCPOPT_WSCALE) && (st.snd_wscale > 14 || st.rcv_wscale > 14)) return -EINVAL;
    if (st.mss == 0 || st.mss > 65535) return -EINVAL;

    const int af = st.family == VPIPE_AF_INET ? AF_INET : AF_INET6;
    UniqueFd s(socket(af, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP));
    if (!s) return neg_errno();
    const int fd = s.get();
    int r;
    if ((r = ensure_repair(fd)) < 0) return r;
    if (opt.transparent) {
        r = af == AF_INET ? set_int(fd, SOL_IP, IP_TRANSPARENT, 1)
                          : set_int(fd, SOL_IPV6, IPV6_TRANSPARENT, 1);
        if (r < 0) return r;
    }
    if (opt.mark && (r = set_int(fd, SOL_SOCKET, SO_MARK, static_cast<int>(opt.mark))) < 0) return r;

    sockaddr_storage local, remote;
    socklen_t ll = state_to_addr(st.family, st.local_addr, st.local_port, &local);
    socklen_t rl = state_to_addr(st.family, st.remote_addr, st.remote_port, &remote);
    if (bind(fd, reinterpret_cast<sockaddr*>(&local), ll) < 0) return neg_errno();

    // queue sequence numbers: only while CLOSE. They name the first byte of each queue; the
    // refill below advances them to st.rcv_seq / st.snd_seq.
    if ((r = select_queue(fd, TCP_RECV_QUEUE)) < 0) return r;
    if ((r = set_int(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, static_cast<int>(st.rcv_seq - st.rcvq_len))) < 0)
        return r;
    if ((r = select_queue(fd, TCP_SEND_QUEUE)) < 0) return r;
    if ((r = set_int(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, static_cast<int>(st.snd_seq - st.sndq_len))) < 0)
        return r;
    if ((r = select_queue(fd, TCP_NO_QUEUE)) < 0) return r;

    if (connect(fd, reinterpret_cast<sockaddr*>(&remote), rl) < 0) return neg_errno();

    struct tcp_repair_opt opts[4];
    unsigned n = 0;
    opts[n++] = {kOptMaxseg, st.mss};
    if (st.options & VPIPE_TCPOPT_SACK) opts[n++] = {kOptSackPerm, 0};
    if (st.options & VPIPE_TCPOPT_WSCALE)
        opts[n++] = {kOptWindow, static_cast<uint32_t>(st.snd_wscale) | (static_cast<uint32_t>(st.rcv_wscale) << 16)};
    if (st.options & VPIPE_TCPOPT_TIMESTAMP) opts[n++] = {kOptTimestamp, 0};
    if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_OPTIONS, opts, n * sizeof(opts[0])) < 0) return neg_errno();
    if (st.options & VPIPE_TCPOPT_TIMESTAMP) {
        if ((r = set_int(fd, IPPROTO_TCP, TCP_TIMESTAMP, static_cast<int>(st.timestamp))) < 0) return r;
    }

    if (!rcvq.empty()) {
        if ((r = select_queue(fd, TCP_RECV_QUEUE)) < 0) return r;
        if ((r = refill(fd, rcvq, false)) < 0) return r;
    }
    // Only the transmitted part goes into the send queue in repair mode (it counts as in
    // flight); the unsent rest is the caller's to send once the flow reaches the socket.
    if (const auto sent = sndq.first(sndq.size() - st.sndq_unsent); !sent.empty()) {
        if ((r = select_queue(fd, TCP_SEND_QUEUE)) < 0) return r;
        if ((r = refill(fd, sent, true)) < 0) return r;
    }
    if ((r = select_queue(fd, TCP_NO_QUEUE)) < 0) return r;

    struct tcp_repair_window w {};
    w.snd_wl1 = st.snd_wl1;
    w.snd_wnd = st.snd_wnd;
    w.max_window = st.max_window;
    w.rcv_wnd = st.rcv_wnd;
    w.rcv_wup = st.rcv_wup;
    if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &w, sizeof(w)) < 0) return neg_errno();

    if ((r = set_int(fd, IPPROTO_TCP, TCP_REPAIR, opt.no_window_probe ? TCP_REPAIR_OFF_NO_WP : TCP_REPAIR_OFF)) < 0)
        return r;
    *out = std::move(s);
    return 0;
}

int send_unsent(int fd, std::span<const uint8_t> bytes) {
    // The bytes fitted the frozen socket, but the application's SO_SNDBUF and TCP_NOTSENT_LOWAT
    // (copied onto the fresh socket) may refuse them here: the new skbs can be laid out
    // differently, and a low mark below the unsent length fails a non-blocking send with EAGAIN.
    // Both limits are lifted while the bytes are queued and put back afterwards.
    int lowat = 0, sndbuf = 0;
    if (get_int(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat) < 0) lowat = -1;
    if (lowat != -1) set_int(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, -1);
    get_int(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf);
    size_t off = 0;
    int grows = 0;  // raises since the last progress: a raise that does not help is retried twice
    bool ever_grown = false;
    int r = 0;
    while (off < bytes.size()) {
        ssize_t w = send(fd, bytes.data() + off, bytes.size() - off, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w > 0) {
            off += static_cast<size_t>(w);
            grows = 0;
            continue;
        }
        int e = w == 0 ? EIO : errno;
        if (e == EINTR) continue;
        if ((e == EAGAIN || e == EWOULDBLOCK) && grows < 3) {
            if ((r = grow_buffer(fd, true, (bytes.size() - off) << grows)) < 0) break;
            ++grows;
            ever_grown = true;
            continue;
        }
        r = -e;
        break;
    }
    if (lowat != -1) set_int(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, lowat);
    // the queued bytes stay charged; the limit goes back to the application's (halved: the
    // kernel doubles what it is given). A raised limit stays locked: userspace cannot unlock.
    if (ever_grown && sndbuf > 0 && set_int(fd, SOL_SOCKET, SO_SNDBUFFORCE, sndbuf / 2) < 0)
        set_int(fd, SOL_SOCKET, SO_SNDBUF, sndbuf / 2);
    return r;
}

int replace_fd(int target_fd, int new_fd) {
    if (target_fd < 0 || target_fd == new_fd) return -EINVAL;
    int nfl = fcntl(new_fd, F_GETFD);
    if (nfl < 0) return neg_errno();
    int fl = fcntl(target_fd, F_GETFD);
    if (fl < 0) {
        if (errno != EBADF) return neg_errno();
        fl = nfl;  // the number is free (closed by close_silently): take new_fd's flag
    }
    if (dup3(new_fd, target_fd, (fl & FD_CLOEXEC) ? O_CLOEXEC : 0) < 0) return neg_errno();
    return 0;
}

namespace {

template <typename T>
int copy_opt(int from, int to, int level, int name, bool (*skip)(const T&) = nullptr) {
    T a{}, b{};
    socklen_t la = sizeof(a), lb = sizeof(b);
    if (getsockopt(from, level, name, &a, &la) < 0) return neg_errno();
    if (getsockopt(to, level, name, &b, &lb) == 0 && la == lb && memcmp(&a, &b, la) == 0) return 0;
    if (skip && skip(a)) return 0;
    if (setsockopt(to, level, name, &a, la) < 0) return neg_errno();
    return 0;
}

// SO_SNDBUF/SO_RCVBUF: getsockopt reports twice what setsockopt takes.
int copy_buf(int from, int to, int name, int force_name) {
    int a = 0, b = 0;
    if (get_int(from, SOL_SOCKET, name, &a) < 0) return neg_errno();
    if (get_int(to, SOL_SOCKET, name, &b) == 0 && a == b) return 0;
    if (set_int(to, SOL_SOCKET, force_name, a / 2) == 0) return 0;
    return set_int(to, SOL_SOCKET, name, a / 2);
}

}  // namespace

int copy_socket_options(int from_fd, int to_fd, unsigned flags) {
    int family = 0, r = check_tcp_socket(from_fd, &family);
    if (r < 0) return r;
    int tofam = 0;
    if ((r = check_tcp_socket(to_fd, &tofam)) < 0) return r;

    int first = 0;
    auto note = [&first](int rr) {
        if (rr < 0 && first == 0) first = rr;
    };

    int ff = fcntl(from_fd, F_GETFL), tf = fcntl(to_fd, F_GETFL);
    if (ff < 0 || tf < 0) {
        note(neg_errno());
    } else if ((ff & O_NONBLOCK) != (tf & O_NONBLOCK)) {
        if (fcntl(to_fd, F_SETFL, (tf & ~O_NONBLOCK) | (ff & O_NONBLOCK)) < 0) note(neg_errno());
    }

    note(copy_opt<int>(from_fd, to_fd, SOL_SOCKET, SO_KEEPALIVE));
    note(copy_opt<int>(from_fd, to_fd, IPPROTO_TCP, TCP_KEEPIDLE));
    note(copy_opt<int>(from_fd, to_fd, IPPROTO_TCP, TCP_KEEPINTVL));
    note(copy_opt<int>(from_fd, to_fd, IPPROTO_TCP, TCP_KEEPCNT));
    note(copy_opt<int>(from_fd, to_fd, IPPROTO_TCP, TCP_NODELAY));
    if (flags & kCopyBuffers) {
        note(copy_buf(from_fd, to_fd, SO_SNDBUF, SO_SNDBUFFORCE));
        note(copy_buf(from_fd, to_fd, SO_RCVBUF, SO_RCVBUFFORCE));
    }
    note(copy_opt<struct linger>(from_fd, to_fd, SOL_SOCKET, SO_LINGER));
    note(copy_opt<struct timeval>(from_fd, to_fd, SOL_SOCKET, SO_RCVTIMEO));
    note(copy_opt<struct timeval>(from_fd, to_fd, SOL_SOCKET, SO_SNDTIMEO));
    note(copy_opt<unsigned>(from_fd, to_fd, IPPROTO_TCP, TCP_USER_TIMEOUT));
    note(copy_opt<int>(from_fd, to_fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT));
    note(copy_opt<int>(from_fd, to_fd, SOL_SOCKET, SO_RCVLOWAT));
    if (family == AF_INET && tofam == AF_INET) {
        note(copy_opt<int>(from_fd, to_fd, IPPROTO_IP, IP_TOS));
    } else if (family == AF_INET6 && tofam == AF_INET6) {
        note(copy_opt<int>(from_fd, to_fd, IPPROTO_IPV6, IPV6_TCLASS));
    }
    // after IP_TOS, which also sets sk_priority (rt_tos2priority)
    note(copy_opt<int>(from_fd, to_fd, SOL_SOCKET, SO_PRIORITY));
    {
        constexpr size_t kCaNameMax = 16;  // TCP_CA_NAME_MAX
        char a[kCaNameMax] = {}, b[kCaNameMax] = {};
        socklen_t la = sizeof(a), lb = sizeof(b);
        if (getsockopt(from_fd, IPPROTO_TCP, TCP_CONGESTION, a, &la) < 0) {
            note(neg_errno());
        } else if (getsockopt(to_fd, IPPROTO_TCP, TCP_CONGESTION, b, &lb) < 0 ||
                   strncmp(a, b, sizeof(a)) != 0) {
            if (setsockopt(to_fd, IPPROTO_TCP, TCP_CONGESTION, a, strnlen(a, sizeof(a))) < 0)
                note(neg_errno());
        }
    }
    note(copy_opt<int>(from_fd, to_fd, SOL_SOCKET, SO_MARK));
    // (SO_REUSEADDR is not copied: repair mode overwrites it on `from`; the caller keeps it)
    note(copy_opt<int>(from_fd, to_fd, SOL_SOCKET, SO_REUSEPORT));
    return first;
}

}  // namespace vpipe::tcp
