#include "socket_ops.h"

#include <fcntl.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include <spdlog/spdlog.h>

#include "files/dest_alloc.h"
#include "files/extent_map.h"
#include "files/file_hold.h"
#include "guest_flow_block.h"
#include "request_builder.h"
#include "tcp/tcp_repair.h"

namespace vpipe::agent {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kDrainTimeout = std::chrono::seconds(5);
constexpr auto kLocalIoTimeout = std::chrono::seconds(30);
constexpr uint8_t kEstablished = 1;
constexpr uint8_t kCloseWait = 8;

// The flow block, created on first use in the agent's netns, removed at exit.
GuestFlowBlock* flow_block() {
    static std::once_flag once;
    static std::unique_ptr<GuestFlowBlock> fb;
    std::call_once(once, [] { fb = GuestFlowBlock::create(); });
    return fb.get();
}

int tcp_info_state(int fd, struct tcp_info* ti) {
    std::memset(ti, 0, sizeof(*ti));
    socklen_t l = sizeof(*ti);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, ti, &l) < 0) return -errno;
    return ti->tcpi_state;
}

// A connected IPv4 TCP socket of this VM's stack? 0, -EINVAL (not TCP), -ENOTCONN (listening,
// unconnected, closing), -EOPNOTSUPP (IPv6, loopback: not offloadable, fall back).
// *close_wait is set when the peer already closed (the caller may still read what is queued).
int check_socket(int fd, bool* close_wait) {
    *close_wait = false;
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
    struct tcp_info ti;
    int s = tcp_info_state(fd, &ti);
    if (s < 0) return s;
    if (s == kCloseWait) {
        *close_wait = true;
        return 0;
    }
    if (s != kEstablished) return -ENOTCONN;
    if (domain == AF_INET6) return -EOPNOTSUPP;
    sockaddr_in a{};
    l = sizeof(a);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&a), &l) < 0) return -ENOTCONN;
    if ((ntohl(a.sin_addr.s_addr) >> 24) == 127) return -EOPNOTSUPP;  // loopback: not on a vif
    return 0;
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
    for (int i = 0; i < 100; ++i) {
        struct tcp_info ti;
        if (tcp_info_state(c.get(), &ti) != kEstablished) break;
        ::usleep(100);
    }
    int fl = ::fcntl(like_fd, F_GETFL);
    if (fl >= 0 && (fl & O_NONBLOCK)) ::fcntl(c.get(), F_SETFL, ::fcntl(c.get(), F_GETFL) | O_NONBLOCK);
    return c;
}

// Waits until the peer acknowledged everything the application sent (paper 3.2).
int wait_acked(int fd) {
    const auto deadline = Clock::now() + kDrainTimeout;
    for (int spins = 0;; ++spins) {
        int outq = 0;
        if (ioctl(fd, SIOCOUTQ, &outq) < 0) return -errno;
        if (outq == 0) return 0;
        if (Clock::now() > deadline) return -ETIMEDOUT;
        struct tcp_info ti;
        if (tcp_info_state(fd, &ti) != kEstablished) return -ENOTCONN;
        // an ACK is usually one RTT away (tens of us in a data centre): short sleeps first,
        // 1 ms only after ~20 ms
        if (spins < 100)
            sched_yield();
        else
            ::usleep(spins < 500 ? 50 : 1000);
    }
}

int wait_fd(int fd, short ev) {
    pollfd p{fd, ev, 0};
    int r = ::poll(&p, 1, static_cast<int>(std::chrono::milliseconds(kLocalIoTimeout).count()));
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

// Receives exactly n bytes that are known to be queued (after an unfreeze).
int consume(int fd, size_t n) {
    std::vector<uint8_t> buf(std::min<size_t>(n, 1 << 20));
    while (n > 0) {
        ssize_t r = ::recv(fd, buf.data(), std::min(buf.size(), n), MSG_DONTWAIT);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return r == 0 ? -EIO : -errno;
        n -= static_cast<size_t>(r);
    }
    return 0;
}

// Sends a window probe (repair on/off), e.g. after the flow was unblocked.
void window_probe(int fd) {
    int on = 1, off = 0;
    if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR, &on, sizeof(on)) == 0)
        setsockopt(fd, IPPROTO_TCP, TCP_REPAIR, &off, sizeof(off));
}

