// libvpipe's public functions (vpipe.h): handles, the four operations, results and counters.
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <vpipe/abi/ioctl.h>
#include <vpipe/vpipe.h>

#include "fallback.h"
#include "guest_component.h"
#include "threshold.h"

namespace {

enum class Kind { kNone, kFile, kTcp };

struct Handle {
    bool used = false;
    int in_fd = -1, out_fd = -1;
    Kind in_kind = Kind::kNone, out_kind = Kind::kNone;
};

std::mutex g_handles_mu;
std::vector<Handle> g_handles;

std::atomic<int> g_fallback{-1};  // -1: not decided yet (read the environment once)

struct Counters {
    std::atomic<uint64_t> ops{0}, ops_offloaded{0}, ops_fallback{0}, ops_failed{0}, ops_below{0}, ops_cached{0};
    std::atomic<uint64_t> bytes_offloaded{0}, bytes_guest{0}, bytes_zero_filled{0};
} g_counters;

// A head or a tail gathered from iovecs into one buffer.
struct Bytes {
    std::vector<uint8_t> data;
    const uint8_t* ptr() const { return data.empty() ? nullptr : data.data(); }
    uint32_t size() const { return static_cast<uint32_t>(data.size()); }
};

// 0, or -EINVAL (negative count, NULL base, longer than VPIPE_HDTR_MAX)
int gather(const struct iovec* iov, int cnt, Bytes* out) {
    out->data.clear();
    if (cnt < 0 || (cnt > 0 && !iov)) return -EINVAL;
    size_t total = 0;
    for (int i = 0; i < cnt; ++i) {
        if (iov[i].iov_len && !iov[i].iov_base) return -EINVAL;
        total += iov[i].iov_len;
        if (total > VPIPE_HDTR_MAX) return -EINVAL;
    }
    out->data.reserve(total);
    for (int i = 0; i < cnt; ++i) {
        const auto* b = static_cast<const uint8_t*>(iov[i].iov_base);
        out->data.insert(out->data.end(), b, b + iov[i].iov_len);
    }
    return 0;
}

thread_local vpipe_result t_last{};

bool fallback_enabled() {
    int v = g_fallback.load();
    if (v < 0) {
        const char* env = std::getenv("VPIPE_NO_FALLBACK");
        v = (env && *env && std::strcmp(env, "0") != 0) ? 0 : 1;
        int expected = -1;
        g_fallback.compare_exchange_strong(expected, v);
        v = g_fallback.load();
    }
    return v != 0;
}

// Classifies a descriptor; -errno for closed ones. `likely_socket`: ask the socket layer first
// (one getsockopt answers for a TCP socket; this runs on every call, also below the threshold,
// where a 16 KiB sendfile costs only a few microseconds).
int classify(int fd, Kind* kind, bool likely_socket = false) {
    if (fd < 0) return -EBADF;
    if (likely_socket) {
        int proto = 0;
        socklen_t len = sizeof(proto);
        if (::getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &len) == 0) {
            // TCP runs only on stream sockets (MPTCP reports IPPROTO_MPTCP)
            *kind = proto == IPPROTO_TCP ? Kind::kTcp : Kind::kNone;
            return 0;
        }
        if (errno == EBADF) return -EBADF;
    }
    struct stat st{};
    if (::fstat(fd, &st) < 0) return -EBADF;
    if (S_ISREG(st.st_mode)) {
        *kind = Kind::kFile;
        return 0;
    }
    if (S_ISSOCK(st.st_mode)) {
        int type = 0, proto = 0;
        socklen_t len = sizeof(type);
        if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_STREAM) {
            len = sizeof(proto);
            if (::getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &len) == 0 && proto == IPPROTO_TCP) {
                *kind = Kind::kTcp;
                return 0;
            }
        }
    }
    *kind = Kind::kNone;
    return 0;
}

const char* fallback_reason(int err) {
    switch (err) {
    case 0: return "below the offload threshold";
    case ENOENT:
    case ECONNREFUSED: return "no vPipe guest component (no /dev/vpipe, no agent socket)";
    case EHOSTDOWN: return "the guest component has no connection to the dom0 engine";
    case ENXIO: return "a file is not on one of this VM's virtual disks";
    case EOPNOTSUPP: return "the guest component cannot offload this operation";
    case EALREADY: return "the range is in the guest's page cache (cache rule)";
    default: return "offload unavailable";
    }
}

// What the guest component checks first (docs/protocol.md section 1), checked here too so that
// an operation gets the same error whichever path the threshold picks: the source readable,
// the destination writable and not O_APPEND (files), one file's ranges not overlapping.
int check_modes(uint32_t opcode, int in_fd, int out_fd, uint64_t in_off, uint64_t out_off, size_t length) {
    const bool in_file = opcode == VPIPE_IOC_FILE_TO_FILE || opcode == VPIPE_IOC_FILE_TO_SOCKET;
    const bool out_file = opcode == VPIPE_IOC_FILE_TO_FILE || opcode == VPIPE_IOC_SOCKET_TO_FILE;
    // a TCP socket is always open for reading and writing: only files need asking
    const int ifl = in_file ? ::fcntl(in_fd, F_GETFL) : O_RDWR, ofl = out_file ? ::fcntl(out_fd, F_GETFL) : O_RDWR;
    if (ifl < 0 || ofl < 0) return -EBADF;
    if ((ifl & O_ACCMODE) == O_WRONLY || (ifl & O_PATH)) return -EBADF;
    if ((ofl & O_ACCMODE) == O_RDONLY || (ofl & O_PATH)) return -EBADF;
    if (out_file && (ofl & O_APPEND)) return -EINVAL;
    if (in_file && out_file) {
        struct stat a{}, b{};
        if (::fstat(in_fd, &a) == 0 && ::fstat(out_fd, &b) == 0 && a.st_dev == b.st_dev &&
            a.st_ino == b.st_ino && in_off < out_off + length && out_off < in_off + length)
            return -EINVAL;
    }
    return 0;
}

