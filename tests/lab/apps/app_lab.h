// Helpers shared by the lab tests of the applications: run a program (no shell) and capture
// its output, drive vpipe-lab, run a script on the client host, hash and read files.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace vpipe::labtest {

inline const std::string kBin = VPIPE_BIN_DIR;
inline const std::string kLab = kBin + "/vpipe-lab";
inline const std::string kHttpd = kBin + "/vpipe-httpd";
inline const std::string kProxy = kBin + "/vpipe-proxy";
inline const std::string kVm1Ip = "10.199.0.11";
inline const std::string kVm2Ip = "10.199.0.12";
inline constexpr uint64_t kMiB = 1024 * 1024;

struct Res {
    int status = -1;
    std::string out, err;
};

// Runs argv (no shell); stdout and stderr captured separately.
inline Res run(const std::vector<std::string>& argv) {
    int po[2], pe[2];
    if (pipe2(po, O_CLOEXEC) != 0 || pipe2(pe, O_CLOEXEC) != 0) return {};
    pid_t pid = fork();
    if (pid == 0) {
        dup2(po[1], 1);
        dup2(pe[1], 2);
        int devnull = open("/dev/null", O_RDONLY);
        dup2(devnull, 0);
        std::vector<char*> a;
        for (const auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
        a.push_back(nullptr);
        execvp(a[0], a.data());
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    Res r;
    pollfd p[2] = {{po[0], POLLIN, 0}, {pe[0], POLLIN, 0}};
    int open_fds = 2;
    char buf[65536];
    while (open_fds > 0) {
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        for (int i = 0; i < 2; ++i) {
            if (p[i].fd < 0 || !(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            ssize_t n = read(p[i].fd, buf, sizeof buf);
            if (n <= 0) {
                close(p[i].fd);
                p[i].fd = -1;
                --open_fds;
            } else {
                (i == 0 ? r.out : r.err).append(buf, static_cast<size_t>(n));
            }
        }
    }
    int ws = 0;
    waitpid(pid, &ws, 0);
    r.status = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
    return r;
}

inline Res lab(std::vector<std::string> args) {
    args.insert(args.begin(), kLab);
    return run(args);
}

// A bash script on the client host (10.199.0.1).
inline Res client(const std::string& script) { return lab({"client", "--", "bash", "-o", "pipefail", "-c", script}); }

inline std::string slurp(const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

inline std::string sha256_of(const std::string& path) {
    auto r = run({"sha256sum", path});
    return r.status == 0 ? r.out.substr(0, 64) : "sha256sum failed: " + r.err;
}

}  // namespace vpipe::labtest
