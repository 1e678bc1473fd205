#include "procs.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <set>
#include <thread>

#include <spdlog/spdlog.h>

#include "cgroups.h"
#include "netlab.h"
#include "util.h"
#include "util/unique_fd.h"

namespace vpipe::lab {

namespace {

[[noreturn]] void child_fail(int fd, const std::string& msg) {
    ssize_t ignored = write(fd, msg.data(), msg.size());
    (void)ignored;
    _exit(127);
}

void close_fds_except(int keep) {
    std::vector<int> fds;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd", ec))
        fds.push_back(std::atoi(e.path().filename().c_str()));
    for (int fd : fds)  // includes the iterator's own (now closed) fd: close() just fails on it
        if (fd > 2 && fd != keep) close(fd);
}

// Runs `grandchild` in a detached grandchild; returns its pid, or throws with what it reported.
template <typename F>
pid_t double_fork(const std::string& what, F grandchild) {
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) != 0) throw LabError(std::string("pipe: ") + strerror(errno));
    fflush(nullptr);
    pid_t mid = fork();
    if (mid < 0) throw LabError(std::string("fork: ") + strerror(errno));
    if (mid == 0) {
        close(pfd[0]);
        setsid();
        pid_t gc = fork();
        if (gc < 0) child_fail(pfd[1], std::string("fork: ") + strerror(errno));
        if (gc == 0) {
            // `up` catches these to roll back; the grandchild must die of them again
            for (int sig : {SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGQUIT}) signal(sig, SIG_DFL);
            sigset_t none;
            sigemptyset(&none);
            sigprocmask(SIG_SETMASK, &none, nullptr);
            try {
                grandchild(pfd[1]);
            } catch (const std::exception& e) {
                child_fail(pfd[1], e.what());
            }
            _exit(127);
        }
        ssize_t ignored = write(pfd[1], &gc, sizeof gc);
        (void)ignored;
        _exit(0);
    }
    close(pfd[1]);
    UniqueFd rd(pfd[0]);
    int ws = 0;
    while (waitpid(mid, &ws, 0) < 0 && errno == EINTR) {
    }
    pid_t gc = 0;
    std::string buf;
    char tmp[1024];
    for (;;) {
        ssize_t n = read(rd.get(), tmp, sizeof tmp);
        if (n > 0) {
            buf.append(tmp, static_cast<size_t>(n));
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            break;
        }
    }
    if (buf.size() >= sizeof gc) {
        memcpy(&gc, buf.data(), sizeof gc);
        buf.erase(0, sizeof gc);
    }
    if (gc <= 0) throw LabError("cannot start " + what + ": " + (buf.empty() ? "fork failed" : buf));
    if (!buf.empty()) {
        kill(gc, SIGKILL);
        throw LabError("cannot start " + what + ": " + buf);
    }
    return gc;
}

std::string proc_exe_name(pid_t pid) {
    char buf[4096];
    ssize_t n = readlink(("/proc/" + std::to_string(pid) + "/exe").c_str(), buf, sizeof buf - 1);
    if (n <= 0) return "";
    std::string p(buf, static_cast<size_t>(n));
    auto pos = p.find_last_of('/');
    std::string base = pos == std::string::npos ? p : p.substr(pos + 1);
    const std::string del = " (deleted)";
    if (base.size() > del.size() && base.compare(base.size() - del.size(), del.size(), del) == 0)
        base.resize(base.size() - del.size());
    return base;
}

std::pair<dev_t, ino_t> pid_netns(pid_t pid) {
    struct stat st;
    if (stat(("/proc/" + std::to_string(pid) + "/ns/net").c_str(), &st) != 0) return {0, 0};
    return {st.st_dev, st.st_ino};
}

pid_t parent_of(pid_t pid) {
    auto stat = read_file("/proc/" + std::to_string(pid) + "/stat");
    if (!stat) return 0;
    auto rp = stat->rfind(')');
    if (rp == std::string::npos || rp + 4 > stat->size()) return 0;
    // ") S PPID ..."
    return static_cast<pid_t>(std::atoi(stat->c_str() + rp + 4));
}

}  // namespace

