#include "util/unix_socket.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

namespace vpipe {
namespace {

bool fill_addr(const std::string& path, sockaddr_un* addr) {
    std::memset(addr, 0, sizeof(*addr));
    addr->sun_family = AF_UNIX;
    if (path.size() >= sizeof(addr->sun_path)) return false;
    std::memcpy(addr->sun_path, path.c_str(), path.size() + 1);
    return true;
}

}  // namespace

UniqueFd listen_unix(const std::string& path, int mode, int backlog) {
    sockaddr_un addr;
    if (!fill_addr(path, &addr))
        throw std::system_error(ENAMETOOLONG, std::generic_category(), "socket path " + path);
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) throw std::system_error(errno, std::generic_category(), "socket");
    ::unlink(path.c_str());
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) < 0)
        throw std::system_error(errno, std::generic_category(), "bind " + path);
    if (::chmod(path.c_str(), static_cast<mode_t>(mode)) < 0)
        throw std::system_error(errno, std::generic_category(), "chmod " + path);
    if (::listen(fd.get(), backlog) < 0)
        throw std::system_error(errno, std::generic_category(), "listen " + path);
    return fd;
}

UniqueFd connect_unix(const std::string& path) {
    sockaddr_un addr;
    if (!fill_addr(path, &addr)) {
        errno = ENAMETOOLONG;
        return UniqueFd();
    }
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) return fd;
    while (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) < 0) {
        if (errno == EINTR) continue;
        return UniqueFd();
    }
    return fd;
}

int send_msg_fds(int sock, const void* buf, size_t len, const int* fds, size_t nfds) {
    const char* p = static_cast<const char*>(buf);
    bool fds_sent = nfds == 0;
    while (len > 0) {
        iovec iov{const_cast<char*>(p), len};
        msghdr msg{};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 8)];
        if (!fds_sent) {
            if (nfds > 8) return -EINVAL;
            msg.msg_control = control;
            msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
            cmsghdr* c = CMSG_FIRSTHDR(&msg);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
            std::memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
        }
        ssize_t n = ::sendmsg(sock, &msg, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        fds_sent = true;
        p += n;
        len -= static_cast<size_t>(n);
    }
    return 0;
}

int recv_msg_fds(int sock, void* buf, size_t len, std::vector<UniqueFd>* fds, size_t max_fds) {
    char* p = static_cast<char*>(buf);
    bool overflow = false;
    while (len > 0) {
        iovec iov{p, len};
        msghdr msg{};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 16)];
        msg.msg_control = control;
        msg.msg_controllen = sizeof(control);
        ssize_t n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        if (n == 0) return -ECONNRESET;
        for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
            size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            int* in = reinterpret_cast<int*>(CMSG_DATA(c));
            for (size_t i = 0; i < count; ++i) {
                if (fds && fds->size() < max_fds)
                    fds->emplace_back(in[i]);
                else {
                    ::close(in[i]);
                    overflow = true;
                }
            }
        }
        if (msg.msg_flags & MSG_CTRUNC) overflow = true;
        p += n;
        len -= static_cast<size_t>(n);
    }
    return overflow ? -EBADMSG : 0;
}

int peer_cred(int sock, PeerCred* out) {
    ucred cred{};
    socklen_t len = sizeof(cred);
    if (::getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) return -errno;
    out->pid = cred.pid;
    out->uid = cred.uid;
    out->gid = cred.gid;
    return 0;
}

}  // namespace vpipe
