#include "socket_ops.h"

#include <fcntl.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <future>
#include <optional>

#include <spdlog/spdlog.h>

namespace vpipe::engine {

namespace {
std::atomic<int64_t> g_socket_timeout_ms{30000};
}

void set_socket_timeout(std::chrono::milliseconds t) {
    if (t.count() > 0) g_socket_timeout_ms.store(t.count(), std::memory_order_relaxed);
}

std::chrono::milliseconds socket_timeout() {
    static const long env = [] {
        const char* e = std::getenv("VPIPE_SOCKET_TIMEOUT_MS");
        return e ? std::atol(e) : 0L;
    }();
    return std::chrono::milliseconds(env > 0 ? env : g_socket_timeout_ms.load(std::memory_order_relaxed));
}

namespace {

using Clock = std::chrono::steady_clock;

int map_sock_err(int e) {
    switch (e) {
    case ECONNRESET:
    case EPIPE:
    case ENOTCONN: return -ECONNRESET;
    case ETIMEDOUT: return -ETIMEDOUT;
    default: return -EIO;
    }
}

int tcp_state(int fd) {
    struct tcp_info ti {};
    socklen_t l = sizeof(ti);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &l) < 0) return -1;
    return ti.tcpi_state;
}

// Waits for `events` on `fd` for up to the socket timeout, unless the VM is being torn down
// (`cancel_fd`, Vm::cancel_fd(), readable; -1: never). 1 ready (*revents), 0 timeout, -ECANCELED.
int wait_fd(int fd, short events, int cancel_fd, short* revents) {
    pollfd p[2] = {{fd, events, 0}, {cancel_fd, POLLIN, 0}};
    int pr = ::poll(p, 2, static_cast<int>(socket_timeout().count()));
    if (pr < 0) return errno == EINTR ? 1 : -EIO;
    if (p[1].revents) return -ECANCELED;
    *revents = p[0].revents;
    return pr;
}

bool cancelled(int cancel_fd) {
    if (cancel_fd < 0) return false;
    pollfd p{cancel_fd, POLLIN, 0};
    return ::poll(&p, 1, 0) > 0;
}

// Receives up to `want` bytes (at least 1 unless EOF). >0 bytes, 0 EOF, or -status.
ssize_t recv_some(int fd, uint8_t* buf, size_t want, int cancel_fd) {
    for (;;) {
        ssize_t r = ::recv(fd, buf, want, MSG_DONTWAIT);
        if (r >= 0) return r;
        if (errno == EINTR) continue;
        if (errno != EAGAIN) return map_sock_err(errno);
        short revents = 0;
        int pr = wait_fd(fd, POLLIN, cancel_fd, &revents);
        if (pr == 0) return -ETIMEDOUT;
        if (pr < 0) return pr;
    }
}

// Waits until what is still queued on the destination shadow (unacknowledged + unread) fits
// the carry room. Gives up after the socket timeout without progress (-ETIMEDOUT) or when the
// connection died (-ECONNRESET).
int settle(int fd, uint32_t room, int cancel_fd) {
    auto last_progress = Clock::now();
    int last_outq = -1;
    unsigned spins = 0;
    for (;;) {
        int outq = 0, inq = 0;
        if (ioctl(fd, SIOCOUTQ, &outq) < 0 || ioctl(fd, SIOCINQ, &inq) < 0) return -EIO;
        if (static_cast<uint64_t>(outq) + static_cast<uint64_t>(inq) + 64 <= room) return 0;
        int st = tcp_state(fd);
        if (st != 1 /*ESTABLISHED*/ && st != 8 /*CLOSE_WAIT*/) return -ECONNRESET;
        if (outq != last_outq) {
            last_outq = outq;
            last_progress = Clock::now();
        } else if (Clock::now() - last_progress > socket_timeout()) {
            return -ETIMEDOUT;
        }
        if (cancelled(cancel_fd)) return -ECANCELED;
        // the peer's ACKs come within an RTT: poll finely first, 1 ms steps after ~20 ms
        ::usleep(++spins < 400 ? 50 : 1000);
    }
}

struct EndpointResult {
    uint32_t flags = 0;
    vpipe_tcp_state st{};
    std::vector<uint8_t> sndq, rcvq;
};