// Errors that mean "vPipe can't do this here" rather than "this request is wrong".
bool may_fall_back(int err) {
    return err == ENOENT || err == ECONNREFUSED || err == EHOSTDOWN || err == ENXIO ||
           err == EOPNOTSUPP || err == EALREADY;
}

ssize_t fail(int err, const char* why) {
    t_last = {};
    t_last.path = VPIPE_RESULT_FAILED;
    t_last.error = err;
    t_last.reason = why;
    g_counters.ops_failed++;
    errno = err;
    return -1;
}

// The classic path: head, data, tail. Returns the data bytes moved (*hdtr_moved the head and
// tail bytes written), or -errno when nothing was written at all. `stop`: a queue's fallback
// worker, which may be asked to stop (stop->stopped tells whether it did).
int64_t classic(uint32_t opcode, int in_fd, int out_fd, uint64_t in_off, uint64_t out_off,
                size_t length, const Bytes& head, const Bytes& tail, uint64_t* hdtr_moved,
                vpipe::lib::Stop* stop = nullptr) {
    *hdtr_moved = 0;
    if (!head.data.empty()) {
        size_t sent = 0;
        int r = vpipe::lib::fallback_send_all(out_fd, head.data.data(), head.data.size(), length > 0, stop, &sent);
        *hdtr_moved = sent;
        if (r < 0) return sent ? 0 : r;
    }
    int64_t moved = 0;
    if (length) {
        switch (opcode) {
        case VPIPE_IOC_FILE_TO_FILE: moved = vpipe::lib::fallback_file_to_file(in_fd, in_off, out_fd, out_off, length, stop); break;
        case VPIPE_IOC_FILE_TO_SOCKET: moved = vpipe::lib::fallback_file_to_socket(in_fd, in_off, out_fd, length, stop); break;
        case VPIPE_IOC_SOCKET_TO_FILE: moved = vpipe::lib::fallback_socket_to_file(in_fd, out_fd, out_off, length, stop); break;
        default: moved = vpipe::lib::fallback_socket_to_socket(in_fd, out_fd, length, stop); break;
        }
    }
    if (moved < 0) return *hdtr_moved ? 0 : moved;  // the head went out: a short count
    if (static_cast<uint64_t>(moved) == length && !tail.data.empty()) {
        size_t sent = 0;
        (void)vpipe::lib::fallback_send_all(out_fd, tail.data.data(), tail.data.size(), false, stop, &sent);
        *hdtr_moved += sent;
    }
    return moved;
}

// An operation's arguments, checked, with its head and tail gathered.
struct Args {
    uint32_t opcode = 0;
    int in_fd = -1, out_fd = -1;
    uint64_t in_off = 0, out_off = 0;
    size_t length = 0;
    Bytes head, tail;
    bool hdtr = false;

    Args() = default;
    Args(uint32_t op, int in, int out, uint64_t ioff, uint64_t ooff, size_t len)
        : opcode(op), in_fd(in), out_fd(out), in_off(ioff), out_off(ooff), length(len) {}
};

// What a call returns and what vpipe_last_result / a completion says about it.
struct Outcome {
    ssize_t ret = 0;
    int err = 0;
    vpipe_result res{};
    int64_t value() const { return ret >= 0 ? ret : -static_cast<int64_t>(err); }
};

Outcome failed(int err, const char* why) {
    Outcome o;
    o.ret = -1;
    o.err = err;
    o.res.path = VPIPE_RESULT_FAILED;
    o.res.error = err;
    o.res.reason = why;
    g_counters.ops_failed++;
    return o;
}

void account(vpipe_result* r, const vpipe_ioc_op& op) {
    r->moved = op.moved;
    r->offloaded = op.offloaded;
    r->guest_copied = op.guest_copied;
    r->zero_filled = op.zero_filled;
    r->requests = op.requests;
    r->paths = op.paths;
    r->hdtr_moved = op.hdtr_moved;
}

// The checks every operation gets before any path is chosen. 0, or the failed outcome in *o.
bool check_args(Args* a, const struct vpipe_hdtr* hdtr, Outcome* o) {
    Kind ik, ok;
    const uint32_t opcode = a->opcode;
    const Kind want_in = (opcode == VPIPE_IOC_FILE_TO_FILE || opcode == VPIPE_IOC_FILE_TO_SOCKET) ? Kind::kFile : Kind::kTcp;
    const Kind want_out = (opcode == VPIPE_IOC_FILE_TO_FILE || opcode == VPIPE_IOC_SOCKET_TO_FILE) ? Kind::kFile : Kind::kTcp;
    if (classify(a->in_fd, &ik, want_in == Kind::kTcp) < 0 || classify(a->out_fd, &ok, want_out == Kind::kTcp) < 0) {
        *o = failed(EBADF, "bad descriptor");
        return false;
    }
    if (ik != want_in || ok != want_out) {
        *o = failed(EINVAL, "descriptor types do not match the operation");
        return false;
    }
    if (a->in_off > static_cast<uint64_t>(LLONG_MAX) || a->out_off > static_cast<uint64_t>(LLONG_MAX)) {
        *o = failed(EINVAL, "negative offset");
        return false;
    }
    if (int r = check_modes(opcode, a->in_fd, a->out_fd, a->in_off, a->out_off, a->length); r < 0) {
        *o = failed(-r, "a descriptor's access mode or the ranges do not allow the operation");
        return false;
    }
    a->hdtr = hdtr != nullptr;
    if (hdtr && (gather(hdtr->headers, hdtr->hdr_cnt, &a->head) < 0 || gather(hdtr->trailers, hdtr->trl_cnt, &a->tail) < 0)) {
        *o = failed(EINVAL, "head or tail longer than VPIPE_HDTR_MAX, or a bad iovec");
        return false;
    }
    if (a->length > static_cast<size_t>(SSIZE_MAX)) a->length = SSIZE_MAX;
    return true;
}

