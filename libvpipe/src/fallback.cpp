#include "fallback.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <vector>

namespace vpipe::lib {
namespace {

// With a stop request, one system call moves at most this much: a stop waits for no more.
constexpr uint64_t kStopChunk = 4ull << 20;

uint64_t chunk(uint64_t want, const Stop* stop) { return stop ? std::min(want, kStopChunk) : want; }

// At a chunk boundary: true (and marked) when a stop was asked.
bool halt(Stop* stop) {
    if (!stop || !stop->requested.load()) return false;
    stop->stopped = true;
    return true;
}

// Waits until `fd` is ready for `events` (the API is blocking even on non-blocking fds), or a
// stop is asked (-ECANCELED, marked).
int wait_ready(int fd, short events, Stop* stop) {
    pollfd p[2] = {{fd, events, 0}, {stop ? stop->wake_fd : -1, POLLIN, 0}};
    const nfds_t n = stop && stop->wake_fd >= 0 ? 2 : 1;
    for (;;) {
        if (halt(stop)) return -ECANCELED;
        if (::poll(p, n, -1) < 0) {
            if (errno != EINTR) return -errno;
            continue;
        }
        if (p[0].revents) return 0;
    }
}

int64_t finish(uint64_t moved, int err) {
    return moved ? static_cast<int64_t>(moved) : -err;
}

// Writes all of buf to a (possibly non-blocking) socket or file; *sent the bytes written, also
// when it fails or stops.
int write_all(int fd, const char* buf, size_t len, bool is_file, uint64_t file_off, int send_flags,
              Stop* stop, size_t* sent) {
    size_t& done = *sent;
    done = 0;
    while (done < len) {
        ssize_t n = is_file ? ::pwrite(fd, buf + done, len - done, static_cast<off_t>(file_off + done))
                            : ::send(fd, buf + done, len - done, MSG_NOSIGNAL | send_flags);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN && !is_file) {
                if (int r = wait_ready(fd, POLLOUT, stop)) return r;
                continue;
            }
            return -errno;
        }
        done += static_cast<size_t>(n);
    }
    return 0;
}

// pread/pwrite loop, continuing after `moved` bytes.
int64_t copy_by_hand(int in_fd, uint64_t in_off, int out_fd, uint64_t out_off, uint64_t length,
                     uint64_t moved, Stop* stop) {
    std::vector<char> buf(static_cast<size_t>(std::min<uint64_t>(length - moved, 1 << 20)));
    while (moved < length && !halt(stop)) {
        size_t want = static_cast<size_t>(std::min<uint64_t>(buf.size(), length - moved));
        ssize_t n = ::pread(in_fd, buf.data(), want, static_cast<off_t>(in_off + moved));
        if (n < 0) {
            if (errno == EINTR) continue;
            return finish(moved, errno);
        }
        if (n == 0) break;
        size_t sent = 0;
        int r = write_all(out_fd, buf.data(), static_cast<size_t>(n), true, out_off + moved, 0, nullptr, &sent);
        moved += sent;
        if (r) return finish(moved, -r);
    }
    return static_cast<int64_t>(moved);
}

}  // namespace

int64_t fallback_file_to_file(int in_fd, uint64_t in_off, int out_fd, uint64_t out_off,
                              uint64_t length, Stop* stop) {
    uint64_t moved = 0;
    while (moved < length && !halt(stop)) {
        loff_t ioff = static_cast<loff_t>(in_off + moved), ooff = static_cast<loff_t>(out_off + moved);
        size_t want = static_cast<size_t>(chunk(std::min<uint64_t>(length - moved, 1ull << 30), stop));
        ssize_t n = ::copy_file_range(in_fd, &ioff, out_fd, &ooff, want, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            // Across filesystems (EXDEV since Linux 5.19) or where the kernel can't: copy by hand.
            if (errno == EXDEV || errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL)
                return copy_by_hand(in_fd, in_off, out_fd, out_off, length, moved, stop);
            return finish(moved, errno);
        }
        if (n == 0) break;  // EOF
        moved += static_cast<uint64_t>(n);
    }
    return static_cast<int64_t>(moved);
}

int64_t fallback_file_to_socket(int file_fd, uint64_t offset, int sock_fd, uint64_t length, Stop* stop) {
    uint64_t moved = 0;
    while (moved < length && !halt(stop)) {
        off_t off = static_cast<off_t>(offset + moved);
        size_t want = static_cast<size_t>(chunk(std::min<uint64_t>(length - moved, 1ull << 30), stop));
        ssize_t n = ::sendfile(sock_fd, file_fd, &off, want);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) {
                if (int r = wait_ready(sock_fd, POLLOUT, stop)) return finish(moved, -r);
                continue;
            }
            return finish(moved, errno);
        }
        if (n == 0) break;
        moved += static_cast<uint64_t>(n);
    }
    return static_cast<int64_t>(moved);
}

// With a stop request the bytes are peeked, written, and only then taken from the socket: a
// stop while the destination is full leaves the unwritten ones in the source, which then
// continues right after the bytes moved.
static int64_t socket_to_sink(int sock_fd, int out_fd, bool out_is_file, uint64_t offset,
                              uint64_t length, Stop* stop) {
    std::vector<char> buf(static_cast<size_t>(std::min<uint64_t>(length, 1 << 20)));
    uint64_t moved = 0;
    while (moved < length && !halt(stop)) {
        size_t want = static_cast<size_t>(std::min<uint64_t>(buf.size(), length - moved));
        ssize_t n = ::recv(sock_fd, buf.data(), want, stop ? MSG_PEEK : 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) {
                if (int r = wait_ready(sock_fd, POLLIN, stop)) return finish(moved, -r);
                continue;
            }
            return finish(moved, errno);
        }
        if (n == 0) break;  // peer closed
        size_t sent = 0;
        int r = write_all(out_fd, buf.data(), static_cast<size_t>(n), out_is_file, offset + moved, 0, stop, &sent);
        // take what was written (peeked bytes are there: this thread is the socket's only reader)
        for (size_t taken = 0; stop && taken < sent;) {
            ssize_t t = ::recv(sock_fd, buf.data(), sent - taken, MSG_DONTWAIT);
            if (t <= 0) {
                if (t < 0 && errno == EINTR) continue;
                return finish(moved + taken, t < 0 ? errno : EIO);
            }
            taken += static_cast<size_t>(t);
        }
        moved += sent;
        if (r) return finish(moved, -r);
    }
    return static_cast<int64_t>(moved);
}

int fallback_send_all(int sock_fd, const void* buf, size_t len, bool more, Stop* stop, size_t* sent) {
    size_t done = 0;
    // MSG_MORE: a head followed by the body leaves in the body's segments, not one of its own
    int r = write_all(sock_fd, static_cast<const char*>(buf), len, false, 0, more ? MSG_MORE : 0, stop, &done);
    if (sent) *sent = done;
    return r;
}

int64_t fallback_socket_to_file(int sock_fd, int file_fd, uint64_t offset, uint64_t length, Stop* stop) {
    return socket_to_sink(sock_fd, file_fd, true, offset, length, stop);
}

int64_t fallback_socket_to_socket(int in_fd, int out_fd, uint64_t length, Stop* stop) {
    return socket_to_sink(in_fd, out_fd, false, 0, length, stop);
}

}  // namespace vpipe::lib
