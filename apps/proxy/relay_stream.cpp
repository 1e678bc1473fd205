// A direction relayed as a plain byte stream: rw, splice through the pipe pool, or vPipe in
// --chunk pieces until a short count (chunk framing).
#include <fcntl.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "common/net.h"
#include "config.h"
#include "direction.h"
#include "pipe_pool.h"

namespace vpipe::proxy {

namespace {

std::string sys_error(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

void relay_rw(Direction* d) {
    std::vector<char> buf(256 * 1024);
    for (;;) {
        ssize_t n = ::recv(d->in, buf.data(), buf.size(), 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            d->error = sys_error("recv");
            return;
        }
        if (n == 0) return;
        if (apps::send_all(d->out, buf.data(), static_cast<size_t>(n)) < 0) {
            d->error = sys_error("send");
            return;
        }
        d->bytes += static_cast<uint64_t>(n);
    }
}

// What one splice put into pipe p, out to d->out. false on an error (the pipe is not reused).
bool drain_pipe(Direction* d, std::array<int, 2> p, size_t left) {
    while (left > 0) {
        ssize_t k = ::splice(p[0], nullptr, d->out, nullptr, left, SPLICE_F_MOVE);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            d->error = std::string("splice to socket: ") + std::strerror(k < 0 ? errno : EPIPE);
            g_pipes->release(p, false);
            return false;
        }
        left -= static_cast<size_t>(k);
        d->bytes += static_cast<uint64_t>(k);
    }
    g_pipes->release(p, true);
    return true;
}

void relay_splice(Direction* d) {
    for (;;) {
        // wait for data without holding a pipe
        if (apps::wait_readable(d->in, -1) < 0) {
            d->error = sys_error("poll");
            return;
        }
        auto p = g_pipes->acquire();
        if (p[0] < 0) {
            d->error = sys_error("pipe");
            return;
        }
        ssize_t n = ::splice(d->in, nullptr, p[1], nullptr, kPipeSize, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
            g_pipes->release(p, true);
            continue;
        }
        if (n <= 0) {
            if (n < 0) d->error = sys_error("splice from socket");
            g_pipes->release(p, true);
            return;
        }
        if (!drain_pipe(d, p, static_cast<size_t>(n))) return;
    }
}

// Chunk framing: a short count is the end of the stream.
void relay_vpipe(Direction* d) {
    auto call = [d](uint64_t, uint64_t left, const vpipe_hdtr* hdtr) {
        return vpipe_socket_to_socket_fd_hdtr(d->in, d->out, left, hdtr);
    };
    apps::HdtrProgress p;
    if (apps::vpipe_send_until_eof({}, g_cfg.chunk, call, &d->vp, &p) == apps::VpipeEnd::Failed)
        d->error = "vpipe_socket_to_socket_fd: " + d->vp.failure();
    d->bytes += p.total();
}

}  // namespace

void run_direction(Direction* d) {
    if (g_cfg.mode == Mode::Vpipe && d->use_vpipe) relay_vpipe(d);
    else if (g_cfg.mode == Mode::Splice) relay_splice(d);
    else relay_rw(d);
    if (d->error.empty()) {
        ::shutdown(d->out, SHUT_WR);  // pass the EOF on
    } else {
        // abort the whole connection: wakes the other direction too
        ::shutdown(d->in, SHUT_RDWR);
        ::shutdown(d->out, SHUT_RDWR);
    }
}

}  // namespace vpipe::proxy
