#include "server.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
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
    case VPIPE_AGENT_SUBMIT: return sizeof(vpipe_ioc_submit);
    case VPIPE_AGENT_CANCEL: return sizeof(uint64_t);
    default: return SIZE_MAX;
    }
}

bool length_ok(const vpipe_agent_msg& hdr, size_t want) {
    if (hdr.cmd == VPIPE_IOC_OP || hdr.cmd == VPIPE_AGENT_SUBMIT)
        return hdr.length >= want && hdr.length <= want + 2 * size_t{VPIPE_HDTR_MAX};
    return hdr.length == want;
}

// EINVAL for what the agent refuses in any operation structure before looking at descriptors
int op_header_ok(const vpipe_ioc_op& op) {
    if (op.handle != VPIPE_NO_HANDLE || op.reserved0 != 0 || (op.flags & ~uint32_t{VPIPE_OPF_NO_CACHE_RULE}))
        return -EINVAL;
    return 0;
}

// Restored connections travel back as SCM_RIGHTS, in the order in, out; the op says which is which.
void attach_restored(vpipe_ioc_op* op, int new_in, int new_out, std::vector<int>* reply_fds) {
    if (new_in >= 0) {
        op->new_in_fd = static_cast<int32_t>(reply_fds->size());
        reply_fds->push_back(new_in);
    }
    if (new_out >= 0) {
        op->new_out_fd = static_cast<int32_t>(reply_fds->size());
        reply_fds->push_back(new_out);
    }
}

// While a synchronous operation runs nobody reads the client's connection: this watches it for
// the application's end closing (POLLRDHUP / POLLHUP) and then marks the connection gone.
class CallerWatch {
public:
    CallerWatch(int fd, std::atomic<bool>* gone, EngineLink& link) {
        loop_.start([this, fd, gone, &link] {
            while (!loop_.stopping()) {
                pollfd fds[2] = {{loop_.wake_fd(), POLLIN, 0}, {fd, POLLRDHUP, 0}};
                if (::poll(fds, 2, -1) < 0 && errno != EINTR) return;
                if (fds[0].revents) loop_.drain();
                if (fds[1].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) {
                    gone->store(true, std::memory_order_release);
                    link.wake_waiters();
                    return;
                }
            }
        });
    }
    ~CallerWatch() { loop_.stop(); }

private:
    PollThread loop_;
};

}  // namespace

// A client connection, shared by its serving thread and its asynchronous operations: whoever
// sends holds send_mu (a completion must not interleave with a reply).
struct Server::Conn {
    UniqueFd fd;
    pid_t pid = 0;
    std::mutex send_mu;
    std::mutex mu;                                                   // ops
    std::map<uint64_t, std::shared_ptr<std::atomic<bool>>> ops;     // tag -> its cancel flag
    // the application closed its end (killed, or exited): its operations stop at their next
    // safe point, as vpipe.ko's do on a fatal signal
    std::atomic<bool> gone{false};

    // header (+ descriptors) + body in one locked send. 0 or -errno.
    int send(const vpipe_agent_msg& h, const void* body, size_t len, const std::vector<int>& fds) {
        std::lock_guard lk(send_mu);
        int r = send_msg_fds(fd.get(), &h, sizeof(h), fds.empty() ? nullptr : fds.data(), fds.size());
        if (r == 0 && len) r = send_msg_fds(fd.get(), body, len, nullptr, 0);
        return r;
    }
};

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

