#include "socket_ops.h"

#include <fcntl.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/sendfile.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <thread>
#include <utility>

#include <spdlog/spdlog.h>

#include "buffer_ring.h"
#include "io/splice_read.h"
#include "util/unique_fd.h"
#include "prepared_watermark.h"

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
// socket -> file: buffers received ahead of the image writes; file -> socket from O_DIRECT
// reads: windows read ahead of the sends. 8 x the pool's 1 MiB: a few ms of a fast link, the
// depth at which this host's direct I/O stops getting faster.
constexpr uint64_t kReceiveAheadBuffers = 8;
constexpr uint64_t kReadAheadBuffers = 8;

// Pool buffers for an operation of `length` bytes: one (waiting up to 100 ms), then as many more
// as the pool has right now, up to `most` and the windows the operation needs (never waiting
// for depth: other operations need buffers too). Empty if the pool had none.
std::vector<PagePool::Buffer> take_buffers(PagePool& pool, uint64_t length, uint64_t most) {
    std::vector<PagePool::Buffer> bufs;
    if (auto b = pool.get(std::chrono::milliseconds(100))) bufs.push_back(std::move(*b));
    const uint64_t windows = (length + pool.buffer_bytes() - 1) / pool.buffer_bytes();
    while (!bufs.empty() && bufs.size() < std::min(most, std::max<uint64_t>(windows, 1))) {
        auto b = pool.try_get();
        if (!b) break;
        bufs.push_back(std::move(*b));
    }
    return bufs;
}

int map_sock_err(int e) {
    switch (e) {
    case ECONNRESET:
    case EPIPE:
    case ENOTCONN: return -ECONNRESET;
    case ETIMEDOUT: return -ETIMEDOUT;
    default: return -EIO;
    }
}

// Waits for `events` on `fd` for up to `ms` (default: the socket timeout), unless the VM is
// being torn down (`cancel_fd`, Vm::cancel_fd(), readable; -1: never).
// 1 ready (*revents), 0 timeout, -ECANCELED.
int wait_fd(int fd, short events, int cancel_fd, short* revents, int ms = -2) {
    pollfd p[2] = {{fd, events, 0}, {cancel_fd, POLLIN, 0}};
    if (ms == -2) ms = static_cast<int>(socket_timeout().count());
    int pr = ::poll(p, 2, ms);
    if (pr < 0) return errno == EINTR ? 1 : -EIO;
    if (p[1].revents) return -ECANCELED;
    *revents = p[0].revents;
    return pr;
}

int sock_error(int fd) {
    int err = 0;
    socklen_t l = sizeof(err);
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l);
    return map_sock_err(err ? err : ECONNRESET);
}

// Receives exactly `want` bytes into buf unless the stream ends (*eof), fails, or `stop_fd`
// (an eventfd) is signalled. *got: bytes received. 0, or -status.
int recv_window(int fd, uint8_t* buf, uint64_t want, int cancel_fd, int stop_fd, uint64_t* got, bool* eof) {
    while (*got < want) {
        ssize_t r = ::recv(fd, buf + *got, want - *got, MSG_DONTWAIT);
        if (r > 0) {
            *got += static_cast<uint64_t>(r);
            continue;
        }
        if (r == 0) {
            *eof = true;
            return 0;
        }
        if (errno == EINTR) continue;
        if (errno != EAGAIN) return map_sock_err(errno);
        pollfd p[3] = {{fd, POLLIN, 0}, {cancel_fd, POLLIN, 0}, {stop_fd, POLLIN, 0}};
        int pr = ::poll(p, 3, static_cast<int>(socket_timeout().count()));
        if (pr < 0 && errno != EINTR) return -EIO;
        if (pr == 0) return -ETIMEDOUT;
        if (p[1].revents) return -ECANCELED;
        if (p[2].revents) return -ECANCELED;
    }
    return 0;
}

// Writes n bytes to a destination shadow with `put(pos, max)` (send() or sendfile(): > 0 bytes
// written, 0 if the source ended, -1 and errno) without letting its send queue (acknowledged
// bytes leave it) hold more than `limit` bytes, so that what is handed back always fits the
// room. *done grows by every byte the socket accepted, also when it fails midway (moved and the
// carried tail are computed from it).
template <class Put>
int put_limited(int fd, uint64_t n, uint32_t limit, uint64_t* done, int cancel_fd, Put put) {
    uint64_t pos = 0;
    // A peer that acknowledges nothing keeps the queue at the limit while the socket stays
    // writable (its buffer is larger than the limit): the wait below then returns at once, so
    // the socket timeout is enforced here, from the last time the queue moved.
    auto last_progress = std::chrono::steady_clock::now();
    int last_outq = -1;
    while (pos < n) {
        int outq = 0;
        if (ioctl(fd, SIOCOUTQ, &outq) < 0) return -EIO;
        if (outq != last_outq) {
            last_outq = outq;
            last_progress = std::chrono::steady_clock::now();
        } else if (std::chrono::steady_clock::now() - last_progress > socket_timeout()) {
            return -ETIMEDOUT;
        }
        const uint64_t allow = limit > static_cast<uint32_t>(outq) ? limit - static_cast<uint32_t>(outq) : 0;
        if (allow > 0) {
            ssize_t w = put(pos, std::min<uint64_t>(n - pos, allow));
            if (w > 0) {
                pos += static_cast<uint64_t>(w);
                *done += static_cast<uint64_t>(w);
                last_progress = std::chrono::steady_clock::now();
                continue;
            }
            if (w == 0) return -EIO;  // sendfile: the image ended before the extent (never for a valid one)
            if (errno == EINTR) continue;
            if (errno != EAGAIN) return map_sock_err(errno);  // a socket error, else -EIO
        }
        // the send buffer is sized to the limit: writable again once acknowledgements freed it
        short revents = 0;
        int pr = wait_fd(fd, POLLOUT, cancel_fd, &revents);
        if (pr == 0) return -ETIMEDOUT;
        if (pr < 0) return pr;
        if (revents & (POLLERR | POLLHUP) && !(revents & POLLOUT)) return sock_error(fd);
        if (allow > 0 || !(revents & POLLOUT)) continue;
        // writable, yet over the limit (truesize accounting lags): give the ACKs a moment
        pr = wait_fd(fd, POLLIN | POLLPRI, cancel_fd, &revents, 1);
        if (pr < 0) return pr;
    }
    return 0;
}

