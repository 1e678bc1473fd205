// The connection's state machine: heads, dispatch, errors, closing.
#include "connection.h"

#include <sys/socket.h>

#include <cerrno>

#include "common/log.h"
#include "common/net.h"
#include "common/server.h"
#include "config.h"
#include "response.h"

namespace vpipe::httpd {

void Connection::serve() {
    while (!apps::stopping()) {
        Head h = read_head();
        if (h == Head::TooLarge) answer(Request{}, 431, true);
        if (h != Head::Ready || !handle()) break;  // EOF, timeout or error: nothing to answer
    }
    linger_close();
}

// Ready: a complete head is in buf_ (head_len_ bytes with the blank line).
Connection::Head Connection::read_head() {
    if (!buf_.empty()) t0_ = std::chrono::steady_clock::now();  // a pipelined request
    for (;;) {
        size_t end = buf_.find("\r\n\r\n");
        if (end != std::string::npos) {
            head_len_ = end + 4;
            return head_len_ > kMaxHead ? Head::TooLarge : Head::Ready;
        }
        if (buf_.size() > kMaxHead) return Head::TooLarge;
        if (apps::wait_readable(fd_, idle_ms()) <= 0) return Head::Closed;
        char tmp[65536];
        ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return Head::Closed;
        if (buf_.empty()) t0_ = std::chrono::steady_clock::now();
        buf_.append(tmp, static_cast<size_t>(n));
    }
}

bool Connection::handle() {
    Request rq;
    bool ok = parse_request_head(std::string_view(buf_).substr(0, head_len_), &rq);
    buf_.erase(0, head_len_);
    if (!ok) return answer(rq, 400, true);
    Framing fr;
    if (int status = check_framing(rq, &fr)) return answer(rq, status, true);
    bool keep = fr.keep;
    std::string rel;
    int perr = to_relative(rq.target, &rel);
    bool is_get = rq.method == "GET" || rq.method == "HEAD";
    if (!is_get && rq.method != "PUT") {
        if (fr.body_len > 0 && !discard(fr.body_len)) return false;
        return answer(rq, 405, !keep, "Allow: GET, HEAD, PUT\r\n");
    }
    if (perr != 0 || (rq.method == "PUT" && !fr.have_len)) {
        int status = perr != 0 ? perr : 411;
        if (rq.expects_continue()) keep = false;  // the body will not come
        else if (fr.body_len > 0 && !discard(fr.body_len)) return false;
        return answer(rq, status, !keep || status == 411);
    }
    if (is_get) {
        if (fr.body_len > 0 && !discard(fr.body_len)) return false;
        return get(rq, rel, keep);
    }
    return put(rq, rel, fr.body_len, keep);
}

// Reads and drops `len` body bytes (a rejected request body), so that the connection can go on.
// false when the connection is lost.
bool Connection::discard(uint64_t len) {
    size_t pre = static_cast<size_t>(std::min<uint64_t>(len, buf_.size()));
    buf_.erase(0, pre);
    len -= pre;
    char tmp[65536];
    while (len > 0) {
        if (apps::wait_readable(fd_, idle_ms()) <= 0) return false;
        ssize_t n = ::recv(fd_, tmp, static_cast<size_t>(std::min<uint64_t>(len, sizeof tmp)), 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        len -= static_cast<uint64_t>(n);
    }
    return true;
}

bool Connection::answer(const Request& rq, int status, bool close, const char* extra) {
    std::string r = simple_response(status, extra, close, rq.is_head());
    apps::send_all(fd_, r.data(), r.size());
    log(rq, status, 0, "-");
    return !close;
}

// TIME PEER "METHOD TARGET VERSION" STATUS bytes=N mode=MODE [vpipe=PATH] ms=T
void Connection::log(const Request& rq, int status, uint64_t bytes, const std::string& vp) {
    std::string line = apps::now_text() + " " + peer_ + " \"" + printable(rq.method) + " " + printable(rq.target) +
                       " " + printable(rq.version) + "\" " + std::to_string(status) + " bytes=" +
                       std::to_string(bytes) + " mode=" + mode_name(g_cfg.mode);
    if (g_cfg.mode == Mode::Vpipe) line += " vpipe=" + vp;
    apps::log_line(line + apps::ms_since(t0_) + "\n");
}

// Closes without losing a response still in flight: stop sending, drain what the client still
// sends for a moment (closing with unread data would reset the connection), then close.
void Connection::linger_close() {
    bufs_.drop_pipe();
    ::shutdown(fd_, SHUT_WR);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    char tmp[65536];
    while (!apps::stopping() && std::chrono::steady_clock::now() < deadline) {
        if (apps::wait_readable(fd_, 200) <= 0) continue;
        ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
    }
    apps::untrack_and_close(fd_);
}

}  // namespace vpipe::httpd
