#include "sockets.h"

#include <fcntl.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <spdlog/spdlog.h>

#include "guest_flow_block.h"
#include "tcp/tcp_repair.h"
#include "util/unique_fd.h"

namespace vpipe::agent {
namespace {

constexpr int kLocalIoTimeoutMs = 30000;
constexpr uint8_t kEstablished = 1;
constexpr uint8_t kCloseWait = 8;

int tcp_state(int fd) {
    struct tcp_info ti {};
    socklen_t l = sizeof(ti);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &l) < 0) return -errno;
    return ti.tcpi_state;
}

// A socket that behaves like one whose peer reset the connection (pending ECONNRESET, then
// EPIPE / EOF): a loopback pair whose accepted end is closed with RST. It replaces the
// application's descriptor when dom0 reports the connection dead.
UniqueFd make_reset_socket(int like_fd) {
    UniqueFd l(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof(a);
    if (!l || ::bind(l.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) < 0 || ::listen(l.get(), 1) < 0 ||
        ::getsockname(l.get(), reinterpret_cast<sockaddr*>(&a), &al) < 0)
        return {};
    UniqueFd c(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!c || ::connect(c.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) < 0) return {};
    UniqueFd acc(::accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!acc) return {};
    linger lg{1, 0};
    ::setsockopt(acc.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    acc.reset();  // RST
    // the RST crosses loopback at once; wait (bounded) until the socket shows it
    pollfd p{c.get(), POLLIN, 0};
    ::poll(&p, 1, 100);
    int fl = ::fcntl(like_fd, F_GETFL);
    if (fl >= 0 && (fl & O_NONBLOCK)) ::fcntl(c.get(), F_SETFL, ::fcntl(c.get(), F_GETFL) | O_NONBLOCK);
    return c;
}

// Sends a window probe (repair on/off), e.g. after the flow was unblocked.
void window_probe(int fd) {
    int on = 1, off = 0;
    if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR, &on, sizeof(on)) == 0)
        setsockopt(fd, IPPROTO_TCP, TCP_REPAIR, &off, sizeof(off));
}

int wait_fd(int fd, short ev) {
    pollfd p{fd, ev, 0};
    int r = ::poll(&p, 1, kLocalIoTimeoutMs);
    if (r == 0) return -ETIMEDOUT;
    return r < 0 ? -errno : 0;
}

int send_all(int fd, const uint8_t* p, size_t n) {
    size_t off = 0;
    while (off < n) {
        ssize_t w = ::send(fd, p + off, n - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            off += static_cast<size_t>(w);
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno != EAGAIN) return -errno;
        if (int r = wait_fd(fd, POLLOUT)) return r;
    }
    return 0;
}

int pwrite_all(int fd, const uint8_t* p, size_t n, uint64_t off) {
    size_t done = 0;
    while (done < n) {
        ssize_t w = ::pwrite(fd, p + done, n - done, static_cast<off_t>(off + done));
        if (w < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        done += static_cast<size_t>(w);
    }
    return 0;
}

// The peer closed: CLOSE_WAIT, or a FIN consumed in dom0 by an earlier operation (the socket
// was restored ESTABLISHED with its receive side shut, see restore_socket(): the peer will not
// send the FIN again). POLLRDHUP is the receive side's shutdown, whatever queued bytes remain.
bool peer_closed(int fd, int state) {
    if (state == kCloseWait) return true;
    pollfd p{fd, POLLRDHUP, 0};
    return ::poll(&p, 1, 0) == 1 && (p.revents & POLLRDHUP);
}

}  // namespace

int check_socket(int fd, int* peer_fin) {
    *peer_fin = 0;
    struct stat st;
    if (fstat(fd, &st) < 0) return -EBADF;
    if (!S_ISSOCK(st.st_mode)) return -EINVAL;
    int type = 0, proto = 0, domain = 0, listening = 0;
    socklen_t l = sizeof(int);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l) < 0) return -EINVAL;
    l = sizeof(int);
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &l) < 0) return -EINVAL;
    l = sizeof(int);
    if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &l) < 0) return -EINVAL;
    if (type != SOCK_STREAM || proto != IPPROTO_TCP || (domain != AF_INET && domain != AF_INET6))
        return -EINVAL;
    l = sizeof(int);
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &l) == 0 && listening) return -ENOTCONN;
    int err = 0;
    l = sizeof(int);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l) == 0 && err) return -err;  // e.g. a reset
    int s = tcp_state(fd);
    if (s < 0) return s;
    if (s != kEstablished && s != kCloseWait) return -ENOTCONN;
    if (domain == AF_INET6) return -EOPNOTSUPP;
    sockaddr_in a{};
    l = sizeof(a);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&a), &l) < 0) return -ENOTCONN;
    if ((ntohl(a.sin_addr.s_addr) >> 24) == 127) return -EOPNOTSUPP;  // loopback: not on a vif
    *peer_fin = peer_closed(fd, s);
    return 0;
}

