#include "server.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <vector>

#include <spdlog/spdlog.h>

#include "socket_ops.h"
#include "transport/shm_channel.h"
#include "util/unix_socket.h"

namespace vpipe::agent {
namespace {

constexpr int kMaxClients = 1024;

size_t payload_size(uint32_t cmd) {
    switch (cmd) {
    case VPIPE_IOC_CREATE: return sizeof(vpipe_ioc_create);
    case VPIPE_IOC_DESTROY: return sizeof(int32_t);
    case VPIPE_IOC_OP: return sizeof(vpipe_ioc_op);
    case VPIPE_IOC_STATS: return 0;
    default: return SIZE_MAX;
    }
}

}  // namespace

Server::Server(AgentContext& ctx, std::string path) : ctx_(ctx), path_(std::move(path)) {}

Server::~Server() {
    stop();
    if (listen_fd_) ::unlink(path_.c_str());
}

void Server::start() {
    wake_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    // Any local process may ask; what it may move is bounded by the descriptors it passes
    // (their access modes are checked), not by who it is.
    listen_fd_ = listen_unix(path_, 0666);
    acceptor_ = std::thread([this] { accept_loop(); });
}

void Server::stop() {
    if (!acceptor_.joinable()) return;
    stopping_ = true;
    transport::kick(wake_fd_.get());
    acceptor_.join();
    {
        std::lock_guard lk(mu_);
        for (int fd : client_fds_) ::shutdown(fd, SHUT_RDWR);
    }
    for (int i = 0; i < 500 && clients_ > 0; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
}

void Server::accept_loop() {
    while (!stopping_) {
        pollfd fds[2] = {{wake_fd_.get(), POLLIN, 0}, {listen_fd_.get(), POLLIN, 0}};
        if (::poll(fds, 2, -1) < 0 && errno != EINTR) break;
        if (stopping_) break;
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
        if (hdr.magic != VPIPE_AGENT_MAGIC || want == SIZE_MAX || hdr.length != want) {
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

        vpipe_agent_msg reply{VPIPE_AGENT_MAGIC, hdr.cmd, 0, 0};
        size_t reply_len = 0;
        SocketReplacements repl;
        std::vector<int> reply_fds;
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
            } else if (op.op == VPIPE_IOC_FILE_TO_FILE) {
                reply.result = file_to_file(ctx_, fds[0].get(), fds[1].get(), &op);
            } else if (op.op >= VPIPE_IOC_FILE_TO_SOCKET && op.op <= VPIPE_IOC_SOCKET_TO_SOCKET) {
                reply.result = socket_op(ctx_, fds[0].get(), fds[1].get(), &op, &repl);
                // restored connections travel back as SCM_RIGHTS, in the order in, out
                if (repl.in) {
                    op.new_in_fd = static_cast<int32_t>(reply_fds.size());
                    reply_fds.push_back(repl.in.get());
                }
                if (repl.out) {
                    op.new_out_fd = static_cast<int32_t>(reply_fds.size());
                    reply_fds.push_back(repl.out.get());
                }
            } else {
                reply.result = -EINVAL;
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
        if (send_msg_fds(conn.get(), &reply, sizeof(reply), reply_fds.empty() ? nullptr : reply_fds.data(),
                         reply_fds.size()) < 0)
            break;
        if (reply_len && send_msg_fds(conn.get(), &body, reply_len, nullptr, 0) < 0) break;
    }
    {
        std::lock_guard lk(mu_);
        client_fds_.erase(conn.get());
    }
    clients_--;
}

}  // namespace vpipe::agent