bool nothing_to_move(const Args& a) { return a.length == 0 && a.head.size() == 0 && a.tail.size() == 0; }

Outcome empty_outcome() {
    Outcome o;
    o.res.path = VPIPE_RESULT_OFFLOADED;
    o.res.reason = "";
    return o;
}

// -1: ask the guest component; otherwise the classic path's reason (0: below the threshold,
// EALREADY: the cache rule).
int decide(const Args& a) {
    if (a.opcode == VPIPE_IOC_FILE_TO_SOCKET && fallback_enabled() && a.length >= vpipe::lib::min_offload() &&
        vpipe::lib::range_cached(a.in_fd, a.in_off, a.length))
        return EALREADY;
    if (a.length > 0 && (!fallback_enabled() || a.length >= vpipe::lib::min_offload())) return -1;
    return 0;
}

vpipe_ioc_op make_op(const Args& a) {
    vpipe_ioc_op op{};
    op.op = a.opcode;
    op.handle = VPIPE_NO_HANDLE;
    op.in_offset = a.in_off;
    op.out_offset = a.out_off;
    op.length = a.length;
    op.head_len = a.head.size();
    op.tail_len = a.tail.size();
    // a forced offload is forced past the cache rule too
    if (!fallback_enabled()) op.flags |= VPIPE_OPF_NO_CACHE_RULE;
    return op;
}

// the classic path (below the threshold: err 0, or vPipe could not offload here); with `stop`
// on a queue's fallback worker, where a cancel ends it like an offloaded one's: -ECANCELED and
// the bytes moved before
Outcome classic_outcome(const Args& a, int err, vpipe::lib::Stop* stop = nullptr) {
    uint64_t hd = 0;
    int64_t moved = classic(a.opcode, a.in_fd, a.out_fd, a.in_off, a.out_off, a.length, a.head, a.tail, &hd, stop);
    if (stop && stop->stopped) {
        Outcome o = failed(ECANCELED, "cancelled");
        o.res.moved = o.res.guest_copied = moved > 0 ? static_cast<uint64_t>(moved) : 0;
        o.res.hdtr_moved = hd;
        g_counters.bytes_guest += o.res.moved;   // what moved before the cancel did move
        return o;
    }
    if (moved < 0) return failed(static_cast<int>(-moved), "the fallback copy failed");
    Outcome o;
    o.res.hdtr_moved = hd;
    o.res.path = VPIPE_RESULT_FALLBACK;
    o.res.error = err;
    o.res.reason = fallback_reason(err);
    o.res.moved = static_cast<uint64_t>(moved);
    o.res.guest_copied = static_cast<uint64_t>(moved);
    g_counters.ops_fallback++;
    if (err == 0) g_counters.ops_below++;
    if (err == EALREADY) {
        g_counters.ops_cached++;
        o.res.paths = VPIPE_PATH_GUEST_CACHE;
    }
    g_counters.bytes_guest += static_cast<uint64_t>(moved);
    o.ret = static_cast<ssize_t>(static_cast<uint64_t>(moved) + hd);
    return o;
}

// The guest component's answer r (0 or -errno) for `op`: offloaded, fallen back or failed.
Outcome component_outcome(const Args& a, const vpipe_ioc_op& op, int r) {
    if (r == 0) {
        Outcome o;
        o.res.path = VPIPE_RESULT_OFFLOADED;
        o.res.reason = "";
        account(&o.res, op);
        g_counters.ops_offloaded++;
        g_counters.bytes_offloaded += op.offloaded;
        g_counters.bytes_guest += op.guest_copied;
        g_counters.bytes_zero_filled += op.zero_filled;
        o.ret = static_cast<ssize_t>(op.moved + (a.hdtr ? op.hdtr_moved : 0));
        return o;
    }
    const int err = -r;
    if (!may_fall_back(err) || !fallback_enabled()) {
        // the component's account of what it did (a request posted, bytes moved before the
        // error, head and tail) stays visible with the error
        Outcome o = failed(err, err == ECANCELED   ? "cancelled"
                                : may_fall_back(err) ? fallback_reason(err)
                                                     : "the offload failed");
        account(&o.res, op);
        if (err == ECANCELED) {   // what moved before the cancel did move
            g_counters.bytes_offloaded += op.offloaded;
            g_counters.bytes_guest += op.guest_copied;
            g_counters.bytes_zero_filled += op.zero_filled;
        }
        return o;
    }
    return classic_outcome(a, err);
}

// ---- descriptors in flight: a socket or a destination file is the operation's alone --------

struct Use {
    int readers = 0;       // source files
    bool exclusive = false;
};
std::mutex g_busy_mu;
// never destroyed: a fallback worker still copying while the process exits may release into it
std::map<int, Use>& g_busy = *new std::map<int, Use>;

bool exclusive_use(uint32_t opcode, bool out) {
    if (out) return true;   // a socket or a destination file
    return opcode == VPIPE_IOC_SOCKET_TO_FILE || opcode == VPIPE_IOC_SOCKET_TO_SOCKET;
}

