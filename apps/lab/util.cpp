#include "util.h"

#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <fstream>
#include <set>
#include <sstream>

#include <spdlog/spdlog.h>

#include "util/unique_fd.h"

namespace vpipe::lab {

namespace {
bool g_verbose = false;
}

bool is_verbose() { return g_verbose; }
void set_verbose(bool v) { g_verbose = v; }

int decode_wait_status(int wstatus) {
    if (WIFEXITED(wstatus)) return WEXITSTATUS(wstatus);
    if (WIFSIGNALED(wstatus)) return 128 + WTERMSIG(wstatus);
    return 255;
}

std::string join_argv(const std::vector<std::string>& argv) {
    std::string s;
    for (const auto& a : argv) {
        if (!s.empty()) s += ' ';
        s += a;
    }
    return s;
}

RunResult run(const std::vector<std::string>& argv, bool capture) {
    spdlog::debug("run: {}", join_argv(argv));
    RunResult res;
    int pfd[2] = {-1, -1};
    if (capture && pipe2(pfd, O_CLOEXEC) != 0) throw LabError(std::string("pipe: ") + strerror(errno));
    std::vector<char*> cargv;
    for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
    cargv.push_back(nullptr);
    pid_t pid = fork();
    if (pid < 0) throw LabError(std::string("fork: ") + strerror(errno));
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        if (devnull >= 0) dup2(devnull, 0);
        if (capture) {
            dup2(pfd[1], 1);
            dup2(pfd[1], 2);
        } else if (!g_verbose && devnull >= 0) {
            dup2(devnull, 1);
            dup2(devnull, 2);
        }
        execvp(cargv[0], cargv.data());
        dprintf(2, "exec %s: %s\n", cargv[0], strerror(errno));
        _exit(127);
    }
    if (capture) {
        close(pfd[1]);
        char buf[4096];
        for (;;) {
            ssize_t n = read(pfd[0], buf, sizeof buf);
            if (n > 0) {
                res.output.append(buf, static_cast<size_t>(n));
            } else if (n < 0 && errno == EINTR) {
                continue;
            } else {
                break;
            }
        }
        close(pfd[0]);
    }
    int ws = 0;
    while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
    }
    res.status = decode_wait_status(ws);
    if (res.status != 0) spdlog::debug("  -> exit {}: {}", res.status, trim(res.output));
    return res;
}

std::string run_checked(const std::vector<std::string>& argv) {
    auto r = run(argv, true);
    if (r.status != 0)
        throw LabError("command failed (exit " + std::to_string(r.status) + "): " + join_argv(argv) +
                       (r.output.empty() ? "" : "\n  " + trim(r.output)));
    return r.output;
}

bool path_exists(const std::string& p) {
    struct stat st;
    return lstat(p.c_str(), &st) == 0;
}