int send_limited(int fd, const uint8_t* buf, size_t n, uint32_t limit, uint64_t* done, int cancel_fd) {
    return put_limited(fd, n, limit, done, cancel_fd, [&](uint64_t pos, uint64_t max) {
        return ::send(fd, buf + pos, max, MSG_NOSIGNAL | MSG_DONTWAIT);
    });
}

// The bytes of a file at `off`: sendfile(), zero-copy out of dom0's page cache. The socket must
// be non-blocking.
int sendfile_limited(int fd, int file, uint64_t off, uint64_t n, uint32_t limit, uint64_t* done, int cancel_fd) {
    return put_limited(fd, n, limit, done, cancel_fd, [&](uint64_t pos, uint64_t max) {
        off_t o = static_cast<off_t>(off + pos);
        return ::sendfile(fd, file, &o, max);
    });
}

// Moves up to `max` bytes from a pipe into a destination shadow with splice(), without letting
// its send queue hold more than `limit` bytes (see put_limited). Returns the bytes moved (> 0),
// 0 when nothing could move (*at_limit: the queue is at the limit, so only acknowledgements
// help: callers pace at 1 ms because a socket at the limit may already be writable, its
// truesize accounting lagging the bytes; else the socket buffer is full: wait for POLLOUT), or
// a negative errno (map_sock_err). When the limit cuts `max`, the rest follows: SPLICE_F_MORE.
ssize_t splice_to_limit(int pipe_r, int dst, uint64_t max, uint32_t limit, bool* at_limit) {
    int outq = 0;
    if (ioctl(dst, SIOCOUTQ, &outq) < 0) return -EIO;
    const uint64_t allow = limit > static_cast<uint32_t>(outq) ? limit - static_cast<uint32_t>(outq) : 0;
    *at_limit = allow == 0;
    if (allow == 0 || max == 0) return 0;
    const uint64_t n = std::min(max, allow);
    for (;;) {
        ssize_t m = ::splice(pipe_r, nullptr, dst, nullptr, n,
                             SPLICE_F_MOVE | SPLICE_F_NONBLOCK | (max > n ? SPLICE_F_MORE : 0));
        if (m >= 0) return m;
        if (errno == EINTR) continue;
        return errno == EAGAIN ? 0 : map_sock_err(errno);
    }
}

// After the last byte is queued: waits (on an event, not by polling the queue) until the
// destination has transmitted everything, so that the guest does not have to: POLLOUT with
// TCP_NOTSENT_LOWAT = 1 means "nothing left unsent". Gives up after `ms` (a peer with a
// closed window): what is unsent then goes back to the guest, which sends it itself.
void drain_unsent(int fd, int cancel_fd, int ms) {
    int unsent = 0;
    if (ioctl(fd, SIOCOUTQNSD, &unsent) < 0 || unsent == 0) return;
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &one, sizeof(one)) < 0) return;
    const auto deadline = Clock::now() + std::chrono::milliseconds(ms);
    while (ioctl(fd, SIOCOUTQNSD, &unsent) == 0 && unsent > 0) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
        if (left <= 0) return;
        short revents = 0;
        if (wait_fd(fd, POLLOUT, cancel_fd, &revents, static_cast<int>(left)) <= 0) return;
        if (revents & (POLLERR | POLLHUP)) return;
    }
}

struct EndpointResult {
    uint32_t flags = 0;
    vpipe_tcp_state st{};
    std::vector<uint8_t> sndq, rcvq;
};

