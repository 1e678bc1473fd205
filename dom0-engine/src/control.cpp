#include "control.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include <spdlog/spdlog.h>

#include "util/unix_socket.h"

namespace vpipe::engine {

ControlServer::ControlServer(std::string path, Handler handler)
    : path_(std::move(path)), handler_(std::move(handler)) {}

ControlServer::~ControlServer() {
    stop();
    if (listen_fd_) ::unlink(path_.c_str());
}

void ControlServer::start() {
    listen_fd_ = listen_unix(path_, 0660);
    thread_.start([this] { run(); });
}

void ControlServer::stop() { thread_.stop(); }

void ControlServer::run() {
    while (!thread_.stopping()) {
        pollfd fds[2] = {{thread_.wake_fd(), POLLIN, 0}, {listen_fd_.get(), POLLIN, 0}};
        if (::poll(fds, 2, -1) < 0 && errno != EINTR) break;
        if (thread_.stopping()) break;
        if (fds[1].revents & POLLIN) {
            UniqueFd conn(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
            if (conn) serve(conn.get());
        }
    }
}

bool ControlFramer::next(std::string* line) {
    const size_t nl = buf_.find('\n', pos_);
    if (nl == std::string::npos) {
        // Keep only the unconsumed tail, so a long-lived connection does not grow buf_.
        buf_.erase(0, pos_);
        pos_ = 0;
        return false;
    }
    line->assign(buf_, pos_, nl - pos_);
    pos_ = nl + 1;
    return true;
}

std::string control_reply(const std::function<nlohmann::json(const nlohmann::json&)>& handler,
                          const std::string& line) {
    using nlohmann::json;
    json reply;
    try {
        reply = handler(json::parse(line));
    } catch (const std::exception& e) {
        // e.what() of a parse error quotes the client's bytes, which need not be UTF-8.
        reply = {{"ok", false}, {"error", e.what()}};
    } catch (...) {
        reply = {{"ok", false}, {"error", "internal error"}};
    }
    // dump() throws on invalid UTF-8 unless told otherwise: that once killed vpiped (the
    // exception left the control thread). Replace bad bytes instead.
    try {
        return reply.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
    } catch (const std::exception&) {
        return R"({"ok":false,"error":"reply could not be encoded"})" "\n";
    }
}

void ControlServer::serve(int conn) {
    // Requests are tiny; a client that stalls must not hold the control thread for long.
    timeval tv{2, 0};
    ::setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ControlFramer framer;
    char chunk[4096];
    std::string line;
    for (;;) {
        while (!framer.next(&line)) {
            if (framer.overflow()) return;
            ssize_t n = ::read(conn, chunk, sizeof(chunk));
            if (n <= 0) return;
            framer.feed(chunk, static_cast<size_t>(n));
        }
        const std::string out = control_reply(handler_, line);
        if (send_msg_fds(conn, out.data(), out.size(), nullptr, 0) < 0) return;
    }
}

}  // namespace vpipe::engine