pid_t spawn_daemon(const SpawnSpec& spec) {
    return double_fork(spec.binary, [&](int errfd) {
        if (!spec.netns.empty()) enter_netns(spec.netns);
        if (!spec.cgroup_dirs.empty()) join_cgroups(spec.cgroup_dirs);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull < 0) child_fail(errfd, "open /dev/null failed");
        dup2(devnull, 0);
        close(devnull);
        if (!spec.log_path.empty()) {
            int lf = open(spec.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
            if (lf < 0) child_fail(errfd, "cannot open log " + spec.log_path + ": " + strerror(errno));
            dup2(lf, 1);
            dup2(lf, 2);
            close(lf);
        }
        close_fds_except(errfd);
        for (const auto& [k, v] : spec.env) setenv(k.c_str(), v.c_str(), 1);
        std::vector<std::string> argv{spec.binary};
        argv.insert(argv.end(), spec.args.begin(), spec.args.end());
        std::vector<char*> cargv;
        for (auto& a : argv) cargv.push_back(a.data());
        cargv.push_back(nullptr);
        execv(spec.binary.c_str(), cargv.data());
        child_fail(errfd, "exec " + spec.binary + ": " + strerror(errno));
    });
}

pid_t spawn_neighbour(int index, const std::vector<std::string>& cgroup_dirs) {
    return double_fork("neighbour" + std::to_string(index), [&](int errfd) {
        join_cgroups(cgroup_dirs);
        setpriority(PRIO_PROCESS, 0, 0);
        std::string name = "vpl-neighbour" + std::to_string(index);
        prctl(PR_SET_NAME, name.c_str(), 0, 0, 0);
        int devnull = open("/dev/null", O_RDWR);
        if (devnull >= 0) {
            dup2(devnull, 0);
            dup2(devnull, 1);
            dup2(devnull, 2);
            close(devnull);
        }
        close_fds_except(-1);  // closes errfd too: setup succeeded
        (void)errfd;
        volatile unsigned long counter = 0;
        for (;;) counter = counter + 1;
    });
}

bool pid_alive(pid_t pid) {
    if (pid <= 0) return false;
    if (kill(pid, 0) != 0 && errno == ESRCH) return false;
    auto stat = read_file("/proc/" + std::to_string(pid) + "/stat");
    if (!stat) return false;
    auto rp = stat->rfind(')');
    if (rp != std::string::npos && rp + 2 < stat->size()) {
        char st = (*stat)[rp + 2];
        if (st == 'Z' || st == 'X') {
            waitpid(pid, nullptr, WNOHANG);  // reap if it happens to be our child
            return false;
        }
    }
    return true;
}

std::string wait_for_socket(const std::string& path, pid_t pid, int timeout_ms) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
        struct stat st;
        if (stat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) return "";
        if (!pid_alive(pid)) return "process " + std::to_string(pid) + " exited before creating " + path;
        if (std::chrono::steady_clock::now() > deadline)
            return "timed out after " + std::to_string(timeout_ms / 1000) + " s waiting for " + path;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

bool pid_is_lab(pid_t pid, const std::vector<std::pair<dev_t, ino_t>>& netns_ids) {
    if (pid <= 1 || !pid_alive(pid)) return false;
    if (pid_in_lab_cgroup(pid)) return true;
    auto ns = pid_netns(pid);
    if (ns.second != 0 && std::find(netns_ids.begin(), netns_ids.end(), ns) != netns_ids.end()) return true;
    auto exe = proc_exe_name(pid);
    return exe == "vpiped" || exe == "vpipe-guestd";
}

