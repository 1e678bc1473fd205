#include "session.h"

#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <system_error>
#include <thread>

#include "common/log.h"
#include "common/net.h"
#include "common/server.h"
#include "config.h"
#include "direction.h"
#include "relay_http.h"

namespace vpipe::proxy {

namespace {

// Connects to the backend (a tracked socket); -1 with *err set.
int connect_backend(std::string* err) {
    for (addrinfo* ai = g_backend; ai; ai = ai->ai_next) {
        int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            *err = std::strerror(errno);
            continue;
        }
        apps::track(fd);
        if (::connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) return fd;
        *err = std::strerror(errno);
        apps::untrack_and_close(fd);
    }
    return -1;
}

// Both directions: one thread with http framing, else one thread each.
void relay(int cfd, int bfd, Direction* up, Direction* down) {
    if (g_cfg.mode == Mode::Vpipe && g_cfg.http_framing) return HttpRelay(cfd, bfd, up, down).run();
    std::thread t;
    try {
        t = std::thread(run_direction, up);
    } catch (const std::system_error& e) {
        up->error = std::string("cannot start a thread: ") + e.what();
        return;
    }
    run_direction(down);
    t.join();
}

// " up=BYTES down=BYTES mode=MODE [vpipe=PATH]"
std::string counts(const Direction& up, const Direction& down) {
    std::string s = " up=" + std::to_string(up.bytes) + " down=" + std::to_string(down.bytes) + " mode=" + g_cfg.mode_name;
    if (g_cfg.mode != Mode::Vpipe) return s;
    if (g_cfg.vpipe_down && g_cfg.vpipe_up) return s + " vpipe=down:" + down.vp.text() + ",up:" + up.vp.text();
    return s + " vpipe=" + (g_cfg.vpipe_down ? down.vp.text() : up.vp.text());
}

}  // namespace

// TIME CLIENT -> BACKEND up=BYTES down=BYTES mode=MODE [vpipe=PATH] ms=T [error: ...]
void serve(int cfd, const std::string& peer) {
    auto t0 = std::chrono::steady_clock::now();
    std::string line = apps::now_text() + " " + peer + " -> " + g_cfg.to;
    std::string err;
    int bfd = connect_backend(&err);
    if (bfd < 0) {
        apps::log_line(line + " up=0 down=0 mode=" + g_cfg.mode_name + " error: cannot connect to the backend: " + err +
                       "\n");
        apps::untrack_and_close(cfd);
        return;
    }
    apps::set_nodelay(bfd);
    Direction up{cfd, bfd, g_cfg.vpipe_up}, down{bfd, cfd, g_cfg.vpipe_down};
    relay(cfd, bfd, &up, &down);
    line += counts(up, down) + apps::ms_since(t0);
    if (!up.error.empty()) line += " error: up: " + up.error;
    if (!down.error.empty()) line += " error: down: " + down.error;
    apps::log_line(line + "\n");
    apps::untrack_and_close(bfd);
    apps::untrack_and_close(cfd);
}

}  // namespace vpipe::proxy