// Writes one socket endpoint's result into the guest's area.
// `moved`: the operation's, recorded with a VALID state (VPIPE_EP_RESULT_MOVED) for a guest whose
// response never comes. The flags go last: until they are written the guest sees TAKEN.
int write_result(const DescWriter& write, bool source, const SocketEndpoint& ep, EndpointResult& res,
                 uint64_t moved = 0) {
    const size_t ep_off = source ? offsetof(vpipe_desc_header, src) : offsetof(vpipe_desc_header, dst);
    if (res.flags & VPIPE_EPF_VALID) {
        if (write(ep_off + offsetof(vpipe_endpoint, prepared), &moved, sizeof(moved)) < 0) return -EIO;
        res.st.carry_offset = ep.tcp.carry_offset;
        res.st.sndq_len = static_cast<uint32_t>(res.sndq.size());
        res.st.rcvq_len = static_cast<uint32_t>(res.rcvq.size());
        res.st.reserved0 = 0;
        uint64_t off = ep.tcp.carry_offset;
        if (!res.sndq.empty() && write(off, res.sndq.data(), res.sndq.size()) < 0) return -EIO;
        off += res.sndq.size();
        if (!res.rcvq.empty() && write(off, res.rcvq.data(), res.rcvq.size()) < 0) return -EIO;
        if (write(ep_off + offsetof(vpipe_endpoint, tcp), &res.st, sizeof(res.st)) < 0) return -EIO;
    }
    const uint32_t tail0 = 0;
    if (write(ep_off + offsetof(vpipe_endpoint, tail_len), &tail0, sizeof(tail0)) < 0) return -EIO;
    uint32_t flags = res.flags;
    return write(ep_off + offsetof(vpipe_endpoint, result_flags), &flags, sizeof(flags));
}

// Hands the shadow back. The buffers were sized for the room, so the queues fit; if they do
// not (a peer that sent beyond the window it was given), bytes dom0 acknowledged could not be
// handed back: the connection is reported dead rather than silently losing them.
//
// A request whose guest channel went away meanwhile (the agent killed mid-operation: `write`
// answers -ESHUTDOWN) has nobody to hand the connection back to: frozen and closed silently, it
// would leave the peer waiting for ever. It is reset instead (the peer reads an exact prefix,
// then ECONNRESET).
//
// `unread`: bytes dom0 took out of this (source) connection and did not deliver; they go back
// at the head of its carried receive queue, where they were (the restored socket's queue starts
// at rcv_nxt minus the queue's length), so the application reads them next.
int finish_endpoint(Shadow& sh, uint32_t room, EndpointResult* res, const DescWriter& write,
                    const std::vector<uint8_t>& unread = {}) {
    if (!sh.open_now()) return 0;  // flags 0: the guest restores what it froze
    if (write(0, nullptr, 0) == -ESHUTDOWN) {
        spdlog::warn("request's guest channel is gone: connection reset, not handed back");
        sh.reset_peer();
        res->flags = VPIPE_EPF_RESET;
        return -ECONNRESET;
    }
    int r = sh.hand_back(&res->st, &res->sndq, &res->rcvq, &res->flags);
    if (r < 0) return r;
    if (!unread.empty() && (res->flags & VPIPE_EPF_VALID))
        res->rcvq.insert(res->rcvq.begin(), unread.begin(), unread.end());
    if (res->sndq.size() + res->rcvq.size() <= room) return 0;
    spdlog::error("carry overflow: {} + {} queued bytes > room {}; connection lost", res->sndq.size(),
                  res->rcvq.size(), room);
    res->flags = VPIPE_EPF_RESET;
    return -EIO;
}

// How long a destination may take to transmit what is queued before it is handed back with
// the rest unsent (the guest then sends it).
int drain_ms() { return static_cast<int>(std::min<int64_t>(socket_timeout().count(), 2000)); }

// Opens a shadow for one endpoint of the request; on failure it is aborted (flags 0 go back:
// the guest restores the connection it froze).
int open_shadow(Vm& vm, const ParsedRequest& req, Shadow& sh, const SocketEndpoint& ep, Shadow::Role role,
                const DescWriter& write) {
    // Tell the guest, before the connection can move, that its frozen state goes stale from
    // here (VPIPE_EPF_TAKEN): if this process dies before it answers, the guest must not
    // restore it. Every answer (write_result) overwrites the word with the final flags.
    const size_t ep_off = role == Shadow::Role::kSource ? offsetof(vpipe_desc_header, src)
                                                        : offsetof(vpipe_desc_header, dst);
    const uint32_t taken = VPIPE_EPF_TAKEN;
    if (write(ep_off + offsetof(vpipe_endpoint, result_flags), &taken, sizeof(taken)) < 0) return -EIO;
    int r = sh.open(ep.tcp, ep.sndq, ep.rcvq, ep.room, ep.tail_len, role);
    if (r < 0) {
        spdlog::warn("vm {}: shadow socket for request {:#x}: {}", vm.name(), req.id, std::strerror(-r));
        sh.abort();
    }
    return r;
}

// Opens the one shadow of a file <-> socket request (`source`: its source endpoint); on failure
// answers that endpoint with flags 0 (the guest restores what it froze).
bool open_single(Vm& vm, const ParsedRequest& req, Shadow& sh, bool source, const DescWriter& write) {
    const SocketEndpoint& ep = source ? req.src_sock : req.dst_sock;
    if (open_shadow(vm, req, sh, ep, source ? Shadow::Role::kSource : Shadow::Role::kDestination, write) == 0)
        return true;
    EndpointResult none;
    write_result(write, source, ep, none);
    return false;
}