// 0, or -EBUSY when a descriptor is in another operation's hands
int claim(const Args& a) {
    std::lock_guard lk(g_busy_mu);
    const bool ex_in = exclusive_use(a.opcode, false);
    auto conflict = [&](int fd, bool ex) {
        auto it = g_busy.find(fd);
        if (it == g_busy.end()) return false;
        return it->second.exclusive || (ex && it->second.readers > 0);
    };
    // (one descriptor as both ends is the component's to refuse, as before)
    if (conflict(a.in_fd, ex_in) || conflict(a.out_fd, true)) return -EBUSY;
    Use& i = g_busy[a.in_fd];
    if (ex_in) i.exclusive = true; else i.readers++;
    g_busy[a.out_fd].exclusive = true;
    return 0;
}

void release(const Args& a) {
    std::lock_guard lk(g_busy_mu);
    auto drop = [&](int fd, bool ex) {
        auto it = g_busy.find(fd);
        if (it == g_busy.end()) return;
        if (ex) it->second.exclusive = false; else it->second.readers--;
        if (!it->second.exclusive && it->second.readers <= 0) g_busy.erase(it);
    };
    drop(a.in_fd, exclusive_use(a.opcode, false));
    drop(a.out_fd, true);
}

Outcome run_outcome(uint32_t opcode, int in_fd, int out_fd, uint64_t in_off, uint64_t out_off, size_t length,
                    const struct vpipe_hdtr* hdtr) {
    g_counters.ops++;
    Args a(opcode, in_fd, out_fd, in_off, out_off, length);
    Outcome o;
    if (!check_args(&a, hdtr, &o)) return o;
    if (nothing_to_move(a)) return empty_outcome();
    if (claim(a) < 0) return failed(EBUSY, "a descriptor has an operation in flight");
    int err = decide(a);
    if (err < 0) {
        vpipe_ioc_op op = make_op(a);
        int r = vpipe::lib::component_op(&op, in_fd, out_fd, a.head.ptr(), a.tail.ptr());
        o = component_outcome(a, op, r);
    } else {
        o = classic_outcome(a, err);
    }
    release(a);
    return o;
}

ssize_t run_op(uint32_t opcode, int in_fd, int out_fd, uint64_t in_off, uint64_t out_off,
               size_t length, const struct vpipe_hdtr* hdtr = nullptr) {
    Outcome o = run_outcome(opcode, in_fd, out_fd, in_off, out_off, length, hdtr);
    t_last = o.res;
    if (o.ret < 0) errno = o.err;
    return o.ret;
}


// Looks up a handle and checks it fits the operation.
bool lookup(int handle, Handle* out) {
    std::lock_guard lk(g_handles_mu);
    if (handle < 0 || static_cast<size_t>(handle) >= g_handles.size() || !g_handles[handle].used)
        return false;
    *out = g_handles[handle];
    return true;
}

ssize_t run_handle(int handle, uint32_t opcode, uint64_t in_off, uint64_t out_off, size_t length,
                   const struct vpipe_hdtr* hdtr = nullptr) {
    Handle h;
    if (!lookup(handle, &h)) {
        g_counters.ops++;
        return fail(EBADF, "unknown vPipe handle");
    }
    return run_op(opcode, h.in_fd, h.out_fd, in_off, out_off, length, hdtr);
}

// ---- queues: the non-blocking form -------------------------------------------------------

struct Pending {
    uint64_t user = 0;
    Args args;
};

// A fallback of an asynchronous operation: the classic copy, run by one of the queue's workers
// so that neither the submit nor the reap that learns of it waits for it.
struct FallbackJob {
    uint64_t tag = 0;
    Pending p;
    int err = 0;              // why it falls back (classic_outcome's reason)
    vpipe::lib::Stop stop;    // vpipe_cancel, vpipe_queue_destroy
};

// Fallback copies of one queue running at once; more wait their turn in order.
constexpr size_t kFallbackWorkers = 8;

struct Queue : std::enable_shared_from_this<Queue> {
    std::mutex mu;
    int epfd = -1;     // the completion descriptor: the agent connection + evfd
    int evfd = -1;     // readable while `ready` is not empty
    int conn = -1;     // the component's side of this queue, -1 until the first offload:
                       // an agent connection, or an open of /dev/vpipe (kmod)
    bool kmod = false;
    unsigned depth = VPIPE_QUEUE_DEPTH_DEFAULT;
    uint64_t next_tag = 1;
    std::map<uint64_t, Pending> inflight;   // tag -> operation
    std::deque<vpipe_completion> ready;
    // fallback copies: queued or running (tag -> job), the queued ones in order, the workers
    // (each holds the queue: it outlives a process that exits without destroying it)
    std::map<uint64_t, std::shared_ptr<FallbackJob>> fallbacks;
    std::deque<std::shared_ptr<FallbackJob>> todo;
    std::vector<std::thread> workers;
    size_t idle = 0;          // workers waiting for a job
    bool closing = false;     // vpipe_queue_destroy: no new fallbacks, the workers leave
    std::condition_variable cv;
    ~Queue() {
        if (conn >= 0) ::close(conn);
        if (evfd >= 0) ::close(evfd);
        if (epfd >= 0) ::close(epfd);
    }
};

std::mutex g_queues_mu;
std::vector<std::shared_ptr<Queue>> g_queues;

std::shared_ptr<Queue> queue_of(int id) {
    std::lock_guard lk(g_queues_mu);
    if (id < 0 || static_cast<size_t>(id) >= g_queues.size()) return nullptr;
    return g_queues[id];
}

