// Request bodies (PUT) per --mode, and the connection's buffers.
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "body_io.h"
#include "common/net.h"
#include "config.h"

namespace vpipe::httpd {

std::vector<char>& BodyBuffers::io() {
    if (io_.empty()) io_.resize(kIoChunk);
    return io_;
}

const int* BodyBuffers::pipe(std::string* err) {
    if (pipe_[0] < 0) {
        if (::pipe2(pipe_, O_CLOEXEC) < 0) {
            *err = std::string("pipe: ") + std::strerror(errno);
            return nullptr;
        }
        ::fcntl(pipe_[1], F_SETPIPE_SZ, 1 << 20);
    }
    return pipe_;
}

void BodyBuffers::drop_pipe() {
    if (pipe_[0] < 0) return;
    ::close(pipe_[0]);
    ::close(pipe_[1]);
    pipe_[0] = pipe_[1] = -1;
}

namespace {

const char* kClientGone = "client closed before the end of the body";

// All of p[0, len) into file at `at`.
bool pwrite_all(int file, const char* p, size_t len, uint64_t at, std::string* err) {
    size_t done = 0;
    while (done < len) {
        ssize_t k = ::pwrite(file, p + done, len - done, static_cast<off_t>(at + done));
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            *err = std::string("write: ") + std::strerror(k < 0 ? errno : EIO);
            return false;
        }
        done += static_cast<size_t>(k);
    }
    return true;
}

bool recv_rw(int sock, int file, uint64_t len, BodyBuffers* bufs, BodyResult* res) {
    std::vector<char>& io = bufs->io();
    while (res->bytes < len) {
        if (apps::wait_readable(sock, idle_ms()) <= 0) {
            res->err = "timeout or error waiting for the body";
            return false;
        }
        size_t want = static_cast<size_t>(std::min<uint64_t>(len - res->bytes, io.size()));
        ssize_t n = ::recv(sock, io.data(), want, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            res->err = n < 0 ? std::string("recv: ") + std::strerror(errno) : kClientGone;
            return false;
        }
        if (!pwrite_all(file, io.data(), static_cast<size_t>(n), res->bytes, &res->err)) return false;
        res->bytes += static_cast<uint64_t>(n);
    }
    return true;
}

// What a splice put into the pipe, out into the file.
bool drain_pipe(const int* p, int file, size_t left, BodyBuffers* bufs, BodyResult* res) {
    while (left > 0) {
        loff_t o = static_cast<loff_t>(res->bytes);
        ssize_t k = ::splice(p[0], nullptr, file, &o, left, SPLICE_F_MOVE);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            res->err = std::string("write (splice to file): ") + std::strerror(k < 0 ? errno : EIO);
            bufs->drop_pipe();
            return false;
        }
        left -= static_cast<size_t>(k);
        res->bytes += static_cast<uint64_t>(k);
    }
    return true;
}

bool recv_splice(int sock, int file, uint64_t len, BodyBuffers* bufs, BodyResult* res) {
    const int* p = bufs->pipe(&res->err);
    if (!p) return false;
    while (res->bytes < len) {
        size_t want = static_cast<size_t>(std::min<uint64_t>(len - res->bytes, 1 << 20));
        ssize_t n = ::splice(sock, nullptr, p[1], nullptr, want, SPLICE_F_MOVE | SPLICE_F_MORE);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            res->err = n < 0 ? std::string("splice from socket: ") + std::strerror(errno) : kClientGone;
            return false;
        }
        if (!drain_pipe(p, file, static_cast<size_t>(n), bufs, res)) return false;
    }
    return true;
}

bool recv_vpipe(int sock, int file, uint64_t len, BodyResult* res) {
    while (res->bytes < len) {
        ssize_t n = vpipe_socket_to_file_fd(sock, file, static_cast<off_t>(res->bytes), len - res->bytes);
        res->vt.add(n);
        if (n < 0) {
            res->err = "vpipe_socket_to_file_fd: " + res->vt.failure();
            return false;
        }
        if (n == 0) {
            res->err = kClientGone;
            return false;
        }
        res->bytes += static_cast<uint64_t>(n);
    }
    return true;
}

}  // namespace

bool recv_body(int sock, std::string* pending, int file, uint64_t len, BodyBuffers* bufs, BodyResult* res) {
    size_t pre = static_cast<size_t>(std::min<uint64_t>(len, pending->size()));
    if (!pwrite_all(file, pending->data(), pre, 0, &res->err)) return false;
    pending->erase(0, pre);
    res->bytes = pre;
    switch (g_cfg.mode) {
        case Mode::Rw: return recv_rw(sock, file, len, bufs, res);
        case Mode::Sendfile: return recv_splice(sock, file, len, bufs, res);
        case Mode::Vpipe: return recv_vpipe(sock, file, len, res);
    }
    return false;
}

}  // namespace vpipe::httpd