// Sends the destination's tail once the data is out; sets VPIPE_EPF_TAIL_SENT on success.
int send_tail(Vm& vm, Shadow& dst, const SocketEndpoint& ep, bool* tail_sent) {
    *tail_sent = false;
    if (ep.tail.empty()) return 0;
    uint64_t done = 0;
    int r = send_limited(dst.fd(), ep.tail.data(), ep.tail.size(), dst.snd_limit(), &done, vm.cancel_fd());
    if (r == 0) *tail_sent = true;
    return r;
}

// file -> socket through dom0's page cache (a disk opened with host_cache): the image's
// extents go to the shadow socket with sendfile(), as a native dom0 sendfile from the image
// would, one credit window at a time.
int send_from_page_cache(Vm& vm, DiskImage& disk, Shadow& dst, const ParsedRequest& req, size_t window,
                         uint64_t* sent) {
    static const std::vector<uint8_t> zeros(64 << 10);
    const int fd = dst.fd();
    const int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) return -EIO;
    // Readahead one window ahead: the image's own readahead window (128 KiB by default) would
    // leave a cold read at a fraction of what 1 MiB direct reads two at a time get.
    auto prefetch = [&](uint64_t from) {
        if (from >= req.length) return;
        for (const Extent& e : slice_extents(req.src_file.extents, from, std::min<uint64_t>(window, req.length - from)))
            if (!e.zero)
                posix_fadvise(disk.cached_fd(), static_cast<off_t>(e.disk_offset), static_cast<off_t>(e.length),
                              POSIX_FADV_WILLNEED);
    };
    uint64_t pos = 0;
    int status = 0;
    prefetch(0);
    while (pos < req.length && status == 0) {
        const uint64_t n = std::min<uint64_t>(window, req.length - pos);
        prefetch(pos + n);
        vm.reserve(req.op, n);  // credit before the bytes move, not after
        uint64_t counted = 0;
        for (const Extent& e : slice_extents(req.src_file.extents, pos, n)) {
            if (e.zero) {
                for (uint64_t z = 0; z < e.length && status == 0;) {
                    const uint64_t k = std::min<uint64_t>(zeros.size(), e.length - z);
                    const uint64_t c0 = counted;
                    status = send_limited(fd, zeros.data(), k, dst.snd_limit(), &counted, vm.cancel_fd());
                    z += counted - c0;
                }
            } else {
                if (e.disk_offset + e.length > disk.size()) status = -EIO;  // checked at parse: belt and braces
                if (status == 0)
                    status = sendfile_limited(fd, disk.cached_fd(), e.disk_offset, e.length, dst.snd_limit(),
                                              &counted, vm.cancel_fd());
            }
            if (status != 0) break;
        }
        *sent += counted;
        disk.bytes_read += counted;
        disk.read_ops++;
        vm.count(req.op, counted);
        pos += n;
    }
    fcntl(fd, F_SETFL, flags);
    return status;
}

// VPIPE_ENGINE_NO_SPLICE=1 in the engine's environment keeps file -> socket on the buffered
// read-ahead path (a diagnostic, and how the tests keep that path covered on kernels that splice)
bool splice_reads_enabled() {
    static const bool on = [] {
        const char* e = std::getenv("VPIPE_ENGINE_NO_SPLICE");
        return !e || !*e || std::strcmp(e, "0") == 0;
    }();
    return on;
}

// file -> socket by splice (io/splice_read.h): a thread reads the extents into a pipe with
// O_DIRECT splices (the pipe's 1 MiB is the read-ahead), this one moves the pipe's pages to the
// shadow socket with splice(), one credit window at a time and within the destination's send
// limit. No byte is copied in dom0.
int send_spliced(Vm& vm, DiskImage& disk, Shadow& dst, const ParsedRequest& req, size_t window, uint64_t* sent) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) < 0) return -EIO;
    UniqueFd pr(p[0]), pw(p[1]);
    (void)fcntl(pw.get(), F_SETPIPE_SZ, 1 << 20);  // best effort: pipe-max-size may be lower
    const int fd = dst.fd(), cancel = vm.cancel_fd();
    const int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) return -EIO;
    std::atomic<bool> stop{false};
    int rstatus = 0;
    uint64_t rdone = 0;
    std::thread reader([&] {
        rstatus = splice_extents(disk, req.src_file.extents, pw.get(), stop, &rdone);
        pw.reset();  // the sender reads EOF after the last byte
    });
    const uint32_t limit = dst.snd_limit();
    uint64_t pos = 0;
    int status = 0;
    auto last_progress = Clock::now();
    while (pos < req.length && status == 0) {
        const uint64_t n = std::min<uint64_t>(window, req.length - pos);
        vm.reserve(req.op, n);  // credit before the bytes move, not after
        uint64_t done = 0;
        while (done < n && status == 0) {
            int inpipe = 0;
            if (ioctl(pr.get(), FIONREAD, &inpipe) < 0) {
                status = -EIO;
                break;
            }
            bool at_limit = false;
            if (inpipe > 0) {
                const uint64_t want = std::min<uint64_t>(n - done, static_cast<uint64_t>(inpipe));
                ssize_t m = splice_to_limit(pr.get(), fd, want, limit, &at_limit);
                if (m > 0) {
                    done += static_cast<uint64_t>(m);
                    last_progress = Clock::now();
                    continue;
                }
                if (m < 0) {
                    status = static_cast<int>(m);
                    break;
                }
            }
            if (Clock::now() - last_progress > socket_timeout()) {
                status = -ETIMEDOUT;
                break;
            }
            // Wait for what is missing: bytes in the pipe (the reader is at the disk), or room
            // in the socket. At the limit the socket may be writable already (its truesize
            // accounting lags the bytes): then the ACKs get a millisecond.
            pollfd w[2] = {{inpipe > 0 ? fd : pr.get(), 0, 0}, {cancel, POLLIN, 0}};
            w[0].events = inpipe > 0 ? (at_limit ? 0 : POLLOUT) : POLLIN;
            const int pr_ = ::poll(w, 2, inpipe > 0 && at_limit ? 1 : 100);
            if (pr_ < 0 && errno != EINTR) status = -EIO;
            else if (w[1].revents) status = -ECANCELED;
            else if (inpipe == 0 && (w[0].revents & POLLHUP) && !(w[0].revents & POLLIN))
                status = -EPIPE;  // the reader ended before this window: its status says why
            else if (inpipe > 0 && (w[0].revents & (POLLERR | POLLHUP)) && !(w[0].revents & POLLOUT))
                status = sock_error(fd);
        }
        *sent += done;
        vm.count(req.op, done);
        pos += done;
    }
    stop = true;
    pr.reset();  // a reader blocked on a full pipe gets EPIPE
    reader.join();
    fcntl(fd, F_SETFL, flags);
    if (status == -EPIPE) status = rstatus != 0 && rstatus != -ECANCELED ? rstatus : -EIO;
    return status;
}