// One socket endpoint through a hand-over.
struct SockEnd {
    int fd = -1;
    bool source = false;
    vpipe_tcp_state st{};
    std::vector<uint8_t> sndq, rcvq;   // as frozen
    std::vector<uint8_t> keep;         // unread bytes to put back in front on restore
    FlowBlockGuard block;
    bool frozen = false, disconnected = false;

    // check (done by the caller) -> drain -> block -> freeze
    int freeze_it() {
        if (int r = wait_acked(fd)) return r;
        GuestFlowBlock* fb = flow_block();
        if (!fb) return -EOPNOTSUPP;
        // the state is needed for the block's key: addresses only, read without repair
        vpipe_tcp_state key{};
        sockaddr_in l{}, p{};
        socklen_t ll = sizeof(l), pl = sizeof(p);
        if (getsockname(fd, reinterpret_cast<sockaddr*>(&l), &ll) < 0 ||
            getpeername(fd, reinterpret_cast<sockaddr*>(&p), &pl) < 0)
            return -ENOTCONN;
        key.family = VPIPE_AF_INET;
        std::memcpy(key.local_addr, &l.sin_addr, 4);
        std::memcpy(key.remote_addr, &p.sin_addr, 4);
        key.local_port = l.sin_port;
        key.remote_port = p.sin_port;
        if (int r = fb->block(key)) return r == -EIO ? -EOPNOTSUPP : r;
        block = FlowBlockGuard(fb, key);
        int r = -EAGAIN;
        for (int i = 0; i < 3 && r == -EAGAIN; ++i) r = tcp::freeze(fd, &st, &sndq, &rcvq);
        if (r < 0) {
            block.reset();
            return r == -EPERM ? -EOPNOTSUPP : r;
        }
        frozen = true;
        if (!sndq.empty()) {
            // acknowledged a moment ago; a segment sent since can't be: go back, retry later
            tcp::unfreeze(fd);
            frozen = false;
            block.reset();
            return -EAGAIN;
        }
        return 0;
    }
    int disconnect() {
        int r = tcp::disconnect_silently(fd);
        if (r == 0) disconnected = true;
        return r;
    }
    // Undo before the request: the connection continues in place; `consumed` leading bytes of
    // the receive queue were delivered by us and are read away now.
    int resume(size_t consumed) {
        if (!frozen) return 0;
        block.reset();
        int r = tcp::unfreeze(fd);
        frozen = false;
        if (r == 0 && consumed) r = consume(fd, consumed);
        return r;
    }
    // Restores the connection from `res` (dom0's final state) or, without one, from our own
    // frozen state, onto a fresh socket: *out. The flow is unblocked after.
    int restore(const SocketResult* res, UniqueFd* out) {
        vpipe_tcp_state s = st;
        std::vector<uint8_t> sq, rq = keep;
        bool fin = false;
        if (res && (res->flags & VPIPE_EPF_VALID)) {
            s = res->st;
            sq = res->sndq;
            rq.insert(rq.end(), res->rcvq.begin(), res->rcvq.end());
            fin = res->flags & VPIPE_EPF_PEER_FIN;
        } else {
            sq.clear();  // requests are only made with empty send queues
        }
        s.sndq_len = static_cast<uint32_t>(sq.size());
        s.rcvq_len = static_cast<uint32_t>(rq.size());
        s.carry_offset = 0;
        s.reserved[0] = s.reserved[1] = 0;
        tcp::RestoreOptions ro;
        ro.no_window_probe = true;  // still blocked: the probe goes after the unblock
        UniqueFd fresh;
        int r = tcp::restore(s, sq, rq, ro, &fresh);
        if (r < 0) {
            spdlog::error("restoring a connection after the offload failed: {}", std::strerror(-r));
            return r;
        }
        tcp::copy_socket_options(fd, fresh.get());
        if (fin) ::shutdown(fresh.get(), SHUT_RD);  // the peer's FIN was consumed in dom0
        block.reset();
        window_probe(fresh.get());
        frozen = false;
        *out = std::move(fresh);
        return 0;
    }
};

