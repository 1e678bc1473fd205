#include "files.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>

#include "config.h"

namespace vpipe::httpd {

namespace {

constexpr uint64_t kOpenRead = O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY;
constexpr uint64_t kOpenWrite = O_WRONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY;

int open_below_root(const std::string& rel, uint64_t flags, uint64_t mode) {
    open_how how{};
    how.flags = flags;
    how.mode = mode;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    long r;
    do {
        r = ::syscall(SYS_openat2, g_root_fd, rel.c_str(), &how, sizeof how);
    } while (r < 0 && errno == EAGAIN);
    return static_cast<int>(r);
}

// An open (or truncate) failure as a status.
int open_status(int err) {
    switch (err) {
        case ENOENT:
        case ENOTDIR: return 404;
        case ENAMETOOLONG: return 414;
        case EXDEV:  // RESOLVE_BENEATH: escapes the root
        case ELOOP:
        case EACCES:
        case EPERM:
        case EISDIR:
        case EROFS:
        case ETXTBSY: return 403;
        case ENOSPC:
        case EDQUOT: return 507;
        default: return 500;
    }
}

// A regular file made blocking (it was opened O_NONBLOCK so that a FIFO cannot hang the open).
int regular_blocking(int file, struct stat* sb) {
    if (::fstat(file, sb) < 0 || !S_ISREG(sb->st_mode)) {
        ::close(file);
        return 403;
    }
    ::fcntl(file, F_SETFL, ::fcntl(file, F_GETFL) & ~O_NONBLOCK);
    return 0;
}

}  // namespace

int open_for_get(const std::string& rel, int* file, struct stat* sb) {
    *file = open_below_root(rel, kOpenRead, 0);
    if (*file < 0) return open_status(errno);
    return regular_blocking(*file, sb);
}

int open_for_put(const std::string& rel, int* file, bool* created) {
    *created = false;
    int fd = open_below_root(rel, kOpenWrite, 0);
    if (fd < 0 && errno == ENOENT) {
        fd = open_below_root(rel, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        *created = fd >= 0;
        if (fd < 0 && errno == EEXIST) fd = open_below_root(rel, kOpenWrite, 0);
    }
    if (fd < 0) return open_status(errno);
    struct stat sb {};
    if (int st = regular_blocking(fd, &sb)) return st;
    if (!*created && ::ftruncate(fd, 0) < 0) {
        int e = errno;
        ::close(fd);
        return open_status(e);
    }
    *file = fd;
    return 0;
}

}  // namespace vpipe::httpd
