// libvpipe's public functions (vpipe.h): handles, the four operations, results and counters.
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

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
    std::atomic<uint64_t> ops{0}, ops_offloaded{0}, ops_fallback{0}, ops_failed{0};
    std::atomic<uint64_t> bytes_offloaded{0}, bytes_guest{0}, bytes_zero_filled{0};
} g_counters;

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

// Classifies a descriptor; -errno for closed ones.
int classify(int fd, Kind* kind) {
    struct stat st{};
    if (fd < 0 || ::fstat(fd, &st) < 0) return -EBADF;
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
    case ENOENT:
    case ECONNREFUSED: return "no vPipe guest component (no /dev/vpipe, no agent socket)";
    case EHOSTDOWN: return "the guest component has no connection to the dom0 engine";
    case ENXIO: return "a file is not on one of this VM's virtual disks";
    case EOPNOTSUPP: return "the guest component cannot offload this operation";
    default: return "offload unavailable";
    }
}

// Errors that mean "vPipe can't do this here" rather than "this request is wrong".
bool may_fall_back(int err) {
    return err == ENOENT || err == ECONNREFUSED || err == EHOSTDOWN || err == ENXIO ||
           err == EOPNOTSUPP;
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

ssize_t run_op(uint32_t opcode, int in_fd, int out_fd, uint64_t in_off, uint64_t out_off,
               size_t length) {
    g_counters.ops++;
    Kind ik, ok;
    if (classify(in_fd, &ik) < 0 || classify(out_fd, &ok) < 0) return fail(EBADF, "bad descriptor");
    const Kind want_in = (opcode == VPIPE_IOC_FILE_TO_FILE || opcode == VPIPE_IOC_FILE_TO_SOCKET) ? Kind::kFile : Kind::kTcp;
    const Kind want_out = (opcode == VPIPE_IOC_FILE_TO_FILE || opcode == VPIPE_IOC_SOCKET_TO_FILE) ? Kind::kFile : Kind::kTcp;
    if (ik != want_in || ok != want_out)
        return fail(EINVAL, "descriptor types do not match the operation");
    if (in_off > static_cast<uint64_t>(LLONG_MAX) || out_off > static_cast<uint64_t>(LLONG_MAX))
        return fail(EINVAL, "negative offset");
    if (length > static_cast<size_t>(SSIZE_MAX)) length = SSIZE_MAX;
    if (length == 0) {
        t_last = {};
        t_last.path = VPIPE_RESULT_OFFLOADED;
        t_last.reason = "";
        return 0;
    }

    vpipe_ioc_op op{};
    op.op = opcode;
    op.handle = VPIPE_NO_HANDLE;
    op.in_offset = in_off;
    op.out_offset = out_off;
    op.length = length;
    int r = vpipe::lib::component_op(&op, in_fd, out_fd);
    if (r == 0) {
        t_last = {};
        t_last.path = VPIPE_RESULT_OFFLOADED;
        t_last.reason = "";
        t_last.moved = op.moved;
        t_last.offloaded = op.offloaded;
        t_last.guest_copied = op.guest_copied;
        t_last.zero_filled = op.zero_filled;
        t_last.requests = op.requests;
        g_counters.ops_offloaded++;
        g_counters.bytes_offloaded += op.offloaded;
        g_counters.bytes_guest += op.guest_copied;
        g_counters.bytes_zero_filled += op.zero_filled;
        return static_cast<ssize_t>(op.moved);
    }
    const int err = -r;
    if (!may_fall_back(err)) return fail(err, "the offload failed");
    if (!fallback_enabled()) return fail(err, fallback_reason(err));

    int64_t moved;
    switch (opcode) {
    case VPIPE_IOC_FILE_TO_FILE: moved = vpipe::lib::fallback_file_to_file(in_fd, in_off, out_fd, out_off, length); break;
    case VPIPE_IOC_FILE_TO_SOCKET: moved = vpipe::lib::fallback_file_to_socket(in_fd, in_off, out_fd, length); break;
    case VPIPE_IOC_SOCKET_TO_FILE: moved = vpipe::lib::fallback_socket_to_file(in_fd, out_fd, out_off, length); break;
    default: moved = vpipe::lib::fallback_socket_to_socket(in_fd, out_fd, length); break;
    }
    if (moved < 0) return fail(static_cast<int>(-moved), "the fallback copy failed");
    t_last = {};
    t_last.path = VPIPE_RESULT_FALLBACK;
    t_last.error = err;
    t_last.reason = fallback_reason(err);
    t_last.moved = static_cast<uint64_t>(moved);
    t_last.guest_copied = static_cast<uint64_t>(moved);
    g_counters.ops_fallback++;
    g_counters.bytes_guest += static_cast<uint64_t>(moved);
    return static_cast<ssize_t>(moved);
}

// Looks up a handle and checks it fits the operation.
bool lookup(int handle, Handle* out) {
    std::lock_guard lk(g_handles_mu);
    if (handle < 0 || static_cast<size_t>(handle) >= g_handles.size() || !g_handles[handle].used)
        return false;
    *out = g_handles[handle];
    return true;
}

ssize_t run_handle(int handle, uint32_t opcode, uint64_t in_off, uint64_t out_off, size_t length) {
    Handle h;
    if (!lookup(handle, &h)) {
        g_counters.ops++;
        return fail(EBADF, "unknown vPipe handle");
    }
    return run_op(opcode, h.in_fd, h.out_fd, in_off, out_off, length);
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
    out->bytes_offloaded = g_counters.bytes_offloaded;
    out->bytes_guest = g_counters.bytes_guest;
    out->bytes_zero_filled = g_counters.bytes_zero_filled;
    return 0;
}

}  // extern "C"