// Reads an unfrozen source's queue locally (peer closed already: nothing more will come).
int local_drain_source(int fd, uint64_t length, const std::function<int(const uint8_t*, size_t, uint64_t)>& sink,
                       uint64_t* moved) {
    std::vector<uint8_t> buf(64 << 10);
    *moved = 0;
    while (*moved < length) {
        ssize_t r = ::recv(fd, buf.data(), std::min<uint64_t>(buf.size(), length - *moved), MSG_DONTWAIT);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;  // EOF or nothing more queued
        if (int w = sink(buf.data(), static_cast<size_t>(r), *moved)) return w;
        *moved += static_cast<uint64_t>(r);
    }
    return 0;
}

bool at_eof(int fd) {
    char c;
    ssize_t r = ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return r == 0;
}

int check_file(int fd, bool want_write) {
    struct stat st;
    if (fstat(fd, &st) < 0) return -EBADF;
    if (!S_ISREG(st.st_mode)) return -EINVAL;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0) return -errno;
    int acc = fl & O_ACCMODE;
    if (!want_write && acc == O_WRONLY) return -EBADF;
    if (want_write && acc == O_RDONLY) return -EBADF;
    if (want_write && (fl & O_APPEND)) return -EINVAL;
    return 0;
}

// The hand-over: request, results, restore. *dom0_moved from the response.
int run_request(AgentContext& ctx, uint8_t op, uint64_t length, const FileExtents* file,
                uint64_t file_off, SockEnd* src, SockEnd* dst, uint64_t* dom0_moved,
                SocketReplacements* repl, vpipe_ioc_op* iop) {
    *dom0_moved = 0;
    SocketChunk chunk;
    try {
        chunk = build_socket_request(op, file, file_off, length, src ? &src->st : nullptr,
                                     dst ? &dst->st : nullptr);
    } catch (const std::exception& e) {
        spdlog::warn("socket request: {}", e.what());
        return -EOPNOTSUPP;
    }
    std::vector<uint8_t> pages(size_t{chunk.nr_pages} * VPIPE_PAGE_SIZE);
    std::memcpy(pages.data(), chunk.desc.data(), chunk.desc.size());
    std::shared_ptr<EngineLink::Ticket> t;
    int status = ctx.link.submit(op, length, chunk.desc, &t, chunk.nr_pages, pages);
    if (status == 0) {
        ctx.stats.ring_requests++;
        iop->requests++;
        status = ctx.link.wait(t, dom0_moved);
    }
    // Results (the pages were copied back before being freed; untouched = flags 0).
    int rs = 0;
    for (SockEnd* e : {src, dst}) {
        if (!e) continue;
        SocketResult res;
        if (read_socket_result(pages, e == src, &res) < 0) res = SocketResult{};
        if (res.flags & VPIPE_EPF_RESET) {
            // dead connection: the application's descriptor becomes a reset socket
            e->block.reset();
            if (status == 0) status = -ECONNRESET;
            if (UniqueFd dead = make_reset_socket(e->fd)) (e == src ? repl->in : repl->out) = std::move(dead);
            continue;
        }
        UniqueFd fresh;
        int r = e->restore(&res, &fresh);
        if (r < 0) {
            if (rs == 0) rs = r;
            continue;
        }
        (e == src ? repl->in : repl->out) = std::move(fresh);
    }
    if (status == 0 && rs < 0) status = -EIO;
    return status;
}

}  // namespace

int blocked_flows() {
    GuestFlowBlock* fb = flow_block();
    return fb ? fb->blocked() : 0;
}

