#include "relay_http.h"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <vpipe/abi/ioctl.h>  // VPIPE_HDTR_MAX

#include "common/net.h"
#include "config.h"

namespace vpipe::proxy {

void HttpRelay::run() {
    constexpr short kReady = POLLIN | POLLHUP | POLLERR;
    while ((up_open_ || down_open_) && ok()) {
        pollfd p[2] = {{up_open_ ? cfd_ : -1, POLLIN, 0}, {down_open_ ? bfd_ : -1, POLLIN, 0}};
        if (::poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            up_->error = std::string("poll: ") + std::strerror(errno);
            break;
        }
        if (up_open_ && (p[0].revents & kReady)) from_client();
        if (ok() && down_open_ && (p[1].revents & kReady)) from_backend();
    }
    if (!ok()) {
        ::shutdown(cfd_, SHUT_RDWR);
        ::shutdown(bfd_, SHUT_RDWR);
    }
}

// recv without blocking: the bytes, 0 at EOF, -1 when there was nothing (or an error: d->error).
ssize_t HttpRelay::receive(int fd, size_t want, Direction* d) {
    ssize_t n = ::recv(fd, buf_.data(), want, MSG_DONTWAIT);
    if (n < 0 && errno != EINTR && errno != EAGAIN) d->error = std::string("recv: ") + std::strerror(errno);
    return n;
}

// A request's bytes go to the backend as they come; their framing is followed.
void HttpRelay::from_client() {
    ssize_t n = receive(cfd_, buf_.size(), up_);
    if (n == 0) {
        ::shutdown(bfd_, SHUT_WR);
        up_open_ = false;
    }
    if (n <= 0) return;
    if (!send_to(up_, buf_.data(), static_cast<size_t>(n))) return;
    if (!opaque_ && !requests_.follow(buf_.data(), static_cast<size_t>(n))) go_opaque();
}

void HttpRelay::from_backend() {
    if (opaque_ || body_left_ > 0) return copy_from_backend();
    // a response head: collect it, then forward it and deal with the body
    ssize_t n = receive(bfd_, buf_.size(), down_);
    if (n < 0) return;
    if (n == 0) {
        go_opaque();
        ::shutdown(cfd_, SHUT_WR);
        down_open_ = false;
        return;
    }
    in_.append(buf_.data(), static_cast<size_t>(n));
    while (ok() && down_open_ && next_response()) {
    }
    flush();
}

// Opaque bytes, or a small body's, copied in the guest.
void HttpRelay::copy_from_backend() {
    size_t want = opaque_ ? buf_.size() : static_cast<size_t>(std::min<uint64_t>(buf_.size(), body_left_));
    ssize_t n = receive(bfd_, want, down_);
    if (n == 0) {
        ::shutdown(cfd_, SHUT_WR);
        down_open_ = false;
    }
    if (n <= 0) return;
    if (send_to(down_, buf_.data(), static_cast<size_t>(n)) && !opaque_) body_left_ -= static_cast<uint64_t>(n);
}

// Queues the next response whose head is complete in in_, with what came of its body, and deals
// with the rest of the body. true: there may be another response in in_.
bool HttpRelay::next_response() {
    size_t end = in_.find("\r\n\r\n");
    if (end == std::string::npos) {
        if (in_.size() > kMaxFramedHead || (in_.size() >= 7 && in_.compare(0, 7, "HTTP/1.") != 0)) go_opaque();
        return false;
    }
    MessageHead m;
    if (!parse_message_head(in_.substr(0, end + 4), true, &m) || m.chunked || !requests_.waiting()) {
        go_opaque();
        return false;
    }
    bool head_req = requests_.answer(m.status);
    // body length: none for 1xx/204/304 and answers to HEAD; else Content-Length, else until EOF
    bool no_body = m.status < 200 || m.status == 204 || m.status == 304 || head_req;
    take(end + 4);
    if (no_body || m.length == 0) return true;
    if (m.length < 0) {
        take(in_.size());
        hand_over_until_eof();
        return false;
    }
    uint64_t have = std::min<uint64_t>(in_.size(), static_cast<uint64_t>(m.length));
    take(static_cast<size_t>(have));
    uint64_t left = static_cast<uint64_t>(m.length) - have;
    if (left == 0) return true;
    if (left < g_cfg.vpipe_min) {  // small: not worth a hand-over
        body_left_ = left;
        return false;
    }
    hand_over(left);
    return false;  // nothing can be left in in_: it held at most the start of this body
}

// Moves n bytes from in_ to out_.
void HttpRelay::take(size_t n) {
    out_.append(in_, 0, n);
    in_.erase(0, n);
}

// The rest of a body in vPipe calls from the backend to the client, with what is queued in out_
// (this response's head, the body bytes that came with it, earlier small responses) as the hdtr
// head of the first call: head and body leave in one hand-over. The calls return head + data
// bytes; after a short count the next call goes on without the head.
apps::VpipeEnd HttpRelay::offload(uint64_t length, bool until_eof) {
    if (!flush(VPIPE_HDTR_MAX)) return apps::VpipeEnd::Failed;
    auto call = [this](uint64_t, uint64_t want, const vpipe_hdtr* hdtr) {
        return vpipe_socket_to_socket_fd_hdtr(bfd_, cfd_, want, hdtr);
    };
    apps::HdtrProgress p;
    apps::VpipeEnd end = until_eof ? apps::vpipe_send_until_eof(out_, length, call, &down_->vp, &p)
                                   : apps::vpipe_send_with_head(out_, length, call, &down_->vp, &p);
    down_->bytes += p.total();
    out_.clear();
    if (end == apps::VpipeEnd::Failed) down_->error = "vpipe_socket_to_socket_fd_hdtr: " + down_->vp.failure();
    return end;
}

// A body of known length: exactly `left` bytes, so the call ends with the response.
void HttpRelay::hand_over(uint64_t left) {
    if (offload(left, false) == apps::VpipeEnd::Short) down_->error = "the backend closed in the middle of a body";
}

// A close-delimited body: --chunk pieces until a short count, then the client gets the EOF.
void HttpRelay::hand_over_until_eof() {
    down_open_ = false;
    if (offload(g_cfg.chunk, true) != apps::VpipeEnd::Failed) ::shutdown(cfd_, SHUT_WR);
}

// Sends n bytes to the other side of d, counted there. false on an error (d->error).
bool HttpRelay::send_to(Direction* d, const char* p, size_t n) {
    if (apps::send_all(d->out, p, n) < 0) {
        d->error = std::string("send: ") + std::strerror(errno);
        return false;
    }
    d->bytes += n;
    return true;
}

// Sends out_ to the client but for its last `keep` bytes (the most a hdtr head may be).
bool HttpRelay::flush(size_t keep) {
    if (!down_->error.empty()) return false;
    if (out_.size() <= keep) return true;
    size_t n = out_.size() - keep;
    if (!send_to(down_, out_.data(), n)) return false;
    out_.erase(0, n);
    return true;
}

// From now on a plain relay: what was held back goes out first.
void HttpRelay::go_opaque() {
    opaque_ = true;
    take(in_.size());
    flush();
}

}  // namespace vpipe::proxy