std::vector<pid_t> scan_lab_processes(const std::vector<std::pair<dev_t, ino_t>>& netns_ids) {
    std::set<pid_t> exclude;
    for (pid_t p = getpid(); p > 1; p = parent_of(p)) exclude.insert(p);
    std::vector<pid_t> out;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
        std::string n = e.path().filename().string();
        if (n.empty() || !std::all_of(n.begin(), n.end(), ::isdigit)) continue;
        pid_t pid = std::atoi(n.c_str());
        if (pid <= 1 || exclude.count(pid)) continue;
        bool lab = pid_in_lab_cgroup(pid);
        if (!lab) {
            auto ns = pid_netns(pid);
            lab = ns.second != 0 && std::find(netns_ids.begin(), netns_ids.end(), ns) != netns_ids.end();
        }
        if (lab && pid_alive(pid)) out.push_back(pid);
    }
    return out;
}

std::vector<pid_t> vm_processes(std::pair<dev_t, ino_t> netns_id, const std::vector<std::string>& cgroup_dirs) {
    std::set<pid_t> exclude, found;
    for (pid_t p = getpid(); p > 1; p = parent_of(p)) exclude.insert(p);
    for (const auto& d : cgroup_dirs)
        for (pid_t p : cgroup_pids(d))
            if (p > 1 && !exclude.count(p)) found.insert(p);
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
        std::string n = e.path().filename().string();
        if (n.empty() || !std::all_of(n.begin(), n.end(), ::isdigit)) continue;
        pid_t pid = std::atoi(n.c_str());
        if (pid <= 1 || exclude.count(pid)) continue;
        if (netns_id.second != 0 && pid_netns(pid) == netns_id) found.insert(pid);
    }
    std::vector<pid_t> out;
    for (pid_t p : found)
        if (pid_alive(p)) out.push_back(p);
    return out;
}

std::vector<pid_t> kill_now(const std::vector<pid_t>& pids) {
    // All of them stop first, then die: killed one by one, a process woken by the death of an
    // earlier one (an application whose agent connection closed) could still run and act on it
    // before its own SIGKILL, which a destroyed domain's processes never do (xl destroy pauses
    // the domain first, too).
    std::vector<pid_t> live;
    for (pid_t p : pids)
        if (p > 1 && p != getpid() && kill(p, SIGSTOP) == 0) live.push_back(p);
    auto state = [](pid_t p) {
        auto stat = read_file("/proc/" + std::to_string(p) + "/stat");
        auto rp = stat ? stat->rfind(')') : std::string::npos;
        return rp != std::string::npos && rp + 2 < stat->size() ? (*stat)[rp + 2] : 'X';
    };
    const auto stop_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (std::chrono::steady_clock::now() < stop_deadline &&
           !std::all_of(live.begin(), live.end(), [&](pid_t p) {
               const char c = state(p);
               return c == 'T' || c == 't' || c == 'Z' || c == 'X';
           }))
        std::this_thread::sleep_for(std::chrono::milliseconds(1));  // (no event for another process stopping)
    for (pid_t p : live) kill(p, SIGKILL);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    for (;;) {
        live.erase(std::remove_if(live.begin(), live.end(), [](pid_t p) { return !pid_alive(p); }), live.end());
        if (live.empty() || std::chrono::steady_clock::now() > deadline) return live;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));  // (no event for another process's death)
    }
}

std::vector<pid_t> kill_processes(const std::vector<pid_t>& pids, int grace_ms) {
    std::vector<pid_t> live;
    for (pid_t p : pids)
        if (p > 1 && p != getpid() && pid_alive(p)) live.push_back(p);
    if (live.empty()) return {};
    for (pid_t p : live) {
        spdlog::debug("SIGTERM {}", p);
        kill(p, SIGTERM);
    }
    auto wait_gone = [&](int ms) {
        auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
        for (;;) {
            live.erase(std::remove_if(live.begin(), live.end(), [](pid_t p) { return !pid_alive(p); }), live.end());
            if (live.empty() || std::chrono::steady_clock::now() > deadline) return;
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
    };
    wait_gone(grace_ms);
    for (pid_t p : live) {
        spdlog::debug("SIGKILL {}", p);
        kill(p, SIGKILL);
    }
    wait_gone(3000);
    return live;
}

}  // namespace vpipe::lab
