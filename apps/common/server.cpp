#include "common/server.h"

#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <set>
#include <system_error>
#include <thread>

#include "common/log.h"
#include "common/net.h"

namespace vpipe::apps {

namespace {

using namespace std::chrono_literals;

std::atomic<bool> g_stop{false};
std::mutex g_mu;
std::condition_variable g_cv;  // a connection thread ended
std::set<int> g_socks;         // tracked sockets
size_t g_active = 0;           // connection threads alive

// SIGINT/SIGTERM arrive through a signalfd (blocked in every thread); SIGPIPE is ignored.
int block_stop_signals() {
    ::signal(SIGPIPE, SIG_IGN);
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
    return ::signalfd(-1, &sigs, SFD_CLOEXEC);
}

int read_signal(int sfd) {
    signalfd_siginfo si{};
    return ::read(sfd, &si, sizeof si) == sizeof si ? static_cast<int>(si.ssi_signo) : 0;
}

// A signal that is already pending, else 0.
int pending_signal(int sfd) {
    pollfd p{sfd, POLLIN, 0};
    return ::poll(&p, 1, 0) > 0 ? read_signal(sfd) : 0;
}

// True when a connection may start now; else waits up to 100 ms for one to end and says false.
bool slot_free(unsigned max) {
    std::unique_lock lk(g_mu);
    if (max == 0 || g_active < max) return true;
    g_cv.wait_for(lk, 100ms);
    return false;
}

void connection_ended() {
    std::lock_guard lk(g_mu);
    --g_active;
    g_cv.notify_all();
}

void accept_one(int lfd, const ServerSpec& spec) {
    sockaddr_storage ss{};
    socklen_t sl = sizeof ss;
    int cfd = ::accept4(lfd, reinterpret_cast<sockaddr*>(&ss), &sl, SOCK_CLOEXEC);
    if (cfd < 0) {
        if (errno != EINTR && errno != ECONNABORTED && errno != EAGAIN) log_error("accept: %s", std::strerror(errno));
        if (errno == EMFILE || errno == ENFILE) std::this_thread::sleep_for(100ms);
        return;
    }
    set_nodelay(cfd);
    track(cfd);
    std::string peer = addr_text(reinterpret_cast<sockaddr*>(&ss));
    {
        std::lock_guard lk(g_mu);
        ++g_active;
    }
    try {
        std::thread([serve = spec.serve, cfd, peer] {
            serve(cfd, peer);
            connection_ended();
        }).detach();
    } catch (const std::system_error& e) {
        log_error("cannot start a thread: %s", e.what());
        untrack_and_close(cfd);
        connection_ended();
    }
}

// No new connections; wake every connection thread and give them a moment.
int stop_all(int lfd, int signo) {
    g_stop = true;
    ::close(lfd);
    log_event("%s, stopping", strsignal(signo));
    std::unique_lock lk(g_mu);
    for (int fd : g_socks) ::shutdown(fd, SHUT_RDWR);
    if (!g_cv.wait_for(lk, 5s, [] { return g_active == 0; })) {
        log_error("%zu connection(s) still busy; exiting anyway", g_active);
        _exit(0);
    }
    return 0;
}

}  // namespace

int run_server(const ServerSpec& spec) {
    int sfd = block_stop_signals();
    std::string err;
    int lfd = listen_on(spec.bind, spec.port, &err);
    if (lfd < 0) {
        log_error("%s", err.c_str());
        return 1;
    }
    log_event("listening on %s:%d%s", spec.bind.c_str(), spec.port, spec.banner.c_str());
    int signo = 0;
    while (signo == 0) {
        if (!slot_free(spec.max_connections)) {
            signo = pending_signal(sfd);
            continue;
        }
        pollfd p[2] = {{lfd, POLLIN, 0}, {sfd, POLLIN, 0}};
        if (::poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            log_error("poll: %s", std::strerror(errno));
            return 1;
        }
        if (p[1].revents & POLLIN) {
            signo = read_signal(sfd);
            break;
        }
        if (p[0].revents & POLLIN) accept_one(lfd, spec);
    }
    return stop_all(lfd, signo);
}

bool stopping() { return g_stop.load(); }

void track(int fd) {
    std::lock_guard lk(g_mu);
    if (g_stop.load()) ::shutdown(fd, SHUT_RDWR);
    g_socks.insert(fd);
}

void untrack_and_close(int fd) {
    {
        std::lock_guard lk(g_mu);
        g_socks.erase(fd);
    }
    ::close(fd);
}

}  // namespace vpipe::apps
