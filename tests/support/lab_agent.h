// The lab VM's agent (vpipe-guestd) asked directly over its socket, as libvpipe asks it: for
// tests that check the agent's own counters. Needs libvpipe's ABI headers (vpipe_static).
#pragma once

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include <vpipe/abi/ioctl.h>

namespace vpipe::labtest {

// A VM's agent's own counters (VPIPE_IOC_STATS over its socket, as libvpipe asks them).
inline bool agent_stats(const std::string& path, vpipe_ioc_stats* out) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    if (path.size() >= sizeof(a.sun_path)) return false;
    std::memcpy(a.sun_path, path.c_str(), path.size());
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    const vpipe_agent_msg m{VPIPE_AGENT_MAGIC, VPIPE_IOC_STATS, 0, 0};
    vpipe_agent_msg rep{};
    auto full = [fd](void* p, size_t n) {
        for (size_t k = 0; k < n;) {
            const ssize_t r = ::read(fd, static_cast<char*>(p) + k, n - k);
            if (r <= 0) return false;
            k += static_cast<size_t>(r);
        }
        return true;
    };
    const bool ok = ::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof(a)) == 0 &&
                    ::write(fd, &m, sizeof(m)) == static_cast<ssize_t>(sizeof(m)) && full(&rep, sizeof(rep)) &&
                    rep.result == 0 && rep.length == sizeof(*out) && full(out, sizeof(*out));
    ::close(fd);
    return ok;
}

}  // namespace vpipe::labtest
