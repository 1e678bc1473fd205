#include "guest_component.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "util/unix_socket.h"

namespace vpipe::lib {
namespace {

using vpipe::UniqueFd;

const char* agent_path() {
    const char* p = std::getenv("VPIPE_AGENT_SOCKET");
    return (p && *p) ? p : "/run/vpipe/agent.sock";
}

// /dev/vpipe, opened once per process; -1 when absent.
int module_fd() {
    static int fd = -1;
    static std::once_flag once;
    std::call_once(once, [] { fd = ::open("/dev/vpipe", O_RDWR | O_CLOEXEC); });
    return fd;
}

// One agent connection per thread: calls block, so threads must not queue behind each other.
struct AgentConn {
    int fd = -1;
    ~AgentConn() {
        if (fd >= 0) ::close(fd);
    }
    void reset() {
        if (fd >= 0) ::close(fd);
        fd = -1;
    }
};
thread_local AgentConn t_conn;

int connect_agent() {
    if (t_conn.fd >= 0) return 0;
    UniqueFd fd = connect_unix(agent_path());
    if (!fd) return -errno;
    t_conn.fd = fd.release();
    return 0;
}

// Receives exactly len bytes plus the descriptors attached to them (at most 2).
int recv_all_fds(int fd, void* buf, size_t len, int* fds, size_t* nfds) {
    std::vector<UniqueFd> got;
    int r = recv_msg_fds(fd, buf, len, &got, 2);
    for (auto& f : got) fds[(*nfds)++] = f.release();
    return r;
}

// One request/reply exchange with the agent. Transport failures return -errno with the
// connection reset; the agent's own answer comes back in *result. Descriptors the agent
// returns (restored sockets) land in rfds[0..*nrfds).
int exchange(uint32_t cmd, void* body, size_t len, const int* fds, size_t nfds, int* result,
             int* rfds = nullptr, size_t* nrfds = nullptr, const void* extra1 = nullptr,
             size_t len1 = 0, const void* extra2 = nullptr, size_t len2 = 0) {
    int dummy_fds[2];
    size_t dummy_n = 0;
    if (!rfds) {
        rfds = dummy_fds;
        nrfds = &dummy_n;
    }
    *nrfds = 0;
    if (int r = connect_agent(); r < 0) return r;
    vpipe_agent_msg hdr{VPIPE_AGENT_MAGIC, cmd, 0, static_cast<uint32_t>(len + len1 + len2)};
    // Header, body (and an operation's head and tail) in one message so the descriptors
    // travel with the first byte.
    char buf[sizeof(hdr) + sizeof(vpipe_ioc_stats) + sizeof(vpipe_ioc_op)];
    std::vector<char> big;
    char* out = buf;
    const size_t total = sizeof(hdr) + len + len1 + len2;
    if (total > sizeof(buf)) {
        big.resize(total);
        out = big.data();
    }
    std::memcpy(out, &hdr, sizeof(hdr));
    if (len) std::memcpy(out + sizeof(hdr), body, len);
    if (len1) std::memcpy(out + sizeof(hdr) + len, extra1, len1);
    if (len2) std::memcpy(out + sizeof(hdr) + len + len1, extra2, len2);
    int r = send_msg_fds(t_conn.fd, out, total, fds, nfds);
    vpipe_agent_msg rep{};
    if (r == 0) {
        r = recv_all_fds(t_conn.fd, &rep, sizeof(rep), rfds, nrfds);
        // The request reached the agent and no reply came: it went away while it had the
        // request (killed mid-operation). Not "the agent restarted since the last call" (that
        // fails the send with EPIPE): the caller must not send the request again.
        if (r == -ECONNRESET || r == -EPIPE) r = -ECONNABORTED;
    }
    if (r == 0 && (rep.magic != VPIPE_AGENT_MAGIC || rep.cmd != cmd || rep.length > sizeof(buf)))
        r = -EPROTO;
    if (r == 0 && rep.length) {
        if (rep.length != len && !(cmd == VPIPE_IOC_STATS && rep.length == sizeof(vpipe_ioc_stats)))
            r = -EPROTO;
        else
            r = recv_msg_fds(t_conn.fd, body, rep.length, nullptr, 0);
    }
    if (r < 0) {
        t_conn.reset();
        for (size_t i = 0; i < *nrfds; ++i) ::close(rfds[i]);
        *nrfds = 0;
        return r;
    }
    if (rfds == dummy_fds)
        for (size_t i = 0; i < dummy_n; ++i) ::close(dummy_fds[i]);
    *result = rep.result;
    return 0;
}

// A socket that behaves like one whose peer reset the connection (pending ECONNRESET, then
// EPIPE / EOF), as the agent makes for a dead connection: a loopback pair whose accepted end is
// closed with RST. -1 when it cannot be made.
int make_reset_socket(int like_fd) {
    int l = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0) return -1;
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof(a);
    int c = -1, acc = -1;
    if (::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 && ::listen(l, 1) == 0 &&
        ::getsockname(l, reinterpret_cast<sockaddr*>(&a), &al) == 0 &&
        (c = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) >= 0 &&
        ::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
        (acc = ::accept4(l, nullptr, nullptr, SOCK_CLOEXEC)) >= 0) {
        linger lg{1, 0};
        ::setsockopt(acc, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        ::close(acc);  // RST
        pollfd p{c, POLLIN, 0};
        ::poll(&p, 1, 100);  // the RST crosses loopback at once; bounded wait until c shows it
        int fl = ::fcntl(like_fd, F_GETFL);
        if (fl >= 0 && (fl & O_NONBLOCK)) ::fcntl(c, F_SETFL, ::fcntl(c, F_GETFL) | O_NONBLOCK);
    } else if (c >= 0) {
        ::close(c);
        c = -1;
    }
    ::close(l);
    return c;
}

// Puts the restored socket `fresh` on the application's descriptor number `target`, keeping
// target's FD_CLOEXEC (the number never becomes free: no race with other threads).
int install(int fresh, int target) {
    int fl = ::fcntl(target, F_GETFD);
    int r = 0;
    if (fl < 0 || ::dup3(fresh, target, (fl & FD_CLOEXEC) ? O_CLOEXEC : 0) < 0) r = -errno;
    ::close(fresh);
    return r;
}

}  // namespace

int component_op(vpipe_ioc_op* op, int in_fd, int out_fd, const void* head, const void* tail) {
    if (int mfd = module_fd(); mfd >= 0) {
        op->in_fd = in_fd;
        op->out_fd = out_fd;
        op->head = reinterpret_cast<uintptr_t>(head);
        op->tail = reinterpret_cast<uintptr_t>(tail);
        op->new_in_fd = op->new_out_fd = -1;
        int result = ::ioctl(mfd, VPIPE_IOC_OP, op) < 0 ? -errno : 0;
        // The module installed restored sockets as new descriptors of ours; put them in place.
        int ri = op->new_in_fd >= 0 ? install(op->new_in_fd, in_fd) : 0;
        int ro = op->new_out_fd >= 0 ? install(op->new_out_fd, out_fd) : 0;
        if (result == 0 && (ri < 0 || ro < 0)) result = ri < 0 ? ri : ro;
        return result;
    }
    const int fds[2] = {in_fd, out_fd};
    op->in_fd = 0;   // over the socket: indexes of the passed descriptors
    op->out_fd = 1;
    int result = 0;
    int rfds[2];
    size_t nr = 0;
    op->head = op->tail = 0;   // over the socket the bytes follow the structure
    const vpipe_ioc_op sent = *op;
    int r = exchange(VPIPE_IOC_OP, op, sizeof(*op), fds, 2, &result, rfds, &nr, head, op->head_len,
                     tail, op->tail_len);
    if (r == -EPIPE || r == -ECONNRESET) {  // the agent restarted since our last call: once more
        *op = sent;
        r = exchange(VPIPE_IOC_OP, op, sizeof(*op), fds, 2, &result, rfds, &nr, head, op->head_len,
                     tail, op->tail_len);
    }
    if (r == -ECONNABORTED) {
        // The agent died holding the operation: it may have frozen the sockets (left in repair
        // mode, their flow blocked) and dom0 may hold the connections. Their state is unknown,
        // so, as for a connection dom0 died holding (VPIPE_EPF_TAKEN), the socket descriptors
        // become reset sockets: never a stale connection the peer no longer follows.
        const bool in_sock = op->op == VPIPE_IOC_SOCKET_TO_FILE || op->op == VPIPE_IOC_SOCKET_TO_SOCKET;
        const bool out_sock = op->op == VPIPE_IOC_FILE_TO_SOCKET || op->op == VPIPE_IOC_SOCKET_TO_SOCKET;
        if (in_sock)
            if (int d = make_reset_socket(in_fd); d >= 0) install(d, in_fd);
        if (out_sock)
            if (int d = make_reset_socket(out_fd); d >= 0) install(d, out_fd);
        return r;
    }
    if (r < 0) return r;
    // Socket endpoints come back as new sockets (the connection restored from dom0's final
    // state): they replace the application's descriptors in place.
    bool used[2] = {false, false};
    auto take = [&](int32_t idx, int target) -> int {
        if (idx < 0) return 0;
        if (static_cast<size_t>(idx) >= nr || used[idx]) return -EPROTO;
        used[idx] = true;
        return install(rfds[idx], target);
    };
    int ri = take(op->new_in_fd, in_fd);
    int ro = take(op->new_out_fd, out_fd);
    for (size_t i = 0; i < nr; ++i)
        if (!used[i]) ::close(rfds[i]);
    if (result == 0 && (ri < 0 || ro < 0)) result = ri < 0 ? ri : ro;
    return result;
}

int install_restored(const vpipe_ioc_op& op, int in_fd, int out_fd, int* fds, size_t nfds) {
    bool used[2] = {false, false};
    auto take = [&](int32_t idx, int target) -> int {
        if (idx < 0) return 0;
        if (static_cast<size_t>(idx) >= nfds || used[idx]) return -EPROTO;
        used[idx] = true;
        return install(fds[idx], target);
    };
    int ri = take(op.new_in_fd, in_fd);
    int ro = take(op.new_out_fd, out_fd);
    for (size_t i = 0; i < nfds; ++i)
        if (!used[i]) ::close(fds[i]);
    return ri < 0 ? ri : ro;
}

int agent_connect_queue() {
    UniqueFd fd = connect_unix(agent_path());
    if (!fd) return -errno;
    return fd.release();
}

namespace {

// One message from the agent: a reply (returned in *rep) or a completion (given to sink).
// 1: a reply, 0: a completion, -errno.
int read_message(int conn, vpipe_agent_msg* rep, const CompletionSink& sink) {
    vpipe_agent_msg h{};
    int fds[2];
    size_t nfds = 0;
    int r = recv_all_fds(conn, &h, sizeof(h), fds, &nfds);
    if (r < 0) return r;
    auto close_fds = [&] {
        for (size_t i = 0; i < nfds; ++i) ::close(fds[i]);
    };
    if (h.magic != VPIPE_AGENT_MAGIC) {
        close_fds();
        return -EPROTO;
    }
    if (h.cmd == VPIPE_AGENT_COMPLETE) {
        AgentCompletion c;
        if (h.length != sizeof(c.c) || (r = recv_msg_fds(conn, &c.c, sizeof(c.c), nullptr, 0)) < 0) {
            close_fds();
            return r < 0 ? r : -EPROTO;
        }
        for (size_t i = 0; i < nfds; ++i) c.fds[i] = fds[i];
        c.nfds = nfds;
        sink(c);
        return 0;
    }
    close_fds();
    if (h.length != 0) return -EPROTO;
    *rep = h;
    return 1;
}

int request(int conn, uint32_t cmd, const void* body, size_t len, const int* fds, size_t nfds,
            const void* extra, size_t elen, const CompletionSink& sink, int* result) {
    vpipe_agent_msg hdr{VPIPE_AGENT_MAGIC, cmd, 0, static_cast<uint32_t>(len + elen)};
    std::vector<char> out(sizeof(hdr) + len + elen);
    std::memcpy(out.data(), &hdr, sizeof(hdr));
    std::memcpy(out.data() + sizeof(hdr), body, len);
    if (elen) std::memcpy(out.data() + sizeof(hdr) + len, extra, elen);
    if (int r = send_msg_fds(conn, out.data(), out.size(), fds, nfds); r < 0) return r;
    for (;;) {
        vpipe_agent_msg rep{};
        int r = read_message(conn, &rep, sink);
        if (r < 0) return r;
        if (r == 0) continue;
        if (rep.cmd != cmd) return -EPROTO;
        *result = rep.result;
        return 0;
    }
}

}  // namespace

int agent_submit(int conn, uint64_t tag, const vpipe_ioc_op& op, int in_fd, int out_fd, const void* head,
                 const void* tail, const CompletionSink& sink, int* refusal) {
    vpipe_ioc_submit s{};
    s.tag = tag;
    s.op = op;
    s.op.in_fd = 0;
    s.op.out_fd = 1;
    s.op.head = s.op.tail = 0;
    std::vector<uint8_t> hdtr(size_t{op.head_len} + op.tail_len);
    if (op.head_len) std::memcpy(hdtr.data(), head, op.head_len);
    if (op.tail_len) std::memcpy(hdtr.data() + op.head_len, tail, op.tail_len);
    const int fds[2] = {in_fd, out_fd};
    int result = 0;
    int r = request(conn, VPIPE_AGENT_SUBMIT, &s, sizeof(s), fds, 2, hdtr.data(), hdtr.size(), sink, &result);
    if (r < 0) return r;
    *refusal = result;
    return result < 0 ? 1 : 0;
}

int agent_cancel(int conn, uint64_t tag, const CompletionSink& sink, int* result) {
    return request(conn, VPIPE_AGENT_CANCEL, &tag, sizeof(tag), nullptr, 0, nullptr, 0, sink, result);
}

int agent_drain(int conn, const CompletionSink& sink) {
    int n = 0;
    for (;;) {
        pollfd p{conn, POLLIN, 0};
        int pr = ::poll(&p, 1, 0);
        if (pr < 0) return errno == EINTR ? n : -errno;
        if (pr == 0) return n;
        if (p.revents & (POLLERR | POLLHUP) && !(p.revents & POLLIN)) return -ECONNRESET;
        vpipe_agent_msg rep{};
        int r = read_message(conn, &rep, sink);
        if (r < 0) return r;
        if (r == 1) return -EPROTO;   // a reply nobody asked for
        ++n;
    }
}

bool module_present() { return module_fd() >= 0; }

int module_open_queue() {
    int fd = ::open("/dev/vpipe", O_RDWR | O_CLOEXEC | O_NONBLOCK);
    return fd < 0 ? -errno : fd;
}

int module_submit(int qfd, uint64_t tag, const vpipe_ioc_op& op, int in_fd, int out_fd, const void* head,
                  const void* tail) {
    vpipe_ioc_submit s{};
    s.tag = tag;
    s.op = op;
    s.op.in_fd = in_fd;
    s.op.out_fd = out_fd;
    // the module copies head and tail in before the submit returns
    s.op.head = reinterpret_cast<uintptr_t>(head);
    s.op.tail = reinterpret_cast<uintptr_t>(tail);
    s.op.new_in_fd = s.op.new_out_fd = -1;
    return ::ioctl(qfd, VPIPE_IOC_SUBMIT, &s) < 0 ? -errno : 0;
}

int module_cancel(int qfd, uint64_t tag) { return ::ioctl(qfd, VPIPE_IOC_CANCEL, &tag) < 0 ? -errno : 0; }

int module_drain(int qfd, const CompletionSink& sink) {
    int n = 0;
    for (;;) {
        vpipe_ioc_completion recs[16];
        ssize_t got = ::read(qfd, recs, sizeof(recs));
        if (got < 0) {
            if (errno == EINTR) continue;
            return errno == EAGAIN ? n : -errno;
        }
        if (got == 0 || got % sizeof(recs[0]) != 0) return -EPROTO;
        for (size_t i = 0; i < static_cast<size_t>(got) / sizeof(recs[0]); ++i) {
            // the module installed the restored sockets in our table: hand them on as the
            // agent's attached descriptors (op's new_*_fd become their indexes)
            AgentCompletion c;
            c.c = recs[i];
            for (int32_t* fd : {&c.c.op.new_in_fd, &c.c.op.new_out_fd}) {
                if (*fd < 0) continue;
                c.fds[c.nfds] = *fd;
                *fd = static_cast<int32_t>(c.nfds++);
            }
            sink(c);
            ++n;
        }
    }
}

int component_stats(vpipe_ioc_stats* out) {
    if (int mfd = module_fd(); mfd >= 0) return ::ioctl(mfd, VPIPE_IOC_STATS, out) < 0 ? -errno : 0;
    int result = 0;
    int r = exchange(VPIPE_IOC_STATS, out, 0, nullptr, 0, &result);
    return r < 0 ? r : result;
}

}  // namespace vpipe::lib