// Writes one socket endpoint's result into the guest's descriptor pages.
int write_result(const DescWriter& write, bool source, const vpipe_tcp_state& req_st,
                 EndpointResult& res) {
    const size_t ep_off = source ? offsetof(vpipe_desc_header, src) : offsetof(vpipe_desc_header, dst);
    if (res.flags & VPIPE_EPF_VALID) {
        res.st.carry_offset = req_st.carry_offset;
        res.st.sndq_len = static_cast<uint32_t>(res.sndq.size());
        res.st.rcvq_len = static_cast<uint32_t>(res.rcvq.size());
        res.st.reserved[0] = res.st.reserved[1] = 0;
        uint64_t off = req_st.carry_offset;
        if (!res.sndq.empty() && write(off, res.sndq.data(), res.sndq.size()) < 0) return -EIO;
        off += res.sndq.size();
        if (!res.rcvq.empty() && write(off, res.rcvq.data(), res.rcvq.size()) < 0) return -EIO;
        if (write(ep_off + offsetof(vpipe_endpoint, tcp), &res.st, sizeof(res.st)) < 0) return -EIO;
    }
    uint32_t flags = res.flags;
    return write(ep_off + offsetof(vpipe_endpoint, reserved), &flags, sizeof(flags));
}

// Hands the shadow back and fits its queues into the endpoint's carry room. A destination
// whose unacknowledged tail the application will send again (file->socket) may lose that
// tail: *dropped says how many bytes, and snd_seq is moved back over them.
int finish_endpoint(Shadow& sh, uint32_t room, bool may_drop_tail, EndpointResult* res,
                    uint64_t* dropped) {
    *dropped = 0;
    if (!sh.open_now()) return 0;  // flags 0: the guest restores what it sent
    int r = sh.hand_back(&res->st, &res->sndq, &res->rcvq, &res->flags);
    if (r < 0) return r;
    const uint64_t need = res->sndq.size() + res->rcvq.size();
    if (need <= room) return 0;
    if (res->rcvq.size() > room || !may_drop_tail) {
        // Bytes dom0 acknowledged cannot be handed back: the connection cannot continue.
        spdlog::error("carry overflow: {} + {} queued bytes > room {}; connection lost",
                      res->sndq.size(), res->rcvq.size(), room);
        res->flags = VPIPE_EPF_RESET;
        return -EIO;
    }
    const size_t keep = room - res->rcvq.size();
    *dropped = res->sndq.size() - keep;
    res->st.snd_seq -= static_cast<uint32_t>(*dropped);
    res->sndq.resize(keep);
    return 0;
}

// Like send_all, but *done grows by every byte the socket accepted, also when it fails midway
// (moved and the carried tail are computed from it: it must be exact).
int send_all_counted(int fd, const uint8_t* buf, size_t n, uint64_t* done, int cancel_fd) {
    size_t off = 0;
    while (off < n) {
        ssize_t w = ::send(fd, buf + off, n - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            off += static_cast<size_t>(w);
            *done += static_cast<uint64_t>(w);
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno != EAGAIN) return map_sock_err(errno);
        short revents = 0;
        int pr = wait_fd(fd, POLLOUT, cancel_fd, &revents);
        if (pr == 0) return -ETIMEDOUT;
        if (pr < 0) return pr;
        if (revents & (POLLERR | POLLHUP) && !(revents & POLLOUT)) {
            int err = 0;
            socklen_t l = sizeof(err);
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l);
            return map_sock_err(err ? err : ECONNRESET);
        }
    }
    return 0;
}

