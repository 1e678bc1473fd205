#include "server.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

#include "operation.h"
#include "util/unix_socket.h"

namespace vpipe::agent {
namespace {

constexpr int kMaxClients = 1024;

// the fixed part of a request's payload (an operation's head and tail follow it)
size_t payload_size(uint32_t cmd) {
    switch (cmd) {
    case VPIPE_IOC_CREATE: return sizeof(vpipe_ioc_create);
    case VPIPE_IOC_DESTROY: return sizeof(int32_t);
    case VPIPE_IOC_OP: return sizeof(vpipe_ioc_op);
    case VPIPE_IOC_STATS: return 0;
    default: return SIZE_MAX;
    }
}

bool length_ok(const vpipe_agent_msg& hdr, size_t want) {
    if (hdr.cmd == VPIPE_IOC_OP)
        return hdr.length >= want && hdr.length <= want + 2 * size_t{VPIPE_HDTR_MAX};
    return hdr.length == want;
}

}  // namespace

Server::Server(AgentContext& ctx, std::string path) : ctx_(ctx), path_(std::move(path)) {}

Server::~Server() {
    stop();
    if (listen_fd_) ::unlink(path_.c_str());
}

void Server::start() {
    // Any local process may ask; what it may move is bounded by the descriptors it passes
    // (their access modes are checked), not by who it is.
    listen_fd_ = listen_unix(path_, 0666);
    acceptor_.start([this] { accept_loop(); });
}

void Server::stop() {
    if (!acceptor_.stop()) return;
    {
        std::lock_guard lk(mu_);
        for (int fd : client_fds_) ::shutdown(fd, SHUT_RDWR);
    }
    for (int i = 0; i < 500 && clients_ > 0; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
}

void Server::accept_loop() {
    while (!acceptor_.stopping()) {
        pollfd fds[2] = {{acceptor_.wake_fd(), POLLIN, 0}, {listen_fd_.get(), POLLIN, 0}};
        if (::poll(fds, 2, -1) < 0 && errno != EINTR) break;
        if (acceptor_.stopping()) break;
        if (!(fds[1].revents & POLLIN)) continue;
        UniqueFd conn(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
        if (!conn) continue;
        if (clients_ >= kMaxClients) {
            spdlog::warn("too many clients; refusing one");
            continue;
        }
        clients_++;
        std::thread([this, c = std::move(conn)]() mutable { serve(std::move(c)); }).detach();
    }
}

void Server::serve(UniqueFd conn) {
    {
        std::lock_guard lk(mu_);
        client_fds_.insert(conn.get());
    }
    PeerCred cred{};
    peer_cred(conn.get(), &cred);
    spdlog::debug("client pid {} uid {} connected", cred.pid, cred.uid);
    for (;;) {
        vpipe_agent_msg hdr{};
        std::vector<UniqueFd> fds;
        if (recv_msg_fds(conn.get(), &hdr, sizeof(hdr), &fds, 2) < 0) break;
        const size_t want = payload_size(hdr.cmd);
        if (hdr.magic != VPIPE_AGENT_MAGIC || want == SIZE_MAX || !length_ok(hdr, want)) {
            spdlog::warn("client pid {}: malformed message; closing", cred.pid);
            break;
        }
        union {
            vpipe_ioc_op op;
            vpipe_ioc_create create;
            int32_t handle;
            vpipe_ioc_stats stats;
        } body{};
        if (want && recv_msg_fds(conn.get(), &body, want, &fds, 2) < 0) break;
        // an operation's head and tail (socket destinations) follow the structure
        std::vector<uint8_t> hdtr;
        if (hdr.cmd == VPIPE_IOC_OP) {
            const vpipe_ioc_op& op = body.op;
            if (op.head_len > VPIPE_HDTR_MAX || op.tail_len > VPIPE_HDTR_MAX ||
                hdr.length != want + op.head_len + op.tail_len) {
                spdlog::warn("client pid {}: malformed head/tail lengths; closing", cred.pid);
                break;
            }
            hdtr.resize(size_t{op.head_len} + op.tail_len);
            if (!hdtr.empty() && recv_msg_fds(conn.get(), hdtr.data(), hdtr.size(), &fds, 2) < 0) break;
        }

        vpipe_agent_msg reply{VPIPE_AGENT_MAGIC, hdr.cmd, 0, 0};
        size_t reply_len = 0;
        std::vector<int> reply_fds;
        int new_in = -1, new_out = -1;
        switch (hdr.cmd) {
        case VPIPE_IOC_OP: {
            vpipe_ioc_op& op = body.op;
            reply_len = sizeof(op);
            op.new_in_fd = op.new_out_fd = -1;
            if (op.handle != VPIPE_NO_HANDLE || op.reserved0 != 0 ||
                (op.flags & ~uint32_t{VPIPE_OPF_NO_CACHE_RULE})) {
                reply.result = -EINVAL;
            } else if (fds.size() != 2) {
                reply.result = -EBADF;
            } else {
                reply.result = run_operation(ctx_, fds[0].get(), fds[1].get(), &op, hdtr.data(),
                                             hdtr.data() + op.head_len, &new_in, &new_out);
                // restored connections travel back as SCM_RIGHTS, in the order in, out
                if (new_in >= 0) {
                    op.new_in_fd = static_cast<int32_t>(reply_fds.size());
                    reply_fds.push_back(new_in);
                }
                if (new_out >= 0) {
                    op.new_out_fd = static_cast<int32_t>(reply_fds.size());
                    reply_fds.push_back(new_out);
                }
            }
            if (op.op < ctx_.stats.ops.size() && reply.result == 0) ctx_.stats.ops[op.op]++;
            if (reply.result < 0) ctx_.stats.ops_failed++;
            break;
        }
        case VPIPE_IOC_STATS:
            ctx_.stats.fill(&body.stats, ctx_.link.connected());
            reply_len = sizeof(body.stats);
            break;
        default:
            // Handles live in libvpipe for the agent; the kernel module keeps them itself.
            reply.result = -EOPNOTSUPP;
            reply_len = want;
            break;
        }
        reply.length = static_cast<uint32_t>(reply_len);
        int sent = send_msg_fds(conn.get(), &reply, sizeof(reply), reply_fds.empty() ? nullptr : reply_fds.data(),
                                reply_fds.size());
        // the application holds its own copies now (or the connection is gone)
        for (int fd : reply_fds) ::close(fd);
        if (sent < 0) break;
        if (reply_len && send_msg_fds(conn.get(), &body, reply_len, nullptr, 0) < 0) break;
    }
    {
        std::lock_guard lk(mu_);
        client_fds_.erase(conn.get());
    }
    clients_--;
}

}  // namespace vpipe::agent
