// The lab test fixture: what every lab integration test (tests/lab/*) shares.
//
//   run / lab / client / sh    a program (no shell) / vpipe-lab / a script on the client host /
//                              a bash script, stdout and stderr captured (apart, or together)
//   lab_present / lab_netns    is a lab (anybody's) up on this host
//   lab_skip_reason            why the lab can't be used here at all (not root, not built)
//   LabProc                    a process in a VM / the client / dom0 with line-by-line stdout
//   LabServer                  a server in a VM (`vpipe-lab exec`), logging to a file
//   fill_pattern & co.         deterministic data: byte i of stream `seed`; files of it; SHA-256
//   LabFixture                 the gtest fixture: brings the lab up once per suite with the
//                              suite's `vpipe-lab up` arguments (waiting while someone else's
//                              lab is up, never touching it), skips with the reason when it
//                              can't, takes down only the lab it brought up; engine stats and
//                              the leave-nothing-behind check for after each test.
//
// Every target that includes it defines VPIPE_BIN_DIR (the build's bin/ directory) and links
// GTest and nlohmann_json.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#ifndef VPIPE_BIN_DIR
#error "lab_fixture.h needs VPIPE_BIN_DIR (target_compile_definitions)"
#endif

namespace vpipe::labtest {

inline const std::string kBin = VPIPE_BIN_DIR;
inline const std::string kLab = kBin + "/vpipe-lab";
inline const std::string kCtl = kBin + "/vpipectl";
inline const std::string kHttpd = kBin + "/vpipe-httpd";
inline const std::string kProxy = kBin + "/vpipe-proxy";
inline const std::string kLabRun = "/run/vpipe-lab";  // the lab's state, sockets, mounts
inline const std::string kClientIp = "10.199.0.1";
inline const std::string kVm1Ip = "10.199.0.11";
inline const std::string kVm2Ip = "10.199.0.12";
inline constexpr uint64_t kMiB = 1024 * 1024;

// ---- processes ---------------------------------------------------------------------------------

struct Res {
    int status = -1;
    std::string out, err;  // err stays empty with merge_stderr
    std::string all() const { return out + err; }
};

struct RunOpts {
    std::vector<std::string> env;  // "NAME=value" entries added to the environment
    int uid = -1;                  // >= 0: drop to this uid (and gid) before exec
    bool merge_stderr = false;     // stderr into `out`, interleaved as written
};

// In a forked child: executes argv (searching PATH for a bare name); exits 127 if it can't.
[[noreturn]] inline void exec_argv(const std::vector<std::string>& argv) {
    std::vector<char*> a;
    for (const auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
    a.push_back(nullptr);
    execvp(a[0], a.data());
    _exit(127);
}

// Runs argv (no shell; stdin /dev/null) to completion, capturing its output. Status: the exit
// code, 128 + signal, 127 when it can't be executed.
inline Res run(const std::vector<std::string>& argv, const RunOpts& o = {}) {
    int po[2], pe[2] = {-1, -1};
    if (pipe2(po, O_CLOEXEC) != 0) return {};
    if (!o.merge_stderr && pipe2(pe, O_CLOEXEC) != 0) {
        close(po[0]);
        close(po[1]);
        return {};
    }
    pid_t pid = fork();
    if (pid == 0) {
        dup2(po[1], 1);
        dup2(o.merge_stderr ? po[1] : pe[1], 2);
        int devnull = open("/dev/null", O_RDONLY);
        dup2(devnull, 0);
        for (const auto& e : o.env) putenv(const_cast<char*>(e.c_str()));
        if (o.uid >= 0 && (setgid(o.uid) != 0 || setuid(o.uid) != 0)) _exit(99);
        exec_argv(argv);
    }
    close(po[1]);
    if (pe[1] >= 0) close(pe[1]);
    Res r;
    pollfd p[2] = {{po[0], POLLIN, 0}, {pe[0], POLLIN, 0}};
    int open_fds = pe[0] >= 0 ? 2 : 1;
    std::vector<char> buf(65536);
    while (open_fds > 0) {
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        for (int i = 0; i < 2; ++i) {
            if (p[i].fd < 0 || !(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            ssize_t n = read(p[i].fd, buf.data(), buf.size());
            if (n <= 0) {
                close(p[i].fd);
                p[i].fd = -1;
                --open_fds;
            } else {
                (i == 0 ? r.out : r.err).append(buf.data(), static_cast<size_t>(n));
            }
        }
    }
    for (auto& x : p)
        if (x.fd >= 0) close(x.fd);
    int ws = 0;
    if (pid < 0 || waitpid(pid, &ws, 0) != pid) return r;
    r.status = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
    return r;
}

// vpipe-lab <args>
inline Res lab(std::vector<std::string> args, const RunOpts& o = {}) {
    args.insert(args.begin(), kLab);
    return run(args, o);
}

// A bash script (with pipefail) here / on the lab's client host (10.199.0.1).
inline Res sh(const std::string& script) { return run({"bash", "-o", "pipefail", "-c", script}); }
inline Res client(const std::string& script) { return lab({"client", "--", "bash", "-o", "pipefail", "-c", script}); }

// A tool on PATH or in the system's bin directories.
inline bool have_tool(const std::string& tool) {
    std::string dirs = getenv("PATH") ? getenv("PATH") : "";
    dirs += ":/usr/sbin:/usr/bin:/sbin:/bin";
    std::stringstream ss(dirs);
    for (std::string d; std::getline(ss, d, ':');)
        if (!d.empty() && access((d + "/" + tool).c_str(), X_OK) == 0) return true;
    return false;
}

inline std::string slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

inline std::string sha256_of(const std::string& path) {
    auto r = run({"sha256sum", path});
    return r.status == 0 ? r.out.substr(0, 64) : "sha256sum failed: " + r.err;
}

// SIGTERM, then SIGKILL after `grace`; the exit status (128 + signal), -1 if there is no child.
inline int stop_process(pid_t* pid, std::chrono::milliseconds grace = std::chrono::seconds(10)) {
    if (*pid <= 0) return -1;
    kill(*pid, SIGTERM);
    int ws = 0;
    const auto deadline = std::chrono::steady_clock::now() + grace;
    for (;;) {
        pid_t w = waitpid(*pid, &ws, WNOHANG);
        if (w == *pid) break;
        if (w < 0) {
            *pid = -1;
            return -1;
        }
        if (std::chrono::steady_clock::now() >= deadline) {
            kill(*pid, SIGKILL);
            waitpid(*pid, &ws, 0);
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    *pid = -1;
    return WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
}

// argv run on a lab host: "client", "dom0", or a VM ("vm1": `vpipe-lab exec vm1 -- argv`).
inline std::vector<std::string> lab_argv(const std::string& where, const std::vector<std::string>& argv) {
    std::vector<std::string> av{kLab};
    if (where == "client" || where == "dom0") {
        av.push_back(where);
    } else {
        av.push_back("exec");
        av.push_back(where);
    }
    av.push_back("--");
    av.insert(av.end(), argv.begin(), argv.end());
    return av;
}

// A process on a lab host whose stdout is read line by line (stderr goes to the test's).
// Killed (SIGKILL) and reaped on destruction if still running.
class LabProc {
public:
    pid_t pid = -1;
    std::string all;  // everything read so far

    LabProc(const std::string& where, const std::vector<std::string>& argv) {
        int p[2];
        if (pipe2(p, O_CLOEXEC) != 0) return;
        const auto av = lab_argv(where, argv);
        pid = fork();
        if (pid == 0) {
            dup2(p[1], 1);
            exec_argv(av);
        }
        close(p[1]);
        if (pid < 0) {
            close(p[0]);
            return;
        }
        out_ = fdopen(p[0], "r");
    }
    LabProc(const LabProc&) = delete;
    LabProc& operator=(const LabProc&) = delete;
    ~LabProc() {
        if (pid > 0) kill(pid, SIGKILL);
        wait();
    }

    // The next line starting with `prefix` (without its newline), "" at EOF.
    std::string line(const std::string& prefix) {
        char buf[4096];
        while (out_ && fgets(buf, sizeof(buf), out_)) {
            std::string l = buf;
            all += l;
            if (!l.empty() && l.back() == '\n') l.pop_back();
            if (l.rfind(prefix, 0) == 0) return l;
        }
        return "";
    }
    // Reads the rest, reaps it; its exit status (-1 if killed or already reaped).
    int wait() {
        if (out_) {
            char buf[4096];
            while (fgets(buf, sizeof(buf), out_)) all += buf;
            fclose(out_);
            out_ = nullptr;
        }
        int st = 0;
        if (pid > 0) waitpid(pid, &st, 0);
        const bool reaped = pid > 0;
        pid = -1;
        return reaped && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    }

private:
    FILE* out_ = nullptr;
};

// A server in a VM (`vpipe-lab exec <vm> -- args`: exec'd in place, so `pid` is the server's),
// stdout and stderr appended to `log`.
struct LabServer {
    pid_t pid = -1;
    std::string log;
};

// Starts it and waits up to 10 s for "listening on" in its log. On failure `*error` says why
// (pid -1 when it exited; still set when it only did not start listening in time).
inline LabServer start_lab_server(const std::string& vm, const std::string& log, const std::vector<std::string>& args,
                                  std::string* error) {
    LabServer s;
    s.log = log;
    const auto av = lab_argv(vm, args);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        int devnull = open("/dev/null", O_RDONLY);
        dup2(devnull, 0);
        exec_argv(av);
    }
    s.pid = pid;
    for (int i = 0; i < 100; ++i) {
        if (slurp(log).find("listening on") != std::string::npos) return s;
        int ws;
        if (waitpid(pid, &ws, WNOHANG) == pid) {
            s.pid = -1;
            *error = "exited at start: " + slurp(log);
            return s;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    *error = "did not start listening within 10 s: " + slurp(log);
    return s;
}

// ---- deterministic data ------------------------------------------------------------------------
// Byte i of stream `seed` is byte i % 8 of mix(seed * 1000003 + i / 8): any range of any stream
// can be made and checked on its own, without the bytes before it.

inline uint64_t mix(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

// Bytes [pos, pos + n) of stream `seed` into p.
inline void fill_pattern(uint64_t seed, uint64_t pos, void* dst, size_t n) {
    auto* p = static_cast<uint8_t*>(dst);
    size_t i = 0;
    while (i < n) {
        const uint64_t at = pos + i;
        const uint64_t word = mix(seed * 1000003ull + at / 8);
        for (unsigned b = static_cast<unsigned>(at % 8); b < 8 && i < n; ++b, ++i)
            p[i] = static_cast<uint8_t>(word >> (b * 8));
    }
}

// Index of the first byte of p that differs from bytes [pos, pos + n) of stream `seed`, or -1.
inline long long check_pattern(uint64_t seed, uint64_t pos, const void* src, size_t n) {
    const auto* p = static_cast<const uint8_t*>(src);
    std::vector<uint8_t> want(std::min<size_t>(n, 1 << 20));
    for (size_t done = 0; done < n;) {
        const size_t k = std::min(want.size(), n - done);
        fill_pattern(seed, pos + done, want.data(), k);
        for (size_t i = 0; i < k; ++i)
            if (p[done + i] != want[i]) return static_cast<long long>(done + i);
        done += k;
    }
    return -1;
}

inline std::vector<char> pattern(uint64_t seed, size_t n) {
    std::vector<char> v(n);
    fill_pattern(seed, 0, v.data(), n);
    return v;
}

// A file of the first `size` bytes of stream `seed`, on disk (fsync) when this returns;
// `drop_cache`: not left in the page cache either. "" or what went wrong.
inline std::string write_pattern_file(const std::string& path, uint64_t seed, uint64_t size, bool drop_cache = false) {
    int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return "cannot create " + path + ": " + strerror(errno);
    std::vector<uint8_t> buf(std::min<uint64_t>(size, kMiB));
    for (uint64_t done = 0; done < size;) {
        const size_t k = static_cast<size_t>(std::min<uint64_t>(buf.size(), size - done));
        fill_pattern(seed, done, buf.data(), k);
        if (write(fd, buf.data(), k) != static_cast<ssize_t>(k)) {
            const std::string e = "cannot write " + path + ": " + strerror(errno);
            close(fd);
            return e;
        }
        done += k;
    }
    const bool synced = fsync(fd) == 0;
    if (drop_cache) posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
    return synced ? "" : "cannot fsync " + path;
}

// ---- the lab -----------------------------------------------------------------------------------

// The lab's network namespaces present on this host (vpl-*).
inline std::vector<std::string> lab_netns() {
    std::vector<std::string> out;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator("/run/netns", ec))
        if (e.path().filename().string().rfind("vpl-", 0) == 0) out.push_back(e.path().filename().string());
    return out;
}

// Is a lab (anybody's, maybe half up or half down) on this host?
inline bool lab_present() {
    std::error_code ec;
    return std::filesystem::exists(kLabRun, ec) || !lab_netns().empty() || lab({"info"}).status == 0;
}

// Why lab tests can't run here at all ("" if they can): not root, or one of `binaries` (names
// in the build's bin/ directory) or `tools` (on PATH) is missing.
inline std::string lab_skip_reason(const std::vector<std::string>& binaries = {"vpipe-lab"},
                                   const std::vector<std::string>& tools = {}) {
    if (geteuid() != 0) return "needs root (the lab uses namespaces, loop devices, mounts, cgroups and nftables)";
    for (const auto& b : binaries)
        if (access((kBin + "/" + b).c_str(), X_OK) != 0) return kBin + "/" + b + " is not built";
    for (const auto& t : tools)
        if (!have_tool(t)) return t + " is not installed (scripts/install-deps.sh)";
    return "";
}

struct LabOptions {
    std::vector<std::string> up;        // arguments of `vpipe-lab up`
    std::vector<std::string> binaries;  // needed besides vpipe-lab, vpiped and vpipe-guestd
    std::vector<std::string> tools;     // needed on PATH (curl, ...)
    std::string name = "lab";           // for the temporary directory /tmp/vpipe-<name>-XXXXXX
};

// The fixture of a suite that runs in one lab. The suite's SetUpTestSuite calls
// bring_up({...}) first (and returns when it returns false); TearDownTestSuite stops the
// servers, takes the lab down if this suite brought it up and removes tmp_. Tests are skipped
// (the reason given) when the lab can't be used here, fail when bringing it up failed.
class LabFixture : public ::testing::Test {
protected:
    static bool bring_up(const LabOptions& o) {
        using namespace std::chrono_literals;
        skip_.clear();
        error_.clear();
        info_ = nlohmann::json();
        std::vector<std::string> bins{"vpipe-lab", "vpiped", "vpipe-guestd"};
        bins.insert(bins.end(), o.binaries.begin(), o.binaries.end());
        skip_ = lab_skip_reason(bins, o.tools);
        if (!skip_.empty()) return false;
        // One lab per host, shared with other people's tests: wait for a running one to go
        // away (at most 10 minutes) instead of touching it.
        const auto deadline = std::chrono::steady_clock::now() + 10min;
        for (;;) {
            if (!lab_present()) {
                std::vector<std::string> args{"up"};
                args.insert(args.end(), o.up.begin(), o.up.end());
                auto up = lab(args);
                if (up.status == 0) {
                    owns_lab_ = true;
                    break;
                }
                if (up.all().find("already up") == std::string::npos) {
                    error_ = "vpipe-lab up failed (" + std::to_string(up.status) + "): " + up.all();
                    return false;
                }
                // somebody else won the race: wait like for any other running lab
            }
            if (std::chrono::steady_clock::now() >= deadline) {
                // not a skip: a lab that never goes away is a leftover the suite must report
                error_ = "a lab has been up for 10 minutes (a leftover, or someone else's): not touching it; "
                         "`vpipe-lab info` tells whose, `vpipe-lab down` removes it";
                return false;
            }
            std::fprintf(stderr, "[ lab busy ] another lab is up; retrying in 10 s\n");
            std::this_thread::sleep_for(10s);
        }
        auto r = lab({"info", "--json"});
        info_ = nlohmann::json::parse(r.out, nullptr, false);
        if (r.status != 0 || info_.is_discarded() || !info_.contains("vms")) {
            error_ = "vpipe-lab info --json failed: " + r.all();
            return false;
        }
        std::string tmpl = "/tmp/vpipe-" + o.name + "-XXXXXX";
        if (!mkdtemp(tmpl.data())) {
            error_ = "mkdtemp failed";
            return false;
        }
        tmp_ = tmpl;
        chmod(tmp_.c_str(), 0755);
        return true;
    }

    static void TearDownTestSuite() {
        stop_servers();
        if (owns_lab_) {
            owns_lab_ = false;
            auto r = lab({"down"});
            if (r.status != 0) ADD_FAILURE() << "vpipe-lab down failed (" << r.status << "): " << r.all();
            EXPECT_FALSE(lab_present()) << "the lab is still there after vpipe-lab down: " << r.all();
        }
        if (!tmp_.empty()) {
            std::error_code ec;
            std::filesystem::remove_all(tmp_, ec);
            tmp_.clear();
        }
    }

    void SetUp() override {
        if (!skip_.empty()) GTEST_SKIP() << skip_;
        ASSERT_TRUE(error_.empty()) << error_;
        ASSERT_TRUE(owns_lab_) << "the suite did not bring the lab up";
    }

    // The lab is up, ours, and the suite's set-up went through.
    static bool ready() { return skip_.empty() && error_.empty() && owns_lab_; }

    // Mount point of disk `disk` of VM `vm` (1-based: vm1 is info_["vms"][0]).
    static std::string mount(int vm, int disk = 0) {
        return info_["vms"][vm - 1]["disks"][disk]["mount"].get<std::string>();
    }

    // vpipectl --control <the lab engine's socket> args
    static Res engine(std::vector<std::string> args) {
        args.insert(args.begin(), {kCtl, "--control", info_["engine"]["control_socket"].get<std::string>()});
        return run(args);
    }
    // The engine's `stats --json` (an empty object if that failed).
    static nlohmann::json engine_stats() {
        auto j = nlohmann::json::parse(engine({"stats", "--json"}).out, nullptr, false);
        return j.is_discarded() ? nlohmann::json::object() : j;
    }

    // The lab's engine (vpiped) as the lab records it now (a restart changes it).
    static pid_t engine_pid() {
        auto j = nlohmann::json::parse(lab({"info", "--json"}).out, nullptr, false);
        return j.is_discarded() ? -1 : j["engine"].value("pid", -1);
    }
    // vm1's agent restarted with a short request_timeout_ms (`vpipe-lab restart-agent vm1
    // --request-timeout-ms`), for the engine-hang cases; on destruction restarted again with its
    // configuration's (60 s), so that no other test runs under the short bound.
    struct ShortAgentTimeout {
        std::string error;   // empty when the agent came up with the short bound
        explicit ShortAgentTimeout(uint32_t ms) {
            auto r = lab({"restart-agent", "vm1", "--request-timeout-ms", std::to_string(ms)});
            if (r.status != 0) error = r.all();
        }
        ~ShortAgentTimeout() {
            auto r = lab({"restart-agent", "vm1"});
            EXPECT_EQ(r.status, 0) << r.all();
        }
    };
    // The engine stopped (SIGSTOP): it answers nothing, and holds what it holds. Continued
    // (SIGCONT) by resume() or on destruction -- never left stopped (the next test would hang on
    // its control socket). Nothing here may ask the engine anything while it is stopped.
    struct EngineHang {
        pid_t pid;
        bool stopped = false;
        explicit EngineHang(pid_t p) : pid(p) { stopped = pid > 0 && ::kill(pid, SIGSTOP) == 0; }
        void resume() {
            if (stopped) ::kill(pid, SIGCONT);
            stopped = false;
        }
        ~EngineHang() { resume(); }
    };

    // Nothing of any offloaded flow stays behind: no shadow socket or steered flow in the
    // engine, no per-flow element in dom0's nft table `bridge vpipe`, none in a VM's `ip
    // vpipe_guest` (created on the VM's first socket offload: absent is fine).
    static void expect_nothing_left_behind() {
        const nlohmann::json s = engine_stats();
        EXPECT_EQ(s.value("shadow_sockets", -1), 0) << s.dump();
        EXPECT_EQ(s.value("steered_flows", -1), 0) << s.dump();
        ASSERT_TRUE(s.contains("vms") && s["vms"].size() == info_["vms"].size())
            << "the engine does not report every VM: " << s.dump();
        for (const auto& vm : s["vms"]) {
            EXPECT_EQ(vm.value("shadow_sockets", -1), 0) << vm.dump();
            EXPECT_EQ(vm.value("steered_flows", -1), 0) << vm.dump();
        }
        auto rs = lab({"dom0", "--", "nft", "-j", "list", "ruleset"});
        ASSERT_EQ(rs.status, 0) << rs.all();
        auto j = nlohmann::json::parse(rs.out, nullptr, false);
        ASSERT_FALSE(j.is_discarded()) << rs.out;
        int elems = 0, vpipe_sets = 0;
        for (const auto& o : j["nftables"])
            for (const char* k : {"set", "map"})
                if (o.contains(k) && o[k].value("family", "") == "bridge" && o[k].value("table", "") == "vpipe") {
                    ++vpipe_sets;
                    if (o[k].contains("elem")) elems += static_cast<int>(o[k]["elem"].size());
                }
        EXPECT_GT(vpipe_sets, 0) << "dom0's steering sets (table bridge vpipe) are missing: " << rs.out;
        EXPECT_EQ(elems, 0) << "per-flow elements left in dom0: " << rs.out;
        for (const auto& vm : info_["vms"]) {
            const std::string name = vm.value("name", "?");
            auto g = lab({"exec", name, "--", "nft", "-j", "list", "table", "ip", "vpipe_guest"});
            const bool listed = g.status == 0 && g.out.find("\"flows4\"") != std::string::npos;
            const bool absent = g.status == 1 && g.err.find("No such file or directory") != std::string::npos;
            EXPECT_TRUE(listed || absent) << name << ": " << g.status << " " << g.all();
            EXPECT_EQ(g.out.find("\"elem\""), std::string::npos) << name << ": per-flow elements left: " << g.out;
        }
        std::printf("[ left behind ] dom0 nft: %d vpipe set(s), %d element(s); engine: %d shadow sockets, %d steered "
                    "flows\n",
                    vpipe_sets, elems, s.value("shadow_sockets", -1), s.value("steered_flows", -1));
    }

    // A server in `vm` under the name `key` (its log: tmp_/<key>-<n>.log, a fresh one each
    // time), stopped by stop_servers() at the latest. A failure to start is a test failure, or
    // with `error` given, reported there.
    static LabServer& start_server(const std::string& key, const std::string& vm, const std::vector<std::string>& args,
                                   std::string* error = nullptr) {
        static int serial = 0;
        stop_server(key);
        std::string e;
        servers_[key] = start_lab_server(vm, tmp_ + "/" + key + "-" + std::to_string(++serial) + ".log", args, &e);
        if (!e.empty()) {
            if (error) {
                *error = key + " in " + vm + " " + e;
            } else {
                ADD_FAILURE() << key << " in " << vm << " " << e;
            }
        }
        return servers_[key];
    }
    static bool has_server(const std::string& key) { return servers_.count(key) != 0; }
    static std::string server_log(const std::string& key) {
        return servers_.count(key) ? slurp(servers_[key].log) : "";
    }
    // SIGTERM, then SIGKILL after 10 s; the exit status, -1 if not running.
    static int stop_server(LabServer* s) { return stop_process(&s->pid); }
    static int stop_server(const std::string& key) { return servers_.count(key) ? stop_server(&servers_[key]) : -1; }
    static void stop_servers() {
        for (auto& [key, s] : servers_) stop_server(&s);
        servers_.clear();
    }

    static inline std::string skip_;   // set: every test is skipped with this reason
    static inline std::string error_;  // set: every test fails with this
    static inline bool owns_lab_ = false;
    static inline nlohmann::json info_;  // vpipe-lab info --json
    static inline std::string tmp_;      // a directory of the suite's own, removed at the end
    static inline std::map<std::string, LabServer> servers_;
};

}  // namespace vpipe::labtest