namespace {

// One pass: file->socket moves everything (one hand-over per chunk); a socket source moves at
// most one chunk (ctx.cfg.chunk_bytes). socket_op() below loops over this.
int socket_op_once(AgentContext& ctx, int in_fd, int out_fd, vpipe_ioc_op* op, SocketReplacements* repl) {
    op->moved = op->offloaded = op->guest_copied = op->zero_filled = 0;
    op->paths = op->requests = 0;
    const bool src_sock = op->op != VPIPE_IOC_FILE_TO_SOCKET;
    const bool dst_sock = op->op != VPIPE_IOC_SOCKET_TO_FILE;
    bool src_cw = false, dst_cw = false;
    // Validation before anything is touched: exact errors, sockets stay usable.
    if (src_sock) {
        if (int r = check_socket(in_fd, &src_cw)) return r;
    } else if (int r = check_file(in_fd, false)) {
        return r;
    }
    if (dst_sock) {
        if (int r = check_socket(out_fd, &dst_cw)) return r;
        if (dst_cw) return -EOPNOTSUPP;  // peer half-closed: the plain path handles it
    } else if (int r = check_file(out_fd, true)) {
        return r;
    }
    if (op->in_offset > static_cast<uint64_t>(INT64_MAX) || op->out_offset > static_cast<uint64_t>(INT64_MAX))
        return -EINVAL;
    if (!dst_sock) op->length = std::min<uint64_t>(op->length, static_cast<uint64_t>(INT64_MAX) - op->out_offset);
    if (op->length == 0) return 0;
    const int file_fd = src_sock ? (dst_sock ? -1 : out_fd) : in_fd;
    const DiskInfo* disk = nullptr;
    if (file_fd >= 0) {
        struct stat fst;
        if (fstat(file_fd, &fst) < 0) return -errno;
        disk = ctx.disks.find_by_devno(fst.st_dev);
        if (!disk) return -ENXIO;
    }
    if (!ctx.link.connected()) return -EHOSTDOWN;  // before any socket is touched
    if (!flow_block()) return -EOPNOTSUPP;

    // ---- a source that already reached EOF, or whose peer closed: local, no hand-over
    if (src_sock && at_eof(in_fd)) return 0;
    if (src_sock && src_cw) {
        uint64_t moved = 0;
        std::function<int(const uint8_t*, size_t, uint64_t)> sink;
        if (dst_sock) {
            sink = [&](const uint8_t* p, size_t n, uint64_t) { return send_all(out_fd, p, n); };
        } else {
            sink = [&](const uint8_t* p, size_t n, uint64_t at) {
                return pwrite_all(out_fd, p, n, op->out_offset + at);
            };
        }
        int r = local_drain_source(in_fd, op->length, sink, &moved);
        op->moved = op->guest_copied = moved;
        op->paths |= VPIPE_PATH_GUEST_CACHE;
        ctx.stats.bytes_guest_cache += moved;
        return moved ? 0 : r;
    }

    // ---- file -> socket ----------------------------------------------------------------------
    if (op->op == VPIPE_IOC_FILE_TO_SOCKET) {
        FileHold hold;
        if (int r = FileHold::acquire(in_fd, &hold); r < 0) return r;
        struct stat sst;
        if (fstat(in_fd, &sst) < 0) return -errno;
        const uint64_t size = static_cast<uint64_t>(sst.st_size);
        if (op->in_offset >= size) return 0;
        uint64_t total = std::min<uint64_t>(op->length, size - op->in_offset);
        if (int r = flush_range(in_fd, op->in_offset, total); r < 0) return r;
        FileExtents fe;
        if (int r = map_file_range(in_fd, op->in_offset, total, ctx.disks, &fe); r < 0) return r;
        ctx.stats.extents_mapped += fe.segments.size();
        // one hand-over per chunk (each restores the connection in between)
        uint64_t done = 0;
        int status = 0;
        while (done < total && status == 0) {
            uint64_t len = std::min<uint64_t>(total - done, ctx.cfg.chunk_bytes);
            SockEnd d;
            d.fd = out_fd;
            int r = -EAGAIN;
            for (int i = 0; i < 20 && r == -EAGAIN; ++i) r = d.freeze_it();
            if (r < 0) {
                status = r;
                break;
            }
            d.keep = d.rcvq;  // unread by the application: it stays in front
            if ((r = d.disconnect()) < 0) {
                d.resume(0);
                status = r;
                break;
            }
            uint64_t m = 0;
            r = run_request(ctx, VPIPE_OP_FILE_TO_SOCKET, len, &fe, done, nullptr, &d, &m, repl, op);
            done += m;
            op->offloaded += m;
            ctx.stats.bytes_offloaded += m;
            op->paths |= VPIPE_PATH_OFFLOAD;
            if (r < 0) status = r;
            if (m < len) break;
            if (done < total && repl->out) {
                // the next chunk continues on the restored socket
                tcp::replace_fd(out_fd, repl->out.get());
                repl->out.reset();
                // out_fd is now our own dup of the new socket; the application gets it below
                repl->out.reset(::fcntl(out_fd, F_DUPFD_CLOEXEC, 0));
            }
        }
        op->moved = done;
        if (status < 0 && done == 0) return status;
        return 0;
    }

    // ---- socket -> file / socket -> socket ------------------------------------------------------
    SockEnd s;
    s.fd = in_fd;
    s.source = true;
    FileHold dst_hold;
    DestPrep prep{};
    FileExtents fe;
    const uint64_t len = std::min<uint64_t>(op->length, ctx.cfg.chunk_bytes);
    if (!dst_sock) {
        // the destination file first (it is slow), then the connection (frozen briefly)
        if (int r = FileHold::acquire_destination(out_fd, &dst_hold); r < 0) return r;
        if (int r = prepare_destination(out_fd, op->out_offset, len, &prep); r < 0) return r;
        op->zero_filled = prep.zero_filled;
        op->paths |= prep.paths;
        ctx.stats.bytes_zero_filled += prep.zero_filled;
        ctx.stats.bytes_write_zeroes += prep.write_zeroes;
        int r = map_file_range(out_fd, op->out_offset, len, ctx.disks, &fe);
        if (r == 0 && std::any_of(fe.segments.begin(), fe.segments.end(), [](const Segment& g) { return g.zero; }))
            r = -EIO;
        if (r < 0) {
            finish_destination(out_fd, op->out_offset, len, 0, prep);
            return r;
        }
        ctx.stats.extents_mapped += fe.segments.size();
    }
    auto finish_file = [&](uint64_t written, int status) {
        if (dst_sock) return status;
        int r = finish_destination(out_fd, op->out_offset, len, written, prep);
        return status == 0 && r < 0 && r != -EBUSY ? r : status;
    };

    int r = -EAGAIN;
    for (int i = 0; i < 20 && r == -EAGAIN; ++i) r = s.freeze_it();
    if (r < 0) return finish_file(0, r);
    // the unread bytes are the stream's first bytes: delivered by the guest
    const uint64_t local = std::min<uint64_t>(s.rcvq.size(), len);
    if (local) {
        if (dst_sock) {
            r = send_all(out_fd, s.rcvq.data(), static_cast<size_t>(local));
        } else {
            r = FileHold::with_lifted(out_fd, [&] {
                int w = pwrite_all(out_fd, s.rcvq.data(), static_cast<size_t>(local), op->out_offset);
                return w == 0 && ::fdatasync(out_fd) < 0 ? -errno : w;
            });
        }
        if (r < 0) {
            s.resume(0);
            return finish_file(0, r);
        }
        op->guest_copied += local;
        op->paths |= VPIPE_PATH_GUEST_CACHE;
        ctx.stats.bytes_guest_cache += local;
    }
    if (local == len) {
        // nothing left for dom0: the connection goes on in place
        r = s.resume(static_cast<size_t>(local));
        op->moved = local;
        return finish_file(local, r < 0 ? r : 0);
    }
    s.keep.assign(s.rcvq.begin() + static_cast<ptrdiff_t>(local), s.rcvq.end());  // empty here
    SockEnd d;
    if (dst_sock) {
        d.fd = out_fd;
        r = -EAGAIN;
        for (int i = 0; i < 20 && r == -EAGAIN; ++i) r = d.freeze_it();
        if (r < 0) {
            s.resume(static_cast<size_t>(local));
            op->moved = local;
            return local ? 0 : r;
        }
        d.keep = d.rcvq;
    }
    // the source's state as dom0 must continue it: the delivered bytes are gone
    s.st.rcvq_len = 0;
    if ((r = s.disconnect()) < 0 || (dst_sock && (r = d.disconnect()) < 0)) {
        // nothing was handed over: restore both from our own state
        UniqueFd a, b;
        if (s.disconnected) {
            s.restore(nullptr, &a);
            repl->in = std::move(a);
        } else {
            s.resume(static_cast<size_t>(local));
        }
        if (dst_sock) d.resume(0);
        op->moved = local;
        return finish_file(local, local ? 0 : r);
    }
    uint64_t m = 0;
    const uint64_t rest = len - local;
    int status = run_request(ctx, dst_sock ? VPIPE_OP_SOCKET_TO_SOCKET : VPIPE_OP_SOCKET_TO_FILE, rest,
                             dst_sock ? nullptr : &fe, local, &s, dst_sock ? &d : nullptr, &m, repl, op);
    op->offloaded += m;
    ctx.stats.bytes_offloaded += m;
    op->paths |= VPIPE_PATH_OFFLOAD;
    op->moved = local + m;
    status = finish_file(local + m, status);
    if (status < 0 && op->moved == 0) return status;
    if (status < 0) spdlog::warn("socket op: short after {} bytes: {}", op->moved, std::strerror(-status));
    return 0;
}

// Makes the agent's descriptor `fd` the restored socket `*fresh` for the next pass and keeps
// a dup of it in *fresh for the application (libvpipe dup3()s the last one over its number).
void continue_on(int fd, UniqueFd* fresh) {
    if (!*fresh) return;
    tcp::replace_fd(fd, fresh->get());
    fresh->reset(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
}

}  // namespace

int socket_op(AgentContext& ctx, int in_fd, int out_fd, vpipe_ioc_op* op, SocketReplacements* repl) {
    if (op->op == VPIPE_IOC_FILE_TO_SOCKET) return socket_op_once(ctx, in_fd, out_fd, op, repl);
    // socket -> file / socket -> socket: one chunk (hand-over) after the other until `length`
    // bytes moved or the source really ended (FIN: short count) or the connection failed
    // (short count; the next call reports the error) -- the API contract of vpipe.h.
    const uint64_t total = op->length;
    const uint64_t chunk = std::max<uint64_t>(ctx.cfg.chunk_bytes, 1);
    vpipe_ioc_op acc = *op;
    acc.moved = acc.offloaded = acc.guest_copied = acc.zero_filled = 0;
    acc.paths = acc.requests = 0;
    int status = 0;
    while (acc.moved < total) {
        vpipe_ioc_op sub = *op;
        sub.length = total - acc.moved;
        if (op->op == VPIPE_IOC_SOCKET_TO_FILE) sub.out_offset = op->out_offset + acc.moved;
        SocketReplacements r1;
        int r = socket_op_once(ctx, in_fd, out_fd, &sub, &r1);
        acc.moved += sub.moved;
        acc.offloaded += sub.offloaded;
        acc.guest_copied += sub.guest_copied;
        acc.zero_filled += sub.zero_filled;
        acc.paths |= sub.paths;
        acc.requests += sub.requests;
        if (r1.in) {
            continue_on(in_fd, &r1.in);
            repl->in = std::move(r1.in);
        }
        if (r1.out) {
            continue_on(out_fd, &r1.out);
            repl->out = std::move(r1.out);
        }
        if (r < 0) {
            status = r;
            break;
        }
        if (sub.moved < std::min<uint64_t>(sub.length, chunk)) break;  // EOF / peer gone
        if (sub.moved == 0) break;
    }
    const uint64_t moved = acc.moved;
    *op = acc;
    op->length = total;
    if (status < 0 && moved == 0) return status;
    if (status < 0) spdlog::warn("socket op: short after {} bytes: {}", moved, std::strerror(-status));
    return 0;
}

}  // namespace vpipe::agent