int freeze_socket(GuestFlowBlock* fb, int fd, vpipe_frozen* fz) {
    *fz = vpipe_frozen{};
    if (!fb) return -EOPNOTSUPP;
    auto f = std::make_unique<FrozenSocket>();
    f->fd = fd;
    // the block's key: the addresses, read without repair mode
    sockaddr_in l{}, p{};
    socklen_t ll = sizeof(l), pl = sizeof(p);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&l), &ll) < 0 ||
        getpeername(fd, reinterpret_cast<sockaddr*>(&p), &pl) < 0)
        return -ENOTCONN;
    f->key.family = VPIPE_AF_INET;
    std::memcpy(f->key.local_addr, &l.sin_addr, 4);
    std::memcpy(f->key.remote_addr, &p.sin_addr, 4);
    f->key.local_port = l.sin_port;
    f->key.remote_port = p.sin_port;
    if (int r = fb->block(f->key)) return r == -EIO ? -EOPNOTSUPP : r;
    f->blocked = true;
    // The peer closed (CLOSE_WAIT): tcp::freeze refuses it; the caller drains such a source
    // locally and refuses such a destination, so report it without capturing anything.
    if (peer_closed(fd, tcp_state(fd))) {
        fb->unblock(f->key);
        fz->peer_fin = 1;
        fz->st = f->key;
        return 0;
    }
    socklen_t rl = sizeof(f->reuseaddr);
    if (getsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &f->reuseaddr, &rl) < 0) f->reuseaddr = 0;
    int r = tcp::freeze(fd, &fz->st, &f->sndq, &f->rcvq);
    if (r < 0) {
        fb->unblock(f->key);
        return r == -EPERM ? -EOPNOTSUPP : r;
    }
    // the tuple is free now: no FIN, no RST; the application's descriptor stays open
    if ((r = tcp::disconnect_silently(fd)) < 0) {
        tcp::unfreeze(fd);
        fb->unblock(f->key);
        return r;
    }
    fz->sndq = f->sndq.data();
    fz->rcvq = f->rcvq.data();
    fz->os = f.release();
    return 0;
}

int restore_socket(GuestFlowBlock* fb, vpipe_frozen* fz, const vpipe_restore& r, int* new_fd) {
    *new_fd = -1;
    std::unique_ptr<FrozenSocket> f(static_cast<FrozenSocket*>(fz->os));
    fz->os = nullptr;
    if (!f) return 0;  // nothing was captured (the peer had closed): the socket is untouched
    auto unblock = [&] {
        if (f->blocked) fb->unblock(f->key);
        f->blocked = false;
    };
    if (r.flags & VPIPE_EPF_RESET) {
        // dead connection: the application's descriptor becomes a reset socket
        unblock();
        UniqueFd dead = make_reset_socket(f->fd);
        if (!dead) return -EIO;
        *new_fd = dead.release();
        return 0;
    }
    vpipe_tcp_state s = fz->st;
    std::span<const uint8_t> sq(f->sndq), rq(f->rcvq);
    bool fin = false;
    if (r.flags & VPIPE_EPF_VALID) {
        s = *r.st;
        sq = std::span<const uint8_t>(r.sndq, s.sndq_len);
        rq = std::span<const uint8_t>(r.rcvq, s.rcvq_len);
        fin = (r.flags & VPIPE_EPF_PEER_FIN) != 0;
    }
    s.carry_offset = 0;
    tcp::RestoreOptions ro;
    ro.no_window_probe = true;  // still blocked: the probe goes after the unblock
    UniqueFd fresh;
    int rr = tcp::restore(s, sq, rq, ro, &fresh);
    if (rr < 0) {
        spdlog::error("restoring a connection after the offload failed: {}", std::strerror(-rr));
        unblock();
        return rr;
    }
    tcp::copy_socket_options(f->fd, fresh.get());
    if (fin) ::shutdown(fresh.get(), SHUT_RD);  // the peer's FIN was consumed in dom0
    unblock();
    // what was never transmitted goes out now that the flow reaches the socket
    if (s.sndq_unsent) {
        if (int e = tcp::send_unsent(fresh.get(), sq.last(s.sndq_unsent)); e < 0) {
            // the stream would silently miss bytes: the peer gets a reset instead
            spdlog::error("re-queueing {} unsent bytes after the offload failed: {}", s.sndq_unsent,
                          std::strerror(-e));
            linger lg{1, 0};
            ::setsockopt(fresh.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));  // RST on close
            UniqueFd dead = make_reset_socket(fresh.get());
            *new_fd = dead ? dead.release() : -1;
            return e;
        }
    }
    window_probe(fresh.get());
    if (f->reuseaddr) {  // after the last repair-mode toggle (the probe's), which clears it
        const int one = 1;
        ::setsockopt(fresh.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    }
    *new_fd = fresh.release();
    return 0;
}

int drain_closed_source(int src, int dst, bool dst_is_file, uint64_t out_off, uint64_t length,
                        uint64_t* moved) {
    std::vector<uint8_t> buf(64 << 10);
    *moved = 0;
    while (*moved < length) {
        ssize_t r = ::recv(src, buf.data(), std::min<uint64_t>(buf.size(), length - *moved), MSG_DONTWAIT);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;  // EOF or nothing more queued
        int w = dst_is_file ? pwrite_all(dst, buf.data(), static_cast<size_t>(r), out_off + *moved)
                            : send_all(dst, buf.data(), static_cast<size_t>(r));
        if (w) return w;
        *moved += static_cast<uint64_t>(r);
    }
    // socket -> file counts bytes durably written
    if (dst_is_file && *moved && ::fdatasync(dst) < 0) return -errno;
    return 0;
}

}  // namespace vpipe::agent
