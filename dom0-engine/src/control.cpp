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

void ControlServer::serve(int conn) {
    // Requests are tiny; a client that stalls must not hold the control thread for long.
    timeval tv{2, 0};
    ::setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    std::string buf;
    char chunk[4096];
    for (;;) {
        size_t nl;
        while ((nl = buf.find('\n')) == std::string::npos) {
            ssize_t n = ::read(conn, chunk, sizeof(chunk));
            if (n <= 0) return;
            buf.append(chunk, static_cast<size_t>(n));
            if (buf.size() > 65536) return;
        }
        std::string line = buf.substr(0, nl);
        buf.erase(0, nl + 1);
        nlohmann::json reply;
        try {
            reply = handler_(nlohmann::json::parse(line));
        } catch (const std::exception& e) {
            reply = {{"ok", false}, {"error", e.what()}};
        }
        std::string out = reply.dump() + "\n";
        if (send_msg_fds(conn, out.data(), out.size(), nullptr, 0) < 0) return;
    }
}

}  // namespace vpipe::engine