bool is_dir(const std::string& p) {
    struct stat st;
    return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::optional<std::string> read_file(const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    if (!in) return std::nullopt;
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void write_file(const std::string& p, const std::string& data, mode_t mode) {
    UniqueFd fd(open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
    if (!fd) throw LabError("cannot create " + p + ": " + strerror(errno));
    size_t off = 0;
    while (off < data.size()) {
        ssize_t n = write(fd.get(), data.data() + off, data.size() - off);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw LabError("cannot write " + p + ": " + strerror(errno));
        }
        off += static_cast<size_t>(n);
    }
}

void write_sysfs(const std::string& p, const std::string& data) {
    UniqueFd fd(open(p.c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd) throw LabError("cannot open " + p + ": " + strerror(errno));
    if (write(fd.get(), data.data(), data.size()) < 0)
        throw LabError("cannot write '" + data + "' to " + p + ": " + strerror(errno));
}

void write_file_atomic(const std::string& p, const std::string& data, mode_t mode) {
    std::string tmp = p + ".tmp";
    write_file(tmp, data, mode);
    if (rename(tmp.c_str(), p.c_str()) != 0) throw LabError("cannot rename " + tmp + ": " + strerror(errno));
}

void mkdir_p(const std::string& p, mode_t mode) {
    if (p.empty()) return;
    std::string cur;
    for (const auto& part : split(p, '/')) {
        if (part.empty()) continue;
        cur += "/" + part;
        if (mkdir(cur.c_str(), mode) != 0 && errno != EEXIST)
            throw LabError("cannot create directory " + cur + ": " + strerror(errno));
    }
}

namespace {
bool g_remove_failed = false;
int remove_cb(const char* path, const struct stat*, int type, struct FTW*) {
    int rc = (type == FTW_DP) ? rmdir(path) : unlink(path);
    if (rc != 0 && errno != ENOENT) {
        spdlog::warn("cannot remove {}: {}", path, strerror(errno));
        g_remove_failed = true;
    }
    return 0;
}
}  // namespace

bool remove_tree(const std::string& p) {
    if (!path_exists(p)) return true;
    g_remove_failed = false;
    // FTW_MOUNT: stay on this filesystem (a leftover mount is never emptied), FTW_PHYS: no symlinks.
    nftw(p.c_str(), remove_cb, 32, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
    return !g_remove_failed && !path_exists(p);
}

std::string dirname_of(const std::string& p) {
    auto pos = p.find_last_of('/');
    if (pos == std::string::npos) return ".";
    if (pos == 0) return "/";
    return p.substr(0, pos);
}

std::string trim(const std::string& s) {
    size_t b = s.find_first_not_of(" \t\r\n");
    if (b == std::string::npos) return "";
    size_t e = s.find_last_not_of(" \t\r\n");
    return s.substr(b, e - b + 1);
}

std::vector<std::string> split(const std::string& s, char sep) {
    std::vector<std::string> out;
    std::string cur;
    for (char c : s) {
        if (c == sep) {
            out.push_back(cur);
            cur.clear();
        } else {
            cur += c;
        }
    }
    out.push_back(cur);
    return out;
}

std::string tail_file(const std::string& p, int lines) {
    auto content = read_file(p);
    if (!content) return "(no log at " + p + ")";
    std::deque<std::string> last;
    std::istringstream in(*content);
    std::string line;
    while (std::getline(in, line)) {
        last.push_back(line);
        if (static_cast<int>(last.size()) > lines) last.pop_front();
    }
    std::string out;
    for (const auto& l : last) out += "    " + l + "\n";
    return out.empty() ? "    (log is empty)\n" : out;
}

std::vector<int> parse_cpu_list(const std::string& list) {
    std::set<int> cpus;
    auto bad = [&]() { return LabError("bad CPU list '" + list + "' (expected e.g. 0 or 0-2,5)"); };
    if (trim(list).empty()) throw bad();
    for (const auto& raw : split(trim(list), ',')) {
        std::string part = trim(raw);
        if (part.empty()) throw bad();
        auto dash = part.find('-');
        try {
            size_t used = 0;
            if (dash == std::string::npos) {
                int v = std::stoi(part, &used);
                if (used != part.size() || v < 0) throw bad();
                cpus.insert(v);
            } else {
                std::string a = part.substr(0, dash), b = part.substr(dash + 1);
                size_t ua = 0, ub = 0;
                int lo = std::stoi(a, &ua), hi = std::stoi(b, &ub);
                if (ua != a.size() || ub != b.size() || lo < 0 || hi < lo) throw bad();
                for (int c = lo; c <= hi; ++c) cpus.insert(c);
            }
        } catch (const std::logic_error&) {
            throw bad();
        }
    }
    return {cpus.begin(), cpus.end()};
}

std::string format_cpu_list(const std::vector<int>& cpus) {
    std::string out;
    size_t i = 0;
    while (i < cpus.size()) {
        size_t j = i;
        while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
        if (!out.empty()) out += ',';
        out += std::to_string(cpus[i]);
        if (j > i) out += "-" + std::to_string(cpus[j]);
        i = j + 1;
    }
    return out;
}

std::vector<int> online_cpus() {
    auto s = read_file("/sys/devices/system/cpu/online");
    if (!s) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        std::vector<int> v;
        for (int i = 0; i < n; ++i) v.push_back(i);
        return v;
    }
    return parse_cpu_list(trim(*s));
}

std::string self_exe() {
    char buf[4096];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n <= 0) return "";
    return std::string(buf, static_cast<size_t>(n));
}

std::string self_exe_dir() { return dirname_of(self_exe()); }

std::string find_binary(const std::string& name) {
    std::string sib = self_exe_dir() + "/" + name;
    if (access(sib.c_str(), X_OK) == 0) return sib;
    const char* path = getenv("PATH");
    for (const auto& dir : split(path ? path : "/usr/local/bin:/usr/bin:/bin", ':')) {
        if (dir.empty()) continue;
        std::string cand = dir + "/" + name;
        if (access(cand.c_str(), X_OK) == 0 && !is_dir(cand)) return cand;
    }
    return "";
}

}  // namespace vpipe::lab

namespace vpipe::lab {

namespace {
std::string unescape_mount(const std::string& s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\\' && i + 3 < s.size() && isdigit(s[i + 1]) && isdigit(s[i + 2]) && isdigit(s[i + 3])) {
            out += static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
            i += 3;
        } else {
            out += s[i];
        }
    }
    return out;
}
}  // namespace

std::vector<MountEntry> read_mounts() {
    std::vector<MountEntry> out;
    auto text = read_file("/proc/self/mountinfo");
    if (!text) return out;
    std::istringstream in(*text);
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream ls(line);
        std::vector<std::string> f;
        std::string w;
        while (ls >> w) f.push_back(w);
        auto dash = std::find(f.begin(), f.end(), "-");
        if (f.size() < 5 || dash == f.end() || std::distance(dash, f.end()) < 4) continue;
        MountEntry m;
        m.mount_point = unescape_mount(f[4]);
        m.fstype = *(dash + 1);
        m.source = unescape_mount(*(dash + 2));
        m.super_options = *(dash + 3);
        out.push_back(m);
    }
    return out;
}

}  // namespace vpipe::lab