int file_to_socket(Vm& vm, BlockIo& io, PagePool& pool, ShadowSockets& sockets, const ParsedRequest& req,
                   const DescWriter& write, uint64_t* moved) {
    DiskImage* disk = vm.disk(req.src_file.vdev);
    if (!disk) return -EPERM;
    Shadow dst(sockets, vm.shadow_counters());
    if (!open_single(vm, req, dst, false, write)) return -EIO;
    EndpointResult res;
    const uint64_t before = req.dst_sock.sndq.size();  // the stream before the data on the wire
    uint64_t sent = 0;
    int status = 0;
    if (disk->cached_fd() >= 0) {
        status = send_from_page_cache(vm, *disk, dst, req, pool.buffer_bytes(), &sent);
    } else if (req.length > pool.buffer_bytes() && splice_reads_enabled() && splice_read_supported(*disk)) {
        status = send_spliced(vm, *disk, dst, req, pool.buffer_bytes(), &sent);
    } else {
        // Read ahead: this thread reads every free window of the ring at once (BlockIo is not
        // thread-safe: only this thread reads) while a helper thread sends the filled ones in
        // order (buffer_ring.h). Up to kReadAheadBuffers windows; fewer if the pool is short.
        std::vector<PagePool::Buffer> bufs = take_buffers(pool, req.length, kReadAheadBuffers);
        if (bufs.empty()) status = -ENOSPC;
        std::vector<uint8_t*> data;
        for (auto& b : bufs) data.push_back(b.data());
        const uint64_t per = pool.buffer_bytes();
        const int fd = dst.fd(), cancel = vm.cancel_fd();
        const uint32_t limit = dst.snd_limit();
        if (status == 0 && req.length <= per) {
            // the whole operation in one window (small ones: the hand-over's latency counts):
            // no helper thread
            const std::vector<Extent> w = slice_extents(req.src_file.extents, 0, req.length);
            status = io.read(*disk, w, data[0]);
            if (status == 0) {
                vm.reserve(req.op, req.length);
                status = send_limited(fd, data[0], req.length, limit, &sent, cancel);
                vm.count(req.op, sent);
            }
            data.clear();  // (nothing for the read-ahead below)
        }
        SendBehind sender(data, [fd, limit, cancel](const uint8_t* buf, uint64_t n, uint64_t* done) {
            return send_limited(fd, buf, n, limit, done, cancel);
        });
        if (status == 0 && !data.empty()) status = sender.start();
        std::vector<std::vector<Extent>> slices;  // (jobs' spans point into these)
        slices.reserve(data.size());
        std::vector<BlockIo::ReadJob> jobs;
        for (uint64_t read_pos = 0; status == 0 && !data.empty() && read_pos < req.length;) {
            // every free buffer, waiting only for the first
            jobs.clear();
            slices.clear();
            for (uint64_t at = read_pos; at < req.length && jobs.size() < data.size();) {
                uint8_t* b = sender.acquire(jobs.empty());
                if (!b) break;
                const uint64_t n = std::min<uint64_t>(per, req.length - at);
                slices.push_back(slice_extents(req.src_file.extents, at, n));
                jobs.push_back({slices.back(), b});
                at += n;
            }
            if (jobs.empty()) break;  // the sender failed: its status says why
            if (int rr = io.read_many(*disk, jobs); rr != 0) {
                status = rr;
                break;
            }
            for (const auto& j : jobs) {
                const uint64_t n = total_length(j.ext);
                vm.reserve(req.op, n);  // credit before the bytes move, not after
                sender.publish(n);
                read_pos += n;
            }
        }
        if (!data.empty()) {
            const int sr = sender.finish();
            if (status == 0) status = sr;
            sent = sender.sent();
            vm.count(req.op, sent);  // their credit was reserved before they were sent
        }
    }
    bool tail_sent = false;
    if (status == 0 && sent == req.length) status = send_tail(vm, dst, req.dst_sock, &tail_sent);
    if (status == 0) drain_unsent(dst.fd(), vm.cancel_fd(), drain_ms());
    const uint64_t acked = dst.bytes_acked();
    int r = finish_endpoint(dst, req.dst_sock.room, &res, write);
    if (r < 0 && (status == 0 || status == -ETIMEDOUT)) status = r == -EIO ? -EIO : -ECONNRESET;
    // Handed back: every byte written is either acknowledged or in the carried send queue.
    // Lost: only what the peer acknowledged counts.
    *moved = (res.flags & VPIPE_EPF_VALID) ? sent : std::min(acked > before ? acked - before : 0, sent);
    if (tail_sent && (res.flags & VPIPE_EPF_VALID)) res.flags |= VPIPE_EPF_TAIL_SENT;
    if (write_result(write, false, req.dst_sock, res, *moved) < 0 && status == 0) status = -EIO;
    return status;
}