void post(Queue& q, uint64_t user, const Outcome& o) {
    vpipe_completion c{};
    c.user_data = user;
    c.res = o.value();
    c.result = o.res;
    if (!c.result.reason) c.result.reason = "";
    q.ready.push_back(c);
    const uint64_t one = 1;
    (void)!::write(q.evfd, &one, sizeof(one));
}

// ---- fallbacks off the caller's thread ----

// The sockets of an operation, put in non-blocking mode for the copy (and back after it): every
// wait is then a poll that a stop interrupts, never a send or sendfile stuck in the kernel. The
// sockets are the operation's while it is in flight.
class NonBlocking {
public:
    explicit NonBlocking(const Args& a) {
        const bool in_sock = a.opcode == VPIPE_IOC_SOCKET_TO_FILE || a.opcode == VPIPE_IOC_SOCKET_TO_SOCKET;
        const bool out_sock = a.opcode == VPIPE_IOC_FILE_TO_SOCKET || a.opcode == VPIPE_IOC_SOCKET_TO_SOCKET;
        if (in_sock) set(a.in_fd);
        if (out_sock) set(a.out_fd);
    }
    ~NonBlocking() {
        for (int i = 0; i < n_; ++i) (void)::fcntl(fd_[i], F_SETFL, fl_[i]);
    }
    NonBlocking(const NonBlocking&) = delete;
    NonBlocking& operator=(const NonBlocking&) = delete;

private:
    void set(int fd) {
        int fl = ::fcntl(fd, F_GETFL);
        if (fl < 0 || (fl & O_NONBLOCK)) return;
        if (::fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return;
        fd_[n_] = fd;
        fl_[n_++] = fl;
    }
    int fd_[2]{}, fl_[2]{}, n_ = 0;
};

// A worker: takes the queue's fallback jobs in order, copies without q.mu, and posts each
// outcome like a component's completion (descriptors released first). Leaves when the queue
// closes; `wake_fd` is its eventfd that a stop request writes.
void fallback_worker(std::shared_ptr<Queue> qp, int wake_fd) {
    Queue& q = *qp;
    std::unique_lock lk(q.mu);
    for (;;) {
        q.cv.wait(lk, [&] { return q.closing || !q.todo.empty(); });
        if (q.todo.empty()) break;
        std::shared_ptr<FallbackJob> job = std::move(q.todo.front());
        q.todo.pop_front();
        q.idle--;
        uint64_t v;
        (void)!::read(wake_fd, &v, sizeof(v));   // a stop meant for the previous job
        job->stop.wake_fd = wake_fd;             // vpipe_cancel writes it (under q.mu)
        lk.unlock();
        Outcome o;
        {
            NonBlocking nb(job->p.args);
            o = classic_outcome(job->p.args, job->err, &job->stop);
        }
        lk.lock();
        job->stop.wake_fd = -1;
        q.fallbacks.erase(job->tag);
        release(job->p.args);
        post(q, job->p.user, o);
        q.idle++;
    }
    ::close(wake_fd);
}

// One more worker (q.mu held). False when none could be started.
bool spawn_worker(Queue& q) {
    int wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake < 0) return false;
    // the worker takes none of the application's signals (it inherits this mask); a SIGPIPE
    // that sendfile raises stays pending on it, harmless
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    bool ok = true;
    try {
        q.workers.emplace_back(fallback_worker, q.shared_from_this(), wake);
    } catch (...) {
        ok = false;
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    if (!ok) {
        ::close(wake);
        return false;
    }
    q.idle++;
    return true;
}

// Hands p's classic copy (reason err) to a worker (q.mu held); p's descriptors stay claimed
// until its completion is posted. `tag`: the one the component had (0: a new one; the order of
// submission, for vpipe_cancel). False (p untouched) when no worker can run it: the caller
// copies itself, as the blocking API does.
bool start_fallback(Queue& q, Pending& p, int err, uint64_t tag = 0) {
    if (q.closing) {   // vpipe_queue_destroy is waiting for the component: cancelled at once
        release(p.args);
        post(q, p.user, failed(ECANCELED, "cancelled"));
        return true;
    }
    if (q.idle <= q.todo.size() && q.workers.size() < kFallbackWorkers) (void)spawn_worker(q);
    if (q.workers.empty()) return false;
    auto job = std::make_shared<FallbackJob>();
    job->tag = tag ? tag : q.next_tag++;
    job->p = std::move(p);
    job->err = err;
    q.fallbacks.emplace(job->tag, job);
    q.todo.push_back(std::move(job));
    q.cv.notify_one();
    return true;
}

// Asks a fallback job to stop at its next chunk boundary or wait (q.mu held).
void stop_fallback(FallbackJob& j) {
    j.stop.requested = true;
    if (j.stop.wake_fd >= 0) {
        const uint64_t one = 1;
        (void)!::write(j.stop.wake_fd, &one, sizeof(one));
    }
}

// A completion from the agent (q.mu held): restored sockets in place, descriptors released,
// the outcome as the blocking call would have it.
void on_agent_completion(Queue& q, vpipe::lib::AgentCompletion& ac) {
    auto it = q.inflight.find(ac.c.tag);
    if (it == q.inflight.end()) {   // not ours: nothing to restore onto
        for (size_t i = 0; i < ac.nfds; ++i) ::close(ac.fds[i]);
        return;
    }
    Pending p = std::move(it->second);
    q.inflight.erase(it);
    int r = vpipe::lib::install_restored(ac.c.op, p.args.in_fd, p.args.out_fd, ac.fds, ac.nfds);
    int result = ac.c.result;
    if (result == 0 && r < 0) result = r;
    // the offload is impossible here: the classic copy goes to a worker, not this reap
    if (result < 0 && may_fall_back(-result) && fallback_enabled() && start_fallback(q, p, -result, ac.c.tag))
        return;
    release(p.args);
    post(q, p.user, component_outcome(p.args, ac.c.op, result));
}

vpipe::lib::CompletionSink sink_of(Queue& q) {
    return [&q](vpipe::lib::AgentCompletion& ac) { on_agent_completion(q, ac); };
}

// The component's side broke (the agent connection; never an open of /dev/vpipe): what was in
// flight is lost with it (q.mu held).
void conn_broken(Queue& q) {
    if (q.conn >= 0) {
        ::epoll_ctl(q.epfd, EPOLL_CTL_DEL, q.conn, nullptr);
        ::close(q.conn);
        q.conn = -1;
    }
    for (auto& [tag, p] : q.inflight) {
        release(p.args);
        post(q, p.user, failed(ECONNABORTED, "the guest component went away during the operation"));
    }
    q.inflight.clear();
}

// The queue's side at the component: its own open of /dev/vpipe when the module is there
// (asynchronous in the kernel, vpipe_async.c), else its own agent connection.
int ensure_conn(Queue& q) {
    if (q.conn >= 0) return 0;
    const bool kmod = vpipe::lib::module_present();
    int fd = kmod ? vpipe::lib::module_open_queue() : vpipe::lib::agent_connect_queue();
    if (fd < 0) return fd;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (::epoll_ctl(q.epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        int e = errno;
        ::close(fd);
        return -e;
    }
    q.conn = fd;
    q.kmod = kmod;
    return 0;
}

// Completions that arrived (q.mu held), from either component.
void drain(Queue& q) {
    if (q.conn < 0) return;
    int r = q.kmod ? vpipe::lib::module_drain(q.conn, sink_of(q)) : vpipe::lib::agent_drain(q.conn, sink_of(q));
    if (r < 0) conn_broken(q);
}

// Asks the component to cancel tag (q.mu held); -ENOENT means its completion is on its way.
void cancel_tag(Queue& q, uint64_t tag) {
    if (q.conn < 0) return;
    if (q.kmod) {
        (void)vpipe::lib::module_cancel(q.conn, tag);
        return;
    }
    int res = 0;
    if (vpipe::lib::agent_cancel(q.conn, tag, sink_of(q), &res) < 0) conn_broken(q);
}

int submit(int qid, uint32_t opcode, int in_fd, int out_fd, uint64_t in_off, uint64_t out_off, size_t length,
           const struct vpipe_hdtr* hdtr, uint64_t user) {
    auto qp = queue_of(qid);
    if (!qp) {
        errno = EBADF;
        return -1;
    }
    Queue& q = *qp;
    std::lock_guard lk(q.mu);
    drain(q);
    if (q.inflight.size() + q.fallbacks.size() + q.ready.size() >= q.depth) {
        errno = EAGAIN;
        return -1;
    }
    g_counters.ops++;
    Pending p;
    p.user = user;
    p.args = Args(opcode, in_fd, out_fd, in_off, out_off, length);
    Args& a = p.args;
    Outcome o;
    auto refuse = [&](const Outcome& f) {
        t_last = f.res;
        errno = f.err;
        return -1;
    };
    if (!check_args(&a, hdtr, &o)) return refuse(o);
    if (nothing_to_move(a)) {
        post(q, user, empty_outcome());
        return 0;
    }
    if (claim(a) < 0) return refuse(failed(EBUSY, "a descriptor has an operation in flight"));
    int err = decide(a);
    if (err < 0) {
        vpipe_ioc_op op = make_op(a);
        int r = ensure_conn(q);
        const uint64_t tag = q.next_tag++;
        int refusal = 0;
        if (r == 0 && q.kmod) {
            r = vpipe::lib::module_submit(q.conn, tag, op, in_fd, out_fd, a.head.ptr(), a.tail.ptr());
            if (r == 0) {
                q.inflight.emplace(tag, std::move(p));
                return 0;
            }
        }
        for (int attempt = 0; r == 0 && !q.kmod && attempt < 2; ++attempt) {
            r = vpipe::lib::agent_submit(q.conn, tag, op, in_fd, out_fd, a.head.ptr(), a.tail.ptr(), sink_of(q), &refusal);
            if (r >= 0) break;
            conn_broken(q);   // the agent restarted since: once more on a new connection
            if (attempt == 0 && (r == -EPIPE || r == -ECONNRESET)) r = ensure_conn(q);
        }
        if (r == 0) {
            q.inflight.emplace(tag, std::move(p));
            return 0;
        }
        if (r > 0) r = refusal;
        if (!may_fall_back(-r) || !fallback_enabled()) {
            release(a);
            return refuse(failed(-r, may_fall_back(-r) ? fallback_reason(-r) : "the guest component refused the operation"));
        }
        err = -r;
    }
    if (start_fallback(q, p, err)) return 0;   // the copy runs on a worker
    o = classic_outcome(a, err);
    release(a);
    post(q, user, o);
    return 0;
}

}  // namespace

extern "C" {

int vpipe_create(int in_fd, int out_fd) {
    Kind ik, ok;
    if (classify(in_fd, &ik) < 0 || classify(out_fd, &ok) < 0) {
        errno = EBADF;
        return -1;
    }
    if (ik == Kind::kNone || ok == Kind::kNone) {
        errno = EINVAL;
        return -1;
    }
    std::lock_guard lk(g_handles_mu);
    size_t i = 0;
    while (i < g_handles.size() && g_handles[i].used) ++i;
    if (i == g_handles.size()) g_handles.emplace_back();
    g_handles[i] = Handle{true, in_fd, out_fd, ik, ok};
    return static_cast<int>(i);
}

int vpipe_destroy(int handle) {
    std::lock_guard lk(g_handles_mu);
    if (handle < 0 || static_cast<size_t>(handle) >= g_handles.size() || !g_handles[handle].used) {
        errno = EBADF;
        return -1;
    }
    g_handles[handle] = Handle{};
    return 0;
}

ssize_t vpipe_file_to_socket(int handle, off_t offset, size_t length) {
    return run_handle(handle, VPIPE_IOC_FILE_TO_SOCKET, static_cast<uint64_t>(offset), 0, length);
}
ssize_t vpipe_socket_to_file(int handle, off_t offset, size_t length) {
    return run_handle(handle, VPIPE_IOC_SOCKET_TO_FILE, 0, static_cast<uint64_t>(offset), length);
}
ssize_t vpipe_socket_to_socket(int handle, size_t length) {
    return run_handle(handle, VPIPE_IOC_SOCKET_TO_SOCKET, 0, 0, length);
}
ssize_t vpipe_file_to_file(int handle, off_t in_offset, size_t length, off_t out_offset) {
    return run_handle(handle, VPIPE_IOC_FILE_TO_FILE, static_cast<uint64_t>(in_offset),
                      static_cast<uint64_t>(out_offset), length);
}

ssize_t vpipe_file_to_socket_fd(int file_fd, int sock_fd, off_t offset, size_t length) {
    return run_op(VPIPE_IOC_FILE_TO_SOCKET, file_fd, sock_fd, static_cast<uint64_t>(offset), 0, length);
}
ssize_t vpipe_socket_to_file_fd(int sock_fd, int file_fd, off_t offset, size_t length) {
    return run_op(VPIPE_IOC_SOCKET_TO_FILE, sock_fd, file_fd, 0, static_cast<uint64_t>(offset), length);
}
ssize_t vpipe_socket_to_socket_fd(int in_fd, int out_fd, size_t length) {
    return run_op(VPIPE_IOC_SOCKET_TO_SOCKET, in_fd, out_fd, 0, 0, length);
}
ssize_t vpipe_file_to_file_fd(int in_fd, int out_fd, off_t in_offset, size_t length, off_t out_offset) {
    return run_op(VPIPE_IOC_FILE_TO_FILE, in_fd, out_fd, static_cast<uint64_t>(in_offset),
                  static_cast<uint64_t>(out_offset), length);
}

ssize_t vpipe_file_to_socket_hdtr(int handle, off_t offset, size_t length, const struct vpipe_hdtr* hdtr) {
    return run_handle(handle, VPIPE_IOC_FILE_TO_SOCKET, static_cast<uint64_t>(offset), 0, length, hdtr);
}
ssize_t vpipe_socket_to_socket_hdtr(int handle, size_t length, const struct vpipe_hdtr* hdtr) {
    return run_handle(handle, VPIPE_IOC_SOCKET_TO_SOCKET, 0, 0, length, hdtr);
}
ssize_t vpipe_file_to_socket_fd_hdtr(int file_fd, int sock_fd, off_t offset, size_t length,
                                     const struct vpipe_hdtr* hdtr) {
    return run_op(VPIPE_IOC_FILE_TO_SOCKET, file_fd, sock_fd, static_cast<uint64_t>(offset), 0, length, hdtr);
}
ssize_t vpipe_socket_to_socket_fd_hdtr(int in_fd, int out_fd, size_t length, const struct vpipe_hdtr* hdtr) {
    return run_op(VPIPE_IOC_SOCKET_TO_SOCKET, in_fd, out_fd, 0, 0, length, hdtr);
}

uint64_t vpipe_min_offload(void) { return vpipe::lib::min_offload(); }
uint64_t vpipe_set_min_offload(uint64_t bytes) { return vpipe::lib::set_min_offload(bytes); }

int vpipe_last_result(struct vpipe_result* out) {
    if (!out) {
        errno = EINVAL;
        return -1;
    }
    *out = t_last;
    if (!out->reason) out->reason = "";
    return 0;
}

int vpipe_set_fallback(int enabled) {
    int prev = fallback_enabled() ? 1 : 0;
    g_fallback = enabled ? 1 : 0;
    return prev;
}

int vpipe_get_stats(struct vpipe_stats* out) {
    if (!out) {
        errno = EINVAL;
        return -1;
    }
    out->ops = g_counters.ops;
    out->ops_offloaded = g_counters.ops_offloaded;
    out->ops_fallback = g_counters.ops_fallback;
    out->ops_failed = g_counters.ops_failed;
    out->ops_below_threshold = g_counters.ops_below;
    out->ops_guest_cache = g_counters.ops_cached;
    out->bytes_offloaded = g_counters.bytes_offloaded;
    out->bytes_guest = g_counters.bytes_guest;
    out->bytes_zero_filled = g_counters.bytes_zero_filled;
    return 0;
}

// ---- queues ----

int vpipe_queue_create(unsigned depth, unsigned flags) {
    if (flags != 0 || depth > VPIPE_ASYNC_MAX) {
        errno = EINVAL;
        return -1;
    }
    auto q = std::make_shared<Queue>();
    q->depth = depth ? depth : VPIPE_QUEUE_DEPTH_DEFAULT;
    q->epfd = ::epoll_create1(EPOLL_CLOEXEC);
    q->evfd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (q->epfd < 0 || q->evfd < 0) return -1;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = q->evfd;
    if (::epoll_ctl(q->epfd, EPOLL_CTL_ADD, q->evfd, &ev) < 0) return -1;
    std::lock_guard lk(g_queues_mu);
    size_t i = 0;
    while (i < g_queues.size() && g_queues[i]) ++i;
    if (i == g_queues.size()) g_queues.emplace_back();
    g_queues[i] = std::move(q);
    return static_cast<int>(i);
}

int vpipe_queue_fd(int queue) {
    auto q = queue_of(queue);
    if (!q) {
        errno = EBADF;
        return -1;
    }
    return q->epfd;
}

int vpipe_queue_destroy(int queue) {
    auto q = queue_of(queue);
    if (!q) {
        errno = EBADF;
        return -1;
    }
    std::vector<std::thread> workers;
    {
        std::lock_guard lk(q->mu);
        q->closing = true;
        if (q->conn >= 0) {
            std::vector<uint64_t> tags;
            for (auto& [tag, p] : q->inflight) tags.push_back(tag);
            for (uint64_t t : tags) cancel_tag(*q, t);
            // wait for every completion: the sockets come back in place
            while (!q->inflight.empty() && q->conn >= 0) {
                pollfd pf{q->conn, POLLIN, 0};
                if (::poll(&pf, 1, 1000) < 0 && errno != EINTR) break;
                drain(*q);
            }
        }
        for (auto& [tag, p] : q->inflight) release(p.args);
        q->inflight.clear();
        // fallback copies stop at their next chunk boundary or wait; the workers leave
        for (auto& [tag, j] : q->fallbacks) stop_fallback(*j);
        workers = std::move(q->workers);
        q->cv.notify_all();
    }
    for (auto& t : workers) t.join();   // each posts its job's outcome (dropped) on the way
    std::lock_guard lk(g_queues_mu);
    g_queues[queue].reset();
    return 0;
}

int vpipe_submit_file_to_socket(int q, int file_fd, int sock_fd, off_t offset, size_t length, uint64_t user_data) {
    return submit(q, VPIPE_IOC_FILE_TO_SOCKET, file_fd, sock_fd, static_cast<uint64_t>(offset), 0, length, nullptr, user_data);
}
int vpipe_submit_socket_to_file(int q, int sock_fd, int file_fd, off_t offset, size_t length, uint64_t user_data) {
    return submit(q, VPIPE_IOC_SOCKET_TO_FILE, sock_fd, file_fd, 0, static_cast<uint64_t>(offset), length, nullptr, user_data);
}
int vpipe_submit_socket_to_socket(int q, int in_fd, int out_fd, size_t length, uint64_t user_data) {
    return submit(q, VPIPE_IOC_SOCKET_TO_SOCKET, in_fd, out_fd, 0, 0, length, nullptr, user_data);
}
int vpipe_submit_file_to_file(int q, int in_fd, int out_fd, off_t in_offset, size_t length, off_t out_offset,
                              uint64_t user_data) {
    return submit(q, VPIPE_IOC_FILE_TO_FILE, in_fd, out_fd, static_cast<uint64_t>(in_offset),
                  static_cast<uint64_t>(out_offset), length, nullptr, user_data);
}
int vpipe_submit_file_to_socket_hdtr(int q, int file_fd, int sock_fd, off_t offset, size_t length,
                                     const struct vpipe_hdtr* hdtr, uint64_t user_data) {
    return submit(q, VPIPE_IOC_FILE_TO_SOCKET, file_fd, sock_fd, static_cast<uint64_t>(offset), 0, length,
                  hdtr, user_data);
}
int vpipe_submit_socket_to_socket_hdtr(int q, int in_fd, int out_fd, size_t length, const struct vpipe_hdtr* hdtr,
                                       uint64_t user_data) {
    return submit(q, VPIPE_IOC_SOCKET_TO_SOCKET, in_fd, out_fd, 0, 0, length, hdtr, user_data);
}

int vpipe_reap(int queue, struct vpipe_completion* out, unsigned max) {
    auto q = queue_of(queue);
    if (!q) {
        errno = EBADF;
        return -1;
    }
    if (!out && max) {
        errno = EINVAL;
        return -1;
    }
    std::lock_guard lk(q->mu);
    drain(*q);
    unsigned n = 0;
    while (n < max && !q->ready.empty()) {
        out[n++] = q->ready.front();
        q->ready.pop_front();
    }
    if (q->ready.empty()) {
        uint64_t v;
        (void)!::read(q->evfd, &v, sizeof(v));
    }
    return static_cast<int>(n);
}

int vpipe_cancel(int queue, uint64_t user_data) {
    auto q = queue_of(queue);
    if (!q) {
        errno = EBADF;
        return -1;
    }
    std::lock_guard lk(q->mu);
    // the first submitted of those in flight: with the component, or a fallback copy
    auto off = std::find_if(q->inflight.begin(), q->inflight.end(), [&](auto& e) { return e.second.user == user_data; });
    auto fb = std::find_if(q->fallbacks.begin(), q->fallbacks.end(), [&](auto& e) { return e.second->p.user == user_data; });
    if (fb != q->fallbacks.end() && (off == q->inflight.end() || fb->first < off->first)) {
        stop_fallback(*fb->second);   // at its next chunk boundary; a finished copy completes normally
        return 0;
    }
    if (off != q->inflight.end()) {
        cancel_tag(*q, off->first);
        return 0;   // asked (-ENOENT from the component: its completion is on the way)
    }
    for (const auto& c : q->ready)
        if (c.user_data == user_data) {
            errno = EALREADY;
            return -1;
        }
    errno = ENOENT;
    return -1;
}

}  // extern "C"