int file_to_socket(Vm& vm, BlockIo& io, PagePool& pool, SocketEngine& eng, const ParsedRequest& req,
                   const DescWriter& write, uint64_t* moved) {
    DiskImage* disk = vm.disk(req.src_file.vdev);
    if (!disk) return -EPERM;
    Shadow dst(eng, vm.shadow_counters());
    EndpointResult res;
    int status = dst.open(req.dst_tcp, req.dst_room, false);
    if (status < 0) {
        spdlog::warn("vm {}: shadow socket for request {:#x}: {}", vm.name(), req.id, std::strerror(-status));
        dst.abort();
        write_result(write, false, req.dst_tcp, res);
        return -EIO;
    }
    uint64_t sent = 0;
    {
        // Double-buffered: window k+1 is read from the image (this thread: BlockIo is not
        // thread-safe) while window k is being sent (a helper thread). With one buffer only
        // (pool short), strictly alternating.
        std::optional<PagePool::Buffer> bufs[2];
        bufs[0] = pool.get(std::chrono::milliseconds(100));
        if (bufs[0] && req.length > bufs[0]->size()) bufs[1] = pool.get(std::chrono::milliseconds(0));
        if (!bufs[0]) status = -ENOSPC;
        struct Sending {
            std::future<int> done;
            uint64_t n = 0, counted = 0;
        };
        std::optional<Sending> inflight;
        auto finish_send = [&] {
            if (!inflight) return 0;
            int r = inflight->done.get();
            sent += inflight->counted;
            vm.count(req.op, inflight->counted);  // its credit was reserved before it was sent
            inflight.reset();
            return r;
        };
        uint64_t read_pos = 0;
        unsigned k = 0;
        while (bufs[0] && read_pos < req.length && status == 0) {
            PagePool::Buffer& b = bufs[1] ? *bufs[k % 2] : *bufs[0];
            if (!bufs[1] && (status = finish_send()) != 0) break;  // one buffer: wait first
            const uint64_t n = std::min<uint64_t>(b.size(), req.length - read_pos);
            const std::vector<Extent> w = slice_extents(req.src_file.extents, read_pos, n);
            int rr = io.read(*disk, w, b.data());
            int sr = finish_send();  // window k-1 (two buffers: it was sent while we read)
            if (rr != 0 || sr != 0) {
                status = sr != 0 ? sr : rr;
                break;
            }
            vm.reserve(n);  // credit before the bytes move, not after
            inflight.emplace();
            inflight->n = n;
            uint8_t* data = b.data();
            const int fd = dst.fd();
            uint64_t* counted = &inflight->counted;
            const int cancel = vm.cancel_fd();
            inflight->done = std::async(std::launch::async, [fd, data, n, counted, cancel] {
                return send_all_counted(fd, data, n, counted, cancel);
            });
            read_pos += n;
            ++k;
        }
        if (int r = finish_send(); status == 0) status = r;
    }
    if (status == 0) status = settle(dst.fd(), req.dst_room, vm.cancel_fd());
    const uint64_t acked = dst.bytes_acked();
    uint64_t dropped = 0;
    int r = finish_endpoint(dst, req.dst_room, true, &res, &dropped);
    if (r < 0 && (status == 0 || status == -ETIMEDOUT)) status = r == -EIO ? -EIO : -ECONNRESET;
    *moved = (res.flags & VPIPE_EPF_VALID) ? sent - dropped : std::min(acked, sent);
    if (write_result(write, false, req.dst_tcp, res) < 0 && status == 0) status = -EIO;
    return status;
}

int socket_to_file(Vm& vm, BlockIo& io, PagePool& pool, SocketEngine& eng, const ParsedRequest& req,
                   const DescWriter& write, uint64_t* moved) {
    DiskImage* disk = vm.disk(req.dst_file.vdev);
    if (!disk) return -EPERM;
    Shadow src(eng, vm.shadow_counters());
    EndpointResult res;
    int status = src.open(req.src_tcp, req.src_room, false);
    if (status < 0) {
        spdlog::warn("vm {}: shadow socket for request {:#x}: {}", vm.name(), req.id, std::strerror(-status));
        src.abort();
        write_result(write, true, req.src_tcp, res);
        return -EIO;
    }
    uint64_t pos = 0;
    bool eof = false;
    {
        std::optional<PagePool::Buffer> buf = pool.get(std::chrono::milliseconds(100));
        if (!buf) status = -ENOSPC;
        while (buf && pos < req.length && status == 0 && !eof) {
            const uint64_t want = std::min<uint64_t>(buf->size(), req.length - pos);
            uint64_t got = 0;
            while (got < want) {
                ssize_t n = recv_some(src.fd(), buf->data() + got, want - got, vm.cancel_fd());
                if (n == 0) {
                    eof = true;
                    break;
                }
                if (n < 0) {
                    status = static_cast<int>(n);
                    break;
                }
                got += static_cast<uint64_t>(n);
            }
            if (got == 0) break;
            const std::vector<Extent> w = slice_extents(req.dst_file.extents, pos, got);
            if (int wr = io.write(*disk, w, buf->data()); wr != 0) {
                // these bytes were taken from the connection but could not be stored
                spdlog::error("vm {}: socket->file: {} received bytes lost to a write error", vm.name(), got);
                if (status == 0) status = wr;
                break;
            }
            pos += got;
            vm.charge(req.op, got);
        }
    }
    if (pos > 0) {
        if (int fr = io.flush(*disk); fr != 0) {
            pos = 0;
            if (status == 0) status = fr;
        }
    }
    uint64_t dropped = 0;
    int r = finish_endpoint(src, req.src_room, false, &res, &dropped);
    if (r < 0 && status == 0) status = r == -EIO ? -EIO : -ECONNRESET;
    *moved = pos;
    if (write_result(write, true, req.src_tcp, res) < 0 && status == 0) status = -EIO;
    return status;
}

