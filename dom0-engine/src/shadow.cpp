#include "shadow.h"

#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <spdlog/spdlog.h>

#include "tcp/tcp_repair.h"

namespace vpipe::engine {

namespace {

constexpr uint8_t kStateCloseWait = 8;

int tcp_state_of(int fd, struct tcp_info* ti) {
    std::memset(ti, 0, sizeof(*ti));
    socklen_t l = sizeof(*ti);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, ti, &l) < 0) return -errno;
    return ti->tcpi_state;
}

int set_int(int fd, int level, int name, int v) {
    return setsockopt(fd, level, name, &v, sizeof(v)) < 0 ? -errno : 0;
}
int get_int(int fd, int level, int name, int* v) {
    socklen_t l = sizeof(*v);
    return getsockopt(fd, level, name, v, &l) < 0 ? -errno : 0;
}

int peek_queue(int fd, int q, uint32_t len, std::vector<uint8_t>* out) {
    if (int r = set_int(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, q)) return r;
    out->resize(size_t{len});
    if (len == 0) return 0;
    ssize_t n = recv(fd, out->data(), len, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0) return -errno;
    if (static_cast<uint32_t>(n) != len) return -EAGAIN;
    return 0;
}

// The CLOSE_WAIT variant of tcp::freeze (kernel: repair mode is refused only to listeners).
int freeze_close_wait(int fd, vpipe_tcp_state* st, std::vector<uint8_t>* sndq,
                      std::vector<uint8_t>* rcvq) {
    struct tcp_info ti;
    if (tcp_state_of(fd, &ti) != kStateCloseWait) return -ENOTCONN;
    if (int r = set_int(fd, IPPROTO_TCP, TCP_REPAIR, 1)) return r;
    vpipe_tcp_state s{};
    sockaddr_in l{}, p{};
    socklen_t ll = sizeof(l), pl = sizeof(p);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&l), &ll) < 0 || l.sin_family != AF_INET)
        return -EPROTONOSUPPORT;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&p), &pl) < 0) return -errno;
    s.family = VPIPE_AF_INET;
    std::memcpy(s.local_addr, &l.sin_addr, 4);
    std::memcpy(s.remote_addr, &p.sin_addr, 4);
    s.local_port = l.sin_port;
    s.remote_port = p.sin_port;
    if (ti.tcpi_options & TCPI_OPT_SACK) s.options |= VPIPE_TCPOPT_SACK;
    if (ti.tcpi_options & TCPI_OPT_TIMESTAMPS) s.options |= VPIPE_TCPOPT_TIMESTAMP;
    if (ti.tcpi_options & TCPI_OPT_WSCALE) {
        s.options |= VPIPE_TCPOPT_WSCALE;
        s.snd_wscale = ti.tcpi_snd_wscale;
        s.rcv_wscale = ti.tcpi_rcv_wscale;
    }
    int v = 0;
    if (int r = get_int(fd, IPPROTO_TCP, TCP_MAXSEG, &v)) return r;
    s.mss = static_cast<uint32_t>(v);
    if (int r = get_int(fd, IPPROTO_TCP, TCP_TIMESTAMP, &v)) return r;
    s.timestamp = static_cast<uint32_t>(v);
    struct tcp_repair_window w {};
    socklen_t wl = sizeof(w);
    if (getsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &w, &wl) < 0) return -errno;
    s.snd_wl1 = w.snd_wl1;
    s.snd_wnd = w.snd_wnd;
    s.max_window = w.max_window;
    s.rcv_wnd = w.rcv_wnd;
    s.rcv_wup = w.rcv_wup;
    int outq = 0, inq = 0, unsent = 0;
    if (ioctl(fd, SIOCOUTQ, &outq) < 0 || ioctl(fd, SIOCINQ, &inq) < 0 ||
        ioctl(fd, SIOCOUTQNSD, &unsent) < 0)
        return -errno;
    if (unsent < 0 || unsent > outq) return -EPROTO;
    if (int r = set_int(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)) return r;
    if (int r = get_int(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, &v)) return r;
    s.snd_seq = static_cast<uint32_t>(v);
    if (int r = peek_queue(fd, TCP_SEND_QUEUE, static_cast<uint32_t>(outq), sndq)) return r;
    if (int r = set_int(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)) return r;
    if (int r = get_int(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, &v)) return r;
    // rcv_nxt counts the FIN: the connection handed back stops before it
    s.rcv_seq = static_cast<uint32_t>(v) - 1;
    if (int r = peek_queue(fd, TCP_RECV_QUEUE, static_cast<uint32_t>(inq), rcvq)) return r;
    set_int(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE);
    // the window bookkeeping must stay consistent with the reduced rcv_nxt (restore checks
    // rcv_wup <= rcv_nxt)
    if (s.rcv_wup == s.rcv_seq + 1) s.rcv_wup = s.rcv_seq;
    s.sndq_len = static_cast<uint32_t>(sndq->size());
    s.rcvq_len = static_cast<uint32_t>(rcvq->size());
    s.sndq_unsent = static_cast<uint32_t>(unsent);
    *st = s;
    return 0;
}

}  // namespace