int socket_to_file(Vm& vm, BlockIo& io, PagePool& pool, ShadowSockets& sockets, const ParsedRequest& req,
                   const DescWriter& write, uint64_t* moved, const DescWordReader& read_word,
                   const WriteGate& may_write) {
    DiskImage* disk = vm.disk(req.dst_file.vdev);
    if (!disk) return -EPERM;
    Shadow src(sockets, vm.shadow_counters());
    if (!open_single(vm, req, src, true, write)) return -EIO;
    EndpointResult res;
    uint64_t pos = 0;  // written to the image
    int status = 0;
    {
        // Pipelined: a receiving thread fills up to kReceiveAheadBuffers pool buffers ahead
        // (receive_ahead.h) while this thread writes the filled ones, all of them at once
        // (BlockIo is not thread-safe: only this thread writes).
        std::vector<PagePool::Buffer> bufs = take_buffers(pool, req.length, kReceiveAheadBuffers);
        if (bufs.empty()) status = -ENOSPC;
        const uint64_t per = pool.buffer_bytes();
        std::vector<uint8_t*> data;
        for (auto& b : bufs) data.push_back(b.data());
        const int fd = src.fd(), cancel = vm.cancel_fd();
        // A preparing request: receive only what lies below the guest's watermark (the rest
        // stays queued in the connection if the guest fails), as far as it reaches.
        std::optional<PreparedWatermark> watermark;
        if (req.preparing) {
            if (read_word)
                watermark.emplace(read_word, req.length);
            else
                status = -EOPNOTSUPP;
        }
        PreparedWatermark* wm = watermark ? &*watermark : nullptr;
        ReceiveAhead ahead(data, per, req.length,
                           [fd, cancel, wm, at = uint64_t{0}](uint8_t* buf, uint64_t want, int stop_fd, uint64_t* got,
                                                              bool* eof) mutable {
                               if (wm) {
                                   uint64_t ready = 0;
                                   if (int r = wm->wait_beyond(at, cancel, stop_fd, socket_timeout(), &ready)) return r;
                                   want = std::min(want, ready - at);
                               }
                               const int r = recv_window(fd, buf, want, cancel, stop_fd, got, eof);
                               at += *got;
                               return r;
                           });
        if (status == 0) status = ahead.start();
        std::vector<std::vector<Extent>> slices;
        std::vector<BlockIo::WriteJob> jobs;
        while (status == 0) {
            const std::vector<BufferRing::Slot> filled = ahead.take();
            if (filled.empty()) break;
            slices.clear();
            jobs.clear();
            uint64_t at = pos, bytes = 0;
            int rr = 0;
            bool eof = false;
            for (const auto& f : filled) {
                if (f.len > 0) {
                    slices.push_back(slice_extents(req.dst_file.extents, at, f.len));
                    at += f.len;
                    bytes += f.len;
                }
                if (f.status != 0 && rr == 0) rr = f.status;
                eof = eof || f.eof;
            }
            for (size_t i = 0, j = 0; i < filled.size(); ++i)
                if (filled[i].len > 0) jobs.push_back({slices[j++], filled[i].data});
            if (!jobs.empty()) {
                if (int g = may_write ? may_write() : 0; g != 0) {
                    // the guest gave the request up: not a byte more into its blocks
                    ahead.stop();
                    status = g;
                    break;
                }
                if (int wr = io.write_many(*disk, jobs); wr != 0) {
                    // these bytes were taken from the connection but could not be stored
                    ahead.stop();
                    spdlog::error("vm {}: socket->file: {} received bytes lost to a write error", vm.name(),
                                  ahead.received() - pos);
                    status = wr;
                    break;
                }
                pos = at;
                vm.charge(req.op, bytes);
            }
            ahead.release(filled.size());
            if (rr != 0) status = rr;
            if (eof || pos >= req.length) break;
        }
        ahead.stop();
        if (wm) {
            vm.counters().preparing++;
            vm.counters().prepare_waits += wm->waits();
        }
    }
    if (pos > 0) {
        if (int fr = io.flush(*disk); fr != 0) {
            pos = 0;
            if (status == 0) status = fr;
        }
    }
    int r = finish_endpoint(src, req.src_sock.room, &res, write);
    if (r < 0 && status == 0) status = r == -EIO ? -EIO : -ECONNRESET;
    *moved = pos;
    if (write_result(write, true, req.src_sock, res, *moved) < 0 && status == 0) status = -EIO;
    return status;
}