int socket_to_socket(Vm& vm, PagePool& pool, SocketEngine& eng, const ParsedRequest& req,
                     const DescWriter& write, uint64_t* moved) {
    Shadow src(eng, vm.shadow_counters()), dst(eng, vm.shadow_counters());
    EndpointResult sres, dres;
    int status = src.open(req.src_tcp, req.src_room, false);
    if (status < 0) {
        spdlog::warn("vm {}: shadow socket for request {:#x}: {}", vm.name(), req.id, std::strerror(-status));
        src.abort();
        write_result(write, true, req.src_tcp, sres);
        write_result(write, false, req.dst_tcp, dres);
        return -EIO;
    }
    if ((status = dst.open(req.dst_tcp, req.dst_room, true)) < 0) {
        // the source is live in dom0 already (it may have acknowledged bytes): hand it back
        spdlog::warn("vm {}: shadow socket for request {:#x}: {}", vm.name(), req.id, std::strerror(-status));
        dst.abort();
        status = -EIO;
    }
    uint64_t fwd = 0;
    if (status == 0) {
        std::optional<PagePool::Buffer> buf = pool.get(std::chrono::milliseconds(100));
        if (!buf) status = -ENOSPC;
        const size_t piece = buf ? std::min<size_t>(buf->size(), 256 << 10) : 0;
        while (buf && fwd < req.length && status == 0) {
            ssize_t n = recv_some(src.fd(), buf->data(), std::min<uint64_t>(piece, req.length - fwd), vm.cancel_fd());
            if (n == 0) break;
            if (n < 0) {
                status = static_cast<int>(n);
                break;
            }
            uint64_t done = 0;
            status = send_all_counted(dst.fd(), buf->data(), static_cast<size_t>(n), &done, vm.cancel_fd());
            fwd += done;
            vm.charge(req.op, done);
            if (done < static_cast<uint64_t>(n)) {
                spdlog::error("vm {}: socket->socket: {} bytes taken from the source could not be sent",
                              vm.name(), static_cast<uint64_t>(n) - done);
                break;
            }
        }
    }
    if (status == 0) status = settle(dst.fd(), req.dst_room, vm.cancel_fd());
    uint64_t dropped = 0;
    int r1 = finish_endpoint(src, req.src_room, false, &sres, &dropped);
    int r2 = finish_endpoint(dst, req.dst_room, false, &dres, &dropped);
    if (status == 0) status = r1 < 0 ? r1 : r2;
    if (status == -ENOTCONN) status = -ECONNRESET;
    *moved = fwd;
    int w1 = write_result(write, true, req.src_tcp, sres);
    int w2 = write_result(write, false, req.dst_tcp, dres);
    if ((w1 < 0 || w2 < 0) && status == 0) status = -EIO;
    return status;
}

}  // namespace

int execute_socket_request(Vm& vm, BlockIo& io, PagePool& pool, SocketEngine* eng,
                           const ParsedRequest& req, const DescWriter& write, uint64_t* moved) {
    *moved = 0;
    if (!eng) {
        EndpointResult none;
        if (req.op != VPIPE_OP_FILE_TO_SOCKET) write_result(write, true, req.src_tcp, none);
        if (req.op != VPIPE_OP_SOCKET_TO_FILE) write_result(write, false, req.dst_tcp, none);
        return -EOPNOTSUPP;
    }
    try {
        switch (req.op) {
        case VPIPE_OP_FILE_TO_SOCKET: return file_to_socket(vm, io, pool, *eng, req, write, moved);
        case VPIPE_OP_SOCKET_TO_FILE: return socket_to_file(vm, io, pool, *eng, req, write, moved);
        case VPIPE_OP_SOCKET_TO_SOCKET: return socket_to_socket(vm, pool, *eng, req, write, moved);
        default: return -EINVAL;
        }
    } catch (const std::exception& e) {
        spdlog::error("vm {}: socket request {:#x}: {}", vm.name(), req.id, e.what());
        return -EIO;
    }
}

}  // namespace vpipe::engine