int freeze_any(int fd, vpipe_tcp_state* st, std::vector<uint8_t>* sndq, std::vector<uint8_t>* rcvq,
               bool* peer_fin) {
    *peer_fin = false;
    int r = -EAGAIN;
    for (int i = 0; i < 3 && r == -EAGAIN; ++i) r = tcp::freeze(fd, st, sndq, rcvq);
    if (r == 0) {
        // stay in repair mode (freeze leaves it on) until close_silently
        return 0;
    }
    if (r != -ENOTCONN) return r;
    struct tcp_info ti;
    if (tcp_state_of(fd, &ti) != kStateCloseWait) return -ECONNRESET;
    r = freeze_close_wait(fd, st, sndq, rcvq);
    if (r == 0) *peer_fin = true;
    return r;
}

// ---- ShadowSockets ----------------------------------------------------------------------------

std::unique_ptr<ShadowSockets> ShadowSockets::create() {
    auto st = steering::Steering::create();
    if (!st) return nullptr;
    std::unique_ptr<ShadowSockets> e(new ShadowSockets());
    e->fwmark_ = st->fwmark();
    e->steering_ = std::move(st);
    return e;
}

namespace {
steering::FlowKey reversed(const steering::FlowKey& k) {
    steering::FlowKey r = k;
    r.local_addr = k.remote_addr;
    r.local_port = k.remote_port;
    r.remote_addr = k.local_addr;
    r.remote_port = k.local_port;
    return r;
}
void set_mark(int fd, uint32_t mark) {
    if (setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) < 0)
        spdlog::warn("shadow socket: SO_MARK {:#x}: {}", mark, std::strerror(errno));
}
}  // namespace

void ShadowSockets::attach(const steering::FlowKey& k, int fd) {
    std::lock_guard lk(live_mu_);
    const steering::FlowKey r = reversed(k);
    for (const auto& [key, pfd] : live_)
        if (key == r) {
            spdlog::debug("shadow sockets {} and its peer: both ends in dom0, delivered locally", k.to_string());
            set_mark(fd, fwmark_);
            set_mark(pfd, fwmark_);
        }
    live_.emplace_back(k, fd);
}

void ShadowSockets::detach(const steering::FlowKey& k) {
    std::lock_guard lk(live_mu_);
    std::erase_if(live_, [&](const auto& e) { return e.first == k; });
    const steering::FlowKey r = reversed(k);
    for (const auto& [key, pfd] : live_)
        if (key == r) set_mark(pfd, 0);
}

ShadowSockets::~ShadowSockets() {
    std::lock_guard lk(mu_);
    if (steering_) steering_->destroy();
}

int ShadowSockets::add_flow(const steering::FlowKey& k) {
    std::lock_guard lk(mu_);
    int r = steering_->add_flow(k);
    if (r < 0) spdlog::warn("steering {}: {} ({})", k.to_string(), std::strerror(-r), steering_->last_error());
    return r;
}

int ShadowSockets::remove_flow(const steering::FlowKey& k) {
    std::lock_guard lk(mu_);
    int r = steering_->remove_flow(k);
    if (r < 0) spdlog::warn("un-steering {}: {} ({})", k.to_string(), std::strerror(-r), steering_->last_error());
    return r;
}

// ---- Shadow -----------------------------------------------------------------------------------

Shadow::~Shadow() { abort(); }