// The worker thread's pipe for splicing between two shadow sockets: one per engine thread (a pool
// bounded by the threads), made as large as the system allows, replaced after a failed operation
// (which may leave bytes in it).
class SplicePipe {
public:
    static constexpr int kWantBytes = 1 << 20;
    bool ok() {
        if (fds_[0] < 0) {
            if (pipe2(fds_, O_NONBLOCK | O_CLOEXEC) < 0) return false;
            int sz = fcntl(fds_[1], F_SETPIPE_SZ, kWantBytes);  // capped by /proc/sys/fs/pipe-max-size
            if (sz < 0) sz = fcntl(fds_[1], F_GETPIPE_SZ);
            cap_ = sz > 0 ? static_cast<size_t>(sz) : 65536;
        }
        return true;
    }
    int r() const { return fds_[0]; }
    int w() const { return fds_[1]; }
    size_t capacity() const { return cap_; }
    void discard() {
        for (int& f : fds_)
            if (f >= 0) ::close(std::exchange(f, -1));
    }
    ~SplicePipe() { discard(); }

private:
    int fds_[2] = {-1, -1};
    size_t cap_ = 0;
};

// Forwards up to `length` bytes from one shadow to the other with splice() through the thread's
// pipe: the payload pages move from the source's receive queue to the destination's send queue
// without a copy. The destination's send queue stays within `limit` (what fits the room).
// *fwd: bytes the destination accepted. Bytes spliced out of the source but not into the
// destination when the forwarding stops (cancelled by a clean engine stop, a timeout, a
// destination that failed) come back in *unread, in order, for the source's hand-back; only
// if the pipe cannot give them back are they lost (logged).
int splice_sockets(Vm& vm, int src, int dst, uint64_t length, uint32_t limit, uint64_t* fwd, const ParsedRequest& req,
                   std::vector<uint8_t>* unread) {
    thread_local SplicePipe pipe;
    if (!pipe.ok()) return -EIO;
    const int sflags = fcntl(src, F_GETFL), dflags = fcntl(dst, F_GETFL);
    if (sflags < 0 || dflags < 0 || fcntl(src, F_SETFL, sflags | O_NONBLOCK) < 0 ||
        fcntl(dst, F_SETFL, dflags | O_NONBLOCK) < 0)
        return -EIO;
    uint64_t inpipe = 0;
    bool eof = false;
    int status = 0;
    auto last_progress = Clock::now();
    while (status == 0 && *fwd < length) {
        bool moved = false, src_dry = false;
        if (!eof && inpipe < pipe.capacity() && *fwd + inpipe < length) {
            const size_t want = std::min<uint64_t>(pipe.capacity() - inpipe, length - *fwd - inpipe);
            ssize_t n = ::splice(src, nullptr, pipe.w(), nullptr, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n > 0) {
                inpipe += static_cast<uint64_t>(n);
                moved = true;
            } else if (n == 0) {
                eof = true;
            } else if (errno == EAGAIN) {
                src_dry = true;
            } else if (errno != EINTR) {
                status = map_sock_err(errno);
                break;
            }
        }
        bool dst_full = false, at_limit = false;
        if (inpipe > 0) {
            ssize_t m = splice_to_limit(pipe.r(), dst, inpipe, limit, &at_limit);
            if (m > 0) {
                inpipe -= static_cast<uint64_t>(m);
                *fwd += static_cast<uint64_t>(m);
                vm.charge(req.op, static_cast<uint64_t>(m));
                moved = true;
            } else if (m < 0) {
                status = static_cast<int>(m);
                break;
            } else {
                dst_full = !at_limit;
            }
        }
        if (eof && inpipe == 0) break;
        if (moved) {
            last_progress = Clock::now();
            continue;
        }
        if (Clock::now() - last_progress > socket_timeout()) {
            status = -ETIMEDOUT;
            break;
        }
        // Nothing moved: wait for the source to have data (if the pipe has room) and/or the
        // destination to drain. At the limit the socket may be writable already (its truesize
        // accounting lags the bytes): then the ACKs get a millisecond.
        pollfd p[3] = {{src, 0, 0}, {dst, 0, 0}, {vm.cancel_fd(), POLLIN, 0}};
        if (src_dry && !eof) p[0].events = POLLIN;
        if (dst_full) p[1].events = POLLOUT;
        if (at_limit) p[1].events = 0;  // only errors wake us: the 1 ms timeout paces
        int pr = ::poll(p, 3, at_limit ? 1 : 100);
        if (pr < 0 && errno != EINTR) status = -EIO;
        else if (p[2].revents) status = -ECANCELED;
        else if ((p[1].revents & (POLLERR | POLLHUP)) && !(p[1].revents & POLLOUT)) status = sock_error(dst);
    }
    // Cancelled (a clean engine stop) with bytes in the pipe: the destination is healthy, only
    // slow; give it a little time (drain_ms()) to take them, taking nothing more from the source.
    const auto drain_end = Clock::now() + std::chrono::milliseconds(drain_ms());
    while (status == -ECANCELED && inpipe > 0 && Clock::now() < drain_end) {
        bool at_limit = false;
        ssize_t m = splice_to_limit(pipe.r(), dst, inpipe, limit, &at_limit);
        if (m > 0) {
            inpipe -= static_cast<uint64_t>(m);
            *fwd += static_cast<uint64_t>(m);
            vm.charge(req.op, static_cast<uint64_t>(m));
            continue;
        }
        if (m < 0) break;
        pollfd p{dst, static_cast<short>(at_limit ? 0 : POLLOUT), 0};  // at the limit: paced, 1 ms
        if (::poll(&p, 1, at_limit ? 1 : 10) < 0 && errno != EINTR) break;
        if ((p.revents & (POLLERR | POLLHUP)) && !(p.revents & POLLOUT)) break;
    }
    if (inpipe > 0) {
        // Before, these were discarded: a clean stop mid-relay (the far end slow, the pipe
        // full) lost up to a pipe's worth of the stream between what the destination had
        // sent and what the source handed back.
        unread->resize(inpipe);
        uint64_t got = 0;
        while (got < inpipe) {
            ssize_t k = ::read(pipe.r(), unread->data() + got, inpipe - got);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) break;
            got += static_cast<uint64_t>(k);
        }
        if (got < inpipe) {
            spdlog::error("vm {}: socket->socket: {} bytes taken from the source could not be sent", vm.name(),
                          inpipe);
            unread->clear();
            status = status ? status : -EIO;
        }
        pipe.discard();
    } else if (status != 0) {
        pipe.discard();
    }
    fcntl(src, F_SETFL, sflags);
    fcntl(dst, F_SETFL, dflags);
    return status;
}