void Server::serve(UniqueFd conn_fd) {
    auto c = std::make_shared<Conn>();
    c->fd = std::move(conn_fd);
    const int cfd = c->fd.get();
    {
        std::lock_guard lk(mu_);
        client_fds_.insert(cfd);
    }
    PeerCred cred{};
    peer_cred(cfd, &cred);
    c->pid = cred.pid;
    spdlog::debug("client pid {} uid {} connected", cred.pid, cred.uid);
    for (;;) {
        vpipe_agent_msg hdr{};
        std::vector<UniqueFd> fds;
        if (recv_msg_fds(cfd, &hdr, sizeof(hdr), &fds, 2) < 0) break;
        const size_t want = payload_size(hdr.cmd);
        if (hdr.magic != VPIPE_AGENT_MAGIC || want == SIZE_MAX || !length_ok(hdr, want)) {
            spdlog::warn("client pid {}: malformed message; closing", cred.pid);
            break;
        }
        union {
            vpipe_ioc_op op;
            vpipe_ioc_submit submit;
            vpipe_ioc_create create;
            int32_t handle;
            uint64_t tag;
            vpipe_ioc_stats stats;
        } body{};
        if (want && recv_msg_fds(cfd, &body, want, &fds, 2) < 0) break;
        // an operation's head and tail (socket destinations) follow the structure
        std::vector<uint8_t> hdtr;
        if (hdr.cmd == VPIPE_IOC_OP || hdr.cmd == VPIPE_AGENT_SUBMIT) {
            const vpipe_ioc_op& op = hdr.cmd == VPIPE_IOC_OP ? body.op : body.submit.op;
            if (op.head_len > VPIPE_HDTR_MAX || op.tail_len > VPIPE_HDTR_MAX ||
                hdr.length != want + op.head_len + op.tail_len) {
                spdlog::warn("client pid {}: malformed head/tail lengths; closing", cred.pid);
                break;
            }
            hdtr.resize(size_t{op.head_len} + op.tail_len);
            if (!hdtr.empty() && recv_msg_fds(cfd, hdtr.data(), hdtr.size(), &fds, 2) < 0) break;
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
            if (op_header_ok(op) < 0) {
                reply.result = -EINVAL;
            } else if (fds.size() != 2) {
                reply.result = -EBADF;
            } else {
                CallerWatch watch(cfd, &c->gone, ctx_.link);
                reply.result = run_operation(ctx_, fds[0].get(), fds[1].get(), &op, hdtr.data(),
                                             hdtr.data() + op.head_len, &new_in, &new_out, nullptr, &c->gone);
                attach_restored(&op, new_in, new_out, &reply_fds);
            }
            if (op.op < ctx_.stats.ops.size() && reply.result == 0) ctx_.stats.ops[op.op]++;
            if (reply.result < 0) ctx_.stats.ops_failed++;
            break;
        }
        case VPIPE_AGENT_SUBMIT: {
            // accepted or refused now; the operation runs in a thread of its own and its
            // completion follows on this connection
            vpipe_ioc_op op = body.submit.op;
            const uint64_t tag = body.submit.tag;
            if (op_header_ok(op) < 0 || op.op < VPIPE_IOC_FILE_TO_FILE || op.op > VPIPE_IOC_SOCKET_TO_SOCKET) {
                reply.result = -EINVAL;
            } else if (fds.size() != 2) {
                reply.result = -EBADF;
            } else {
                std::lock_guard lk(c->mu);
                if (c->ops.size() >= VPIPE_ASYNC_MAX)
                    reply.result = -EAGAIN;
                else if (c->ops.count(tag))
                    reply.result = -EEXIST;
                else
                    c->ops[tag] = std::make_shared<std::atomic<bool>>(false);
            }
            if (reply.result < 0) {
                ctx_.stats.ops_failed++;
                break;
            }
            // the accept goes out before the completion can (same lock, sent first)
            if (c->send(reply, nullptr, 0, {}) < 0) {
                std::lock_guard lk(c->mu);
                c->ops.erase(tag);
                goto out;
            }
            clients_++;   // stop() waits for operations too
            std::thread([this, c, tag, op, h = std::move(hdtr), f = std::move(fds)]() mutable {
                run_async(c, tag, op, std::move(h), std::move(f));
                clients_--;
            }).detach();
            continue;
        }
        case VPIPE_AGENT_CANCEL: {
            std::lock_guard lk(c->mu);
            auto it = c->ops.find(body.tag);
            if (it == c->ops.end())
                reply.result = -ENOENT;
            else
                it->second->store(true, std::memory_order_release);
            break;
        }
        case VPIPE_IOC_STATS:
            ctx_.stats.fill(&body.stats, ctx_.link.connected(), ctx_.link.engine_timeouts());
            reply_len = sizeof(body.stats);
            break;
        default:
            // Handles live in libvpipe for the agent; the kernel module keeps them itself.
            reply.result = -EOPNOTSUPP;
            reply_len = want;
            break;
        }
        reply.length = static_cast<uint32_t>(reply_len);
        int sent = c->send(reply, &body, reply_len, reply_fds);
        // the application holds its own copies now (or the connection is gone)
        for (int fd : reply_fds) ::close(fd);
        if (sent < 0) break;
    }
out:
    {
        std::lock_guard lk(mu_);
        client_fds_.erase(cfd);
    }
    // operations still running cancel: nobody will reap them (their threads hold the connection)
    {
        std::lock_guard lk(c->mu);
        for (auto& [tag, flag] : c->ops) flag->store(true, std::memory_order_release);
    }
    c->gone.store(true, std::memory_order_release);
    ctx_.link.wake_waiters();
    ::shutdown(cfd, SHUT_RD);
    clients_--;
}

void Server::run_async(std::shared_ptr<Conn> c, uint64_t tag, vpipe_ioc_op op, std::vector<uint8_t> hdtr,
                       std::vector<UniqueFd> fds) {
    std::shared_ptr<std::atomic<bool>> cancel;
    {
        std::lock_guard lk(c->mu);
        cancel = c->ops[tag];
    }
    vpipe_ioc_completion done{};
    int new_in = -1, new_out = -1;
    op.new_in_fd = op.new_out_fd = -1;
    if (cancel->load(std::memory_order_acquire)) {
        // cancelled before it started: nothing touched
        op.moved = op.offloaded = op.guest_copied = op.zero_filled = op.hdtr_moved = 0;
        op.paths = op.requests = 0;
        done.result = -ECANCELED;
    } else {
        done.result = run_operation(ctx_, fds[0].get(), fds[1].get(), &op, hdtr.data(),
                                    hdtr.data() + op.head_len, &new_in, &new_out, cancel.get(), &c->gone);
        // stopped at a safe point because of the cancel: say so, with what moved before it
        if (cancel->load(std::memory_order_acquire) &&
            (done.result == -EINTR || (done.result == 0 && op.moved < op.length)))
            done.result = -ECANCELED;
    }
    fds.clear();   // our copies of the application's descriptors
    std::vector<int> reply_fds;
    attach_restored(&op, new_in, new_out, &reply_fds);
    if (op.op < ctx_.stats.ops.size() && done.result == 0) ctx_.stats.ops[op.op]++;
    if (done.result < 0) ctx_.stats.ops_failed++;
    done.tag = tag;
    done.op = op;
    vpipe_agent_msg h{VPIPE_AGENT_MAGIC, VPIPE_AGENT_COMPLETE, done.result, sizeof(done)};
    {
        // off the in-flight list first: a cancel after this point answers ENOENT
        std::lock_guard lk(c->mu);
        c->ops.erase(tag);
    }
    if (c->send(h, &done, sizeof(done), reply_fds) < 0)
        spdlog::warn("client pid {}: gone before operation {} completed", c->pid, tag);
    for (int fd : reply_fds) ::close(fd);
}

}  // namespace vpipe::agent