int Shadow::open(const vpipe_tcp_state& tcp, std::span<const uint8_t> sndq, std::span<const uint8_t> rcvq,
                 uint32_t room, uint32_t tail_len, Role role) {
    vpipe_tcp_state st = tcp;
    st.carry_offset = 0;
    // The room's shares (see shadow.h). Validation guarantees sndq + rcvq + tail <= room.
    const uint64_t carried = uint64_t{tcp.sndq_len} + tcp.rcvq_len + tail_len;
    const uint64_t slack = room > carried ? room - carried : 0;
    uint64_t rcv_cap;
    if (role == Role::kSource) {
        rcv_cap = room - uint64_t{tcp.sndq_len};           // all but its own send queue
        snd_limit_ = tcp.sndq_len;
    } else {
        rcv_cap = tcp.rcvq_len + std::min<uint64_t>(slack / 4, 256u << 10);
        snd_limit_ = static_cast<uint32_t>(room - rcv_cap);
    }
    // The window the guest advertised may reach beyond what fits: the restored connection
    // advertises at most what is left of the receive share (segments beyond it are dropped
    // unacknowledged and sent again by the peer once the window opens).
    const uint32_t win = static_cast<uint32_t>(std::max<uint64_t>(rcv_cap - tcp.rcvq_len, 1024));
    st.rcv_wnd = std::min(st.rcv_wnd, win);
    if (static_cast<int32_t>(st.snd_wl1 - (st.rcv_seq + st.rcv_wnd)) > 0) st.snd_wl1 = st.rcv_seq;
    tcp::RestoreOptions ro;
    ro.transparent = true;
    ro.no_window_probe = true;  // the flow is not steered here yet
    int r = tcp::restore(st, sndq, rcvq, ro, &fd_);
    if (r < 0) return r;
    vmc_.shadow_sockets->fetch_add(1);
    sockets_.shadow_sockets++;
    sockets_.handovers++;
    // sk_rcvbuf = 2 * value; payload queued <= truesize accounted, so rcvbuf bounds bytes
    set_int(fd_.get(), SOL_SOCKET, SO_RCVBUFFORCE, static_cast<int>(std::max<uint64_t>(rcv_cap / 2, 1152)));
    set_int(fd_.get(), IPPROTO_TCP, TCP_WINDOW_CLAMP, static_cast<int>(win));
    if (role == Role::kDestination)
        set_int(fd_.get(), SOL_SOCKET, SO_SNDBUFFORCE, static_cast<int>(std::max<uint32_t>(snd_limit_ / 2, 4096)));
    set_int(fd_.get(), IPPROTO_TCP, TCP_NODELAY, 1);
    struct tcp_info ti;
    tcp_state_of(fd_.get(), &ti);
    acked_base_ = ti.tcpi_bytes_acked;  // before any ACK can reach the socket
    key_ = steering::FlowKey::from_tcp_state(st);
    sockets_.attach(key_, fd_.get());
    attached_ = true;
    if ((r = sockets_.add_flow(key_)) < 0) return r;
    steered_ = true;
    vmc_.steered_flows->fetch_add(1);
    sockets_.steered_flows++;
    // what the guest had queued but not transmitted (a destination's head among it) goes out
    // now that the peer's answers reach us
    if (tcp.sndq_unsent) {
        if ((r = tcp::send_unsent(fd_.get(), sndq.last(tcp.sndq_unsent))) < 0) return r;
    } else if (set_int(fd_.get(), IPPROTO_TCP, TCP_REPAIR, 1) == 0) {
        // a window probe: a peer that was held back during the hand-over (zero window,
        // dropped segments) resumes without waiting for its timers
        set_int(fd_.get(), IPPROTO_TCP, TCP_REPAIR, 0);
    }
    return 0;
}

uint64_t Shadow::bytes_acked() const {
    struct tcp_info ti;
    if (!fd_ || tcp_state_of(fd_.get(), &ti) < 0) return 0;
    return ti.tcpi_bytes_acked - acked_base_;
}

int Shadow::hand_back(vpipe_tcp_state* final, std::vector<uint8_t>* sndq, std::vector<uint8_t>* rcvq,
                      uint32_t* flags) {
    *flags = 0;
    if (attached_) {
        sockets_.detach(key_);
        attached_ = false;
    }
    // Frames of the flow go to the VM again, whose own block drops them until the guest has
    // restored the connection: no RST, no ACK of bytes that would be lost.
    if (steered_) {
        sockets_.remove_flow(key_);
        steered_ = false;
        vmc_.steered_flows->fetch_sub(1);
        sockets_.steered_flows--;
    }
    bool fin = false;
    int r = freeze_any(fd_.get(), final, sndq, rcvq, &fin);
    if (r < 0) {
        abort();
        *flags = VPIPE_EPF_RESET;
        return r == -ECONNRESET ? r : -ECONNRESET;
    }
    *flags = VPIPE_EPF_VALID | (fin ? VPIPE_EPF_PEER_FIN : 0);
    tcp::close_silently(fd_.release());
    vmc_.shadow_sockets->fetch_sub(1);
    sockets_.shadow_sockets--;
    return 0;
}

void Shadow::reset_peer() {
    if (fd_) {
        // the shadow is a live socket (repair mode only while it is frozen): an abortive close
        linger lg{1, 0};
        ::setsockopt(fd_.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        if (attached_) {
            sockets_.detach(key_);
            attached_ = false;
        }
        fd_.reset();  // RST, while the steering still brings the peer's answer here
        vmc_.shadow_sockets->fetch_sub(1);
        sockets_.shadow_sockets--;
    }
    abort();  // the steering and anything else left
}

void Shadow::abort() {
    if (attached_) {
        sockets_.detach(key_);
        attached_ = false;
    }
    if (steered_) {
        sockets_.remove_flow(key_);
        steered_ = false;
        vmc_.steered_flows->fetch_sub(1);
        sockets_.steered_flows--;
    }
    if (fd_) {
        if (tcp::close_silently(fd_.get()) == 0)
            fd_.release();
        else
            fd_.reset();
        vmc_.shadow_sockets->fetch_sub(1);
        sockets_.shadow_sockets--;
    }
}

}  // namespace vpipe::engine