int socket_to_socket(Vm& vm, PagePool& pool, ShadowSockets& sockets, const ParsedRequest& req,
                     const DescWriter& write, uint64_t* moved) {
    (void)pool;
    Shadow src(sockets, vm.shadow_counters()), dst(sockets, vm.shadow_counters());
    EndpointResult sres, dres;
    if (open_shadow(vm, req, src, req.src_sock, Shadow::Role::kSource, write) < 0) {
        write_result(write, true, req.src_sock, sres);
        write_result(write, false, req.dst_sock, dres);
        return -EIO;
    }
    int status = 0;
    // the source is live in dom0 already (it may have acknowledged bytes): it goes back below
    if (open_shadow(vm, req, dst, req.dst_sock, Shadow::Role::kDestination, write) < 0) status = -EIO;
    uint64_t fwd = 0;
    std::vector<uint8_t> unread;
    if (status == 0)
        status = splice_sockets(vm, src.fd(), dst.fd(), req.length, dst.snd_limit(), &fwd, req, &unread);
    bool tail_sent = false;
    if (status == 0 && fwd == req.length) status = send_tail(vm, dst, req.dst_sock, &tail_sent);
    if (status == 0) drain_unsent(dst.fd(), vm.cancel_fd(), drain_ms());
    int r1 = finish_endpoint(src, req.src_sock.room, &sres, write, unread);
    int r2 = finish_endpoint(dst, req.dst_sock.room, &dres, write);
    if (status == 0) status = r1 < 0 ? r1 : r2;
    if (status == -ENOTCONN) status = -ECONNRESET;
    *moved = fwd;
    if (tail_sent && (dres.flags & VPIPE_EPF_VALID)) dres.flags |= VPIPE_EPF_TAIL_SENT;
    int w1 = write_result(write, true, req.src_sock, sres, fwd);
    int w2 = write_result(write, false, req.dst_sock, dres, fwd);
    if ((w1 < 0 || w2 < 0) && status == 0) status = -EIO;
    return status;
}

}  // namespace

int execute_socket_request(Vm& vm, BlockIo& io, PagePool& pool, ShadowSockets* sockets,
                           const ParsedRequest& req, const DescWriter& write, uint64_t* moved,
                           const DescWordReader& read_word, const WriteGate& may_write) {
    *moved = 0;
    if (!sockets) {
        EndpointResult none;
        if (req.op != VPIPE_OP_FILE_TO_SOCKET) write_result(write, true, req.src_sock, none);
        if (req.op != VPIPE_OP_SOCKET_TO_FILE) write_result(write, false, req.dst_sock, none);
        return -EOPNOTSUPP;
    }
    try {
        switch (req.op) {
        case VPIPE_OP_FILE_TO_SOCKET: return file_to_socket(vm, io, pool, *sockets, req, write, moved);
        case VPIPE_OP_SOCKET_TO_FILE: return socket_to_file(vm, io, pool, *sockets, req, write, moved, read_word, may_write);
        case VPIPE_OP_SOCKET_TO_SOCKET: return socket_to_socket(vm, pool, *sockets, req, write, moved);
        default: return -EINVAL;
        }
    } catch (const std::exception& e) {
        spdlog::error("vm {}: socket request {:#x}: {}", vm.name(), req.id, e.what());
        return -EIO;
    }
}

}  // namespace vpipe::engine
