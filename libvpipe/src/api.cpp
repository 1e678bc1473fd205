// libvpipe's public functions (vpipe.h): handles, the four operations, results and counters.
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>
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

// Sends all of a head or tail on the classic path (blocking, like the API). 0 or -errno.
int send_bytes(int fd, const Bytes& b, bool more = false) {
    if (b.data.empty()) return 0;
    return vpipe::lib::fallback_send_all(fd, b.data.data(), b.data.size(), more);
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
// tail bytes written), or -errno when nothing was written at all.
int64_t classic(uint32_t opcode, int in_fd, int out_fd, uint64_t in_off, uint64_t out_off,
                size_t length, const Bytes& head, const Bytes& tail, uint64_t* hdtr_moved) {
    *hdtr_moved = 0;
    if (int r = send_bytes(out_fd, head, length > 0); r < 0) return r;
    *hdtr_moved = head.size();
    int64_t moved = 0;
    if (length) {
        switch (opcode) {
        case VPIPE_IOC_FILE_TO_FILE: moved = vpipe::lib::fallback_file_to_file(in_fd, in_off, out_fd, out_off, length); break;
        case VPIPE_IOC_FILE_TO_SOCKET: moved = vpipe::lib::fallback_file_to_socket(in_fd, in_off, out_fd, length); break;
        case VPIPE_IOC_SOCKET_TO_FILE: moved = vpipe::lib::fallback_socket_to_file(in_fd, out_fd, out_off, length); break;
        default: moved = vpipe::lib::fallback_socket_to_socket(in_fd, out_fd, length); break;
        }
    }
    if (moved < 0) return *hdtr_moved ? 0 : moved;  // the head went out: a short count
    if (static_cast<uint64_t>(moved) == length && send_bytes(out_fd, tail) == 0) *hdtr_moved += tail.size();
    return moved;
}

ssize_t run_op(uint32_t opcode, int in_fd, int out_fd, uint64_t in_off, uint64_t out_off,
               size_t length, const struct vpipe_hdtr* hdtr = nullptr) {
    g_counters.ops++;
    Kind ik, ok;
    const Kind want_in = (opcode == VPIPE_IOC_FILE_TO_FILE || opcode == VPIPE_IOC_FILE_TO_SOCKET) ? Kind::kFile : Kind::kTcp;
    const Kind want_out = (opcode == VPIPE_IOC_FILE_TO_FILE || opcode == VPIPE_IOC_SOCKET_TO_FILE) ? Kind::kFile : Kind::kTcp;
    if (classify(in_fd, &ik, want_in == Kind::kTcp) < 0 || classify(out_fd, &ok, want_out == Kind::kTcp) < 0)
        return fail(EBADF, "bad descriptor");
    if (ik != want_in || ok != want_out)
        return fail(EINVAL, "descriptor types do not match the operation");
    if (in_off > static_cast<uint64_t>(LLONG_MAX) || out_off > static_cast<uint64_t>(LLONG_MAX))
        return fail(EINVAL, "negative offset");
    if (int r = check_modes(opcode, in_fd, out_fd, in_off, out_off, length); r < 0)
        return fail(-r, "a descriptor's access mode or the ranges do not allow the operation");
    Bytes head, tail;
    if (hdtr && (gather(hdtr->headers, hdtr->hdr_cnt, &head) < 0 || gather(hdtr->trailers, hdtr->trl_cnt, &tail) < 0))
        return fail(EINVAL, "head or tail longer than VPIPE_HDTR_MAX, or a bad iovec");
    if (length > static_cast<size_t>(SSIZE_MAX)) length = SSIZE_MAX;
    const uint64_t hdtr_len = uint64_t{head.size()} + tail.size();
    if (length == 0 && hdtr_len == 0) {
        t_last = {};
        t_last.path = VPIPE_RESULT_OFFLOADED;
        t_last.reason = "";
        return 0;
    }

    int err = 0;
    // the cache rule (file -> socket), checked before asking the guest component
    if (opcode == VPIPE_IOC_FILE_TO_SOCKET && fallback_enabled() && length >= vpipe::lib::min_offload() &&
        vpipe::lib::range_cached(in_fd, in_off, length))
        err = EALREADY;
    else if (length > 0 && (!fallback_enabled() || length >= vpipe::lib::min_offload())) {
        vpipe_ioc_op op{};
        op.op = opcode;
        op.handle = VPIPE_NO_HANDLE;
        op.in_offset = in_off;
        op.out_offset = out_off;
        op.length = length;
        op.head_len = head.size();
        op.tail_len = tail.size();
        // a forced offload is forced past the cache rule too
        if (!fallback_enabled()) op.flags |= VPIPE_OPF_NO_CACHE_RULE;
        int r = vpipe::lib::component_op(&op, in_fd, out_fd, head.ptr(), tail.ptr());
        if (r == 0) {
            t_last = {};
            t_last.path = VPIPE_RESULT_OFFLOADED;
            t_last.reason = "";
            t_last.moved = op.moved;
            t_last.offloaded = op.offloaded;
            t_last.guest_copied = op.guest_copied;
            t_last.zero_filled = op.zero_filled;
            t_last.requests = op.requests;
            t_last.paths = op.paths;
            t_last.hdtr_moved = op.hdtr_moved;
            g_counters.ops_offloaded++;
            g_counters.bytes_offloaded += op.offloaded;
            g_counters.bytes_guest += op.guest_copied;
            g_counters.bytes_zero_filled += op.zero_filled;
            return static_cast<ssize_t>(op.moved + (hdtr ? op.hdtr_moved : 0));
        }
        err = -r;
        if (!may_fall_back(err) || !fallback_enabled()) {
            // the component's account of what it did (a request posted, bytes moved before the
            // error, head and tail) stays visible with the error
            fail(err, may_fall_back(err) ? fallback_reason(err) : "the offload failed");
            t_last.moved = op.moved;
            t_last.offloaded = op.offloaded;
            t_last.guest_copied = op.guest_copied;
            t_last.zero_filled = op.zero_filled;
            t_last.requests = op.requests;
            t_last.paths = op.paths;
            t_last.hdtr_moved = op.hdtr_moved;
            return -1;
        }
    }

    // the classic path: below the threshold (err 0), or vPipe could not offload here
    uint64_t hd = 0;
    int64_t moved = classic(opcode, in_fd, out_fd, in_off, out_off, length, head, tail, &hd);
    if (moved < 0) return fail(static_cast<int>(-moved), "the fallback copy failed");
    t_last = {};
    t_last.hdtr_moved = hd;
    t_last.path = VPIPE_RESULT_FALLBACK;
    t_last.error = err;
    t_last.reason = fallback_reason(err);
    t_last.moved = static_cast<uint64_t>(moved);
    t_last.guest_copied = static_cast<uint64_t>(moved);
    g_counters.ops_fallback++;
    if (err == 0) g_counters.ops_below++;
    if (err == EALREADY) {
        g_counters.ops_cached++;
        t_last.paths = VPIPE_PATH_GUEST_CACHE;
    }
    g_counters.bytes_guest += static_cast<uint64_t>(moved);
    return static_cast<ssize_t>(static_cast<uint64_t>(moved) + hd);
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

}  // extern "C"
