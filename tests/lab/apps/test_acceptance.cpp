// Acceptance of issue 3 ("Shadow sockets") in the lab, with the real applications and curl:
//  (A) curl on the client host downloads a 512 MiB file from `vpipe-httpd --mode vpipe` in vm1
//      with the right SHA-256; the httpd process and vm1's agent together move < 1 MiB through
//      syscalls (/proc/PID/io rchar + wchar) while the engine reads >= 512 MiB of vm1's disk
//      image; the same connection then serves a second request correctly.
//  (B) a PUT of 256 MiB, and a GET of 256 MiB through `vpipe-proxy --mode vpipe` in vm1 from
//      `vpipe-httpd --mode vpipe` in vm2, arrive byte-exact.
//  (C) after every test: no per-flow element in dom0's nft ruleset, no shadow socket or steered
//      flow in the engine, no flow blocked in a VM.
//
// ctest runs each case in its own process: each brings the lab up (waiting up to 10 minutes
// while someone else's lab is up, never touching it) and takes down only the lab it brought up.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "app_lab.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace std::chrono_literals;

using namespace vpipe::labtest;

// rchar + wchar of a process (bytes through read/write-like syscalls), or -1.
int64_t io_bytes(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/io");
    std::string k;
    int64_t v = 0, sum = 0;
    int seen = 0;
    while (in >> k >> v) {
        if (k == "rchar:" || k == "wchar:") {
            sum += v;
            ++seen;
        }
    }
    return seen == 2 ? sum : -1;
}

// `head -c n /dev/urandom` into path (on the host; the VMs' disks are mounted here).
void random_file(const std::string& path, uint64_t n) {
    auto r = run({"bash", "-c", "head -c " + std::to_string(n) + " /dev/urandom > '" + path + "' && sync '" + path + "'"});
    ASSERT_EQ(r.status, 0) << r.err;
    ASSERT_EQ(fs::file_size(path), n);
}

struct Server {
    pid_t pid = -1;
    std::string log;
};

class Acceptance : public ::testing::Test {
protected:
    static inline std::string skip_, setup_err_, tmp_, control_;
    static inline bool owns_lab_ = false;
    static inline json info_;
    static inline std::string root_[3];
    static inline std::vector<Server> servers_;

    static bool lab_busy() {
        if (lab({"info"}).status == 0) return true;
        std::error_code ec;
        if (fs::exists("/run/vpipe-lab", ec)) return true;
        for (const auto& e : fs::directory_iterator("/run/netns", ec))
            if (e.path().filename().string().rfind("vpl-", 0) == 0) return true;
        return false;
    }

    static void SetUpTestSuite() {
        skip_.clear();
        setup_err_.clear();
        if (geteuid() != 0) {
            skip_ = "needs root (the lab uses namespaces, loop devices, mounts and cgroups)";
            return;
        }
        for (const auto& b : {kLab, kHttpd, kProxy, kBin + "/vpiped", kBin + "/vpipe-guestd", kBin + "/vpipectl"})
            if (access(b.c_str(), X_OK) != 0) {
                skip_ = b + " is not built";
                return;
            }
        if (run({"bash", "-c", "command -v curl"}).status != 0) {
            skip_ = "curl is not installed";
            return;
        }
        auto deadline = std::chrono::steady_clock::now() + 10min;
        for (;;) {
            if (!lab_busy()) {
                auto up = lab({"up", "--vms", "2", "--disk-mib", "2048"});
                if (up.status == 0) {
                    owns_lab_ = true;
                    break;
                }
                if ((up.out + up.err).find("already up") == std::string::npos) {
                    setup_err_ = "vpipe-lab up failed: " + up.out + up.err;
                    return;
                }
            }
            if (std::chrono::steady_clock::now() >= deadline) {
                skip_ = "someone else's lab stayed up for 10 minutes; not touching it";
                return;
            }
            std::fprintf(stderr, "[ lab busy ] another lab is up; retrying in 10 s\n");
            std::this_thread::sleep_for(10s);
        }
        auto r = lab({"info", "--json"});
        info_ = json::parse(r.out, nullptr, false);
        if (r.status != 0 || info_.is_discarded()) {
            setup_err_ = "vpipe-lab info --json failed: " + r.out + r.err;
            return;
        }
        for (int i = 1; i <= 2; ++i) root_[i] = info_["vms"][i - 1]["disks"][0]["mount"].get<std::string>();
        control_ = info_["engine"]["control_socket"].get<std::string>();
        char tmpl[] = "/tmp/vpipe-acceptance-XXXXXX";
        if (!mkdtemp(tmpl)) {
            setup_err_ = "mkdtemp failed";
            return;
        }
        tmp_ = tmpl;
        chmod(tmp_.c_str(), 0755);
    }

    static void TearDownTestSuite() {
        for (auto& s : servers_) stop(&s);
        servers_.clear();
        if (owns_lab_) {
            auto r = lab({"down"});
            if (r.status != 0) std::fprintf(stderr, "vpipe-lab down failed: %s%s\n", r.out.c_str(), r.err.c_str());
            owns_lab_ = false;
        }
        if (!tmp_.empty()) {
            std::error_code ec;
            fs::remove_all(tmp_, ec);
            tmp_.clear();
        }
    }

    void SetUp() override {
        if (!skip_.empty()) GTEST_SKIP() << skip_;
        ASSERT_TRUE(setup_err_.empty()) << setup_err_;
    }

    // (C): nothing of any flow stays behind.
    void TearDown() override {
        if (!skip_.empty() || !setup_err_.empty() || !owns_lab_) return;
        for (auto& s : servers_) stop(&s);  // idle keep-alive connections closed too
        servers_.clear();
        json s = stats();
        EXPECT_EQ(s.value("shadow_sockets", -1), 0) << s.dump();
        EXPECT_EQ(s.value("steered_flows", -1), 0) << s.dump();
        for (const auto& vm : s["vms"]) {
            EXPECT_EQ(vm.value("shadow_sockets", -1), 0) << vm.dump();
            EXPECT_EQ(vm.value("steered_flows", -1), 0) << vm.dump();
        }
        auto rs = lab({"dom0", "--", "nft", "-j", "list", "ruleset"});
        EXPECT_EQ(rs.status, 0) << rs.err;
        auto j = json::parse(rs.out, nullptr, false);
        ASSERT_FALSE(j.is_discarded()) << rs.out;
        int elems = 0, vpipe_sets = 0;
        for (const auto& o : j["nftables"])
            for (const char* k : {"set", "map"})
                if (o.contains(k) && o[k].value("table", "") == "vpipe") {
                    ++vpipe_sets;
                    if (o[k].contains("elem")) elems += static_cast<int>(o[k]["elem"].size());
                }
        EXPECT_GT(vpipe_sets, 0) << "dom0's steering set is missing: " << rs.out;
        EXPECT_EQ(elems, 0) << "per-flow elements left in dom0: " << rs.out;
        for (const char* vm : {"vm1", "vm2"}) {
            auto g = lab({"exec", vm, "--", "nft", "-j", "list", "table", "ip", "vpipe_guest"});
            // created on the first socket offload: either absent or without elements
            EXPECT_TRUE(g.out.find("\"flows4\"") != std::string::npos || g.err.find("No such file") != std::string::npos)
                << vm << ": " << g.out << g.err;
            EXPECT_EQ(g.out.find("\"elem\""), std::string::npos) << vm << ": " << g.out;
        }
        std::printf("[ C ] dom0 nft: %d vpipe set(s), %d element(s); engine: %d shadow sockets, %d steered flows\n",
                    vpipe_sets, elems, s.value("shadow_sockets", -1), s.value("steered_flows", -1));
    }

    static json stats() {
        auto r = run({kBin + "/vpipectl", "--control", control_, "stats", "--json"});
        auto j = json::parse(r.out, nullptr, false);
        return j.is_discarded() ? json::object() : j;
    }
    static uint64_t disk_bytes_read(const std::string& vm) {
        uint64_t n = 0;
        const json st = stats();  // (not a temporary: the loop below refers into it)
        for (const auto& v : st["vms"])
            if (v.value("name", "") == vm)
                for (const auto& d : v["disks"]) n += d.value("bytes_read", uint64_t{0});
        return n;
    }

    static int stop(Server* s) {
        if (s->pid <= 0) return -1;
        kill(s->pid, SIGTERM);
        int ws = 0;
        for (int i = 0; i < 100; ++i) {
            if (waitpid(s->pid, &ws, WNOHANG) == s->pid) {
                s->pid = -1;
                return WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
            }
            std::this_thread::sleep_for(100ms);
        }
        kill(s->pid, SIGKILL);
        waitpid(s->pid, &ws, 0);
        s->pid = -1;
        return 128 + SIGKILL;
    }

    // `args` in `vm` via `vpipe-lab exec` (which execs in place: the pid is the server's).
    static Server start(const std::string& vm, const std::string& name, const std::vector<std::string>& args) {
        Server s;
        static int serial = 0;
        s.log = tmp_ + "/" + name + "-" + std::to_string(++serial) + ".log";  // a fresh log each time
        pid_t pid = fork();
        if (pid == 0) {
            int fd = open(s.log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
            dup2(fd, 1);
            dup2(fd, 2);
            int devnull = open("/dev/null", O_RDONLY);
            dup2(devnull, 0);
            std::vector<std::string> argv{kLab, "exec", vm, "--"};
            argv.insert(argv.end(), args.begin(), args.end());
            std::vector<char*> a;
            for (const auto& x : argv) a.push_back(const_cast<char*>(x.c_str()));
            a.push_back(nullptr);
            execv(a[0], a.data());
            _exit(127);
        }
        s.pid = pid;
        for (int i = 0; i < 100; ++i) {
            if (slurp(s.log).find("listening on") != std::string::npos) {
                servers_.push_back(s);
                return s;
            }
            int ws;
            if (waitpid(pid, &ws, WNOHANG) == pid) {
                s.pid = -1;
                ADD_FAILURE() << name << " exited at start: " << slurp(s.log);
                return s;
            }
            std::this_thread::sleep_for(100ms);
        }
        ADD_FAILURE() << name << " did not start listening within 10 s: " << slurp(s.log);
        servers_.push_back(s);
        return s;
    }

    // curl -w fields of every transfer (written to stderr): "W code size conn".
    struct Transfer {
        int code = 0, conn = -1;
        uint64_t size = 0;
        double secs = 0, speed = 0;
    };
    static std::vector<Transfer> transfers(const std::string& err) {
        std::vector<Transfer> v;
        std::istringstream in(err);
        std::string line;
        while (std::getline(in, line)) {
            Transfer t;
            if (std::sscanf(line.c_str(), "W code=%d size=%lu conn=%d time=%lf speed=%lf", &t.code, &t.size, &t.conn,
                            &t.secs, &t.speed) == 5)
                v.push_back(t);
        }
        return v;
    }
    static constexpr const char* kW =
        "%{stderr}W code=%{http_code} size=%{size_download} conn=%{num_connects} time=%{time_total} "
        "speed=%{speed_download}\\n";
};

// (A)
TEST_F(Acceptance, A_Get512MiB_NoGuestDataSyscalls_SecondRequestOnSameConnection) {
    const std::string big = root_[1] + "/acc-512m", second = root_[1] + "/acc-2m";
    random_file(big, 512 * kMiB);
    random_file(second, 2 * kMiB + 3);
    const std::string want_big = sha256_of(big), want_second = sha256_of(second);
    Server h = start("vm1", "httpd-vm1", {kHttpd, "--mode", "vpipe", "--no-fallback", "--port", "8083", "--root", root_[1]});
    ASSERT_GT(h.pid, 0);
    const pid_t agent = info_["vms"][0]["agent_pid"].get<pid_t>();
    ASSERT_GT(agent, 0);
    const int64_t h0 = io_bytes(h.pid), a0 = io_bytes(agent);
    const uint64_t r0 = disk_bytes_read("vm1");
    ASSERT_GE(h0, 0);
    ASSERT_GE(a0, 0);
    // both requests on one connection: the 512 MiB body hashed on the client, the second body to a file
    auto r = client("curl -sS --max-time 120 -w '" + std::string(kW) + "' -o - http://" + kVm1Ip + ":8083/acc-512m -o " +
                    tmp_ + "/second http://" + kVm1Ip + ":8083/acc-2m | sha256sum");
    const int64_t h1 = io_bytes(h.pid), a1 = io_bytes(agent);
    const uint64_t r1 = disk_bytes_read("vm1");
    EXPECT_EQ(r.status, 0) << r.err;
    auto t = transfers(r.err);
    ASSERT_EQ(t.size(), 2u) << r.err;
    EXPECT_EQ(t[0].code, 200);
    EXPECT_EQ(t[0].size, 512 * kMiB);
    EXPECT_EQ(r.out.substr(0, 64), want_big) << "SHA-256 of the 512 MiB download";
    EXPECT_EQ(t[1].code, 200);
    EXPECT_EQ(t[1].conn, 0) << "the second request needed a new connection";
    EXPECT_EQ(t[1].size, 2 * kMiB + 3);
    EXPECT_EQ(sha256_of(tmp_ + "/second"), want_second) << "the second request on the same connection";
    const int64_t dh = h1 - h0, da = a1 - a0;
    EXPECT_LT(dh + da, static_cast<int64_t>(kMiB)) << "httpd " << dh << " B, agent " << da << " B";
    EXPECT_GE(r1 - r0, 512 * kMiB) << "the engine did not read the file's blocks from the image: " << stats().dump();
    std::printf("[ A ] 512 MiB GET: %.2f s = %.1f MiB/s, SHA-256 %s; second request on the same connection: %s\n",
                t[0].secs, t[0].speed / kMiB, r.out.substr(0, 64) == want_big ? "match" : "MISMATCH",
                (t[1].conn == 0 && sha256_of(tmp_ + "/second") == want_second) ? "ok" : "FAILED");
    std::printf("[ A ] syscall bytes (rchar+wchar): httpd %lld, agent %lld, total %lld (< %llu); engine read %llu B "
                "of vm1's image\n",
                static_cast<long long>(dh), static_cast<long long>(da), static_cast<long long>(dh + da),
                static_cast<unsigned long long>(kMiB), static_cast<unsigned long long>(r1 - r0));
    std::printf("[ A ] httpd log:\n%s", slurp(h.log).c_str());
    stop(&servers_.back());
    std::error_code ec;
    fs::remove(big, ec);
    fs::remove(second, ec);
}

// (B) PUT of 256 MiB into vm1's disk.
TEST_F(Acceptance, B_Put256MiB) {
    const std::string src = tmp_ + "/put-src", dst = root_[1] + "/acc-put";
    random_file(src, 256 * kMiB);
    const std::string want = sha256_of(src);
    Server h = start("vm1", "httpd-vm1", {kHttpd, "--mode", "vpipe", "--no-fallback", "--port", "8083", "--root", root_[1]});
    ASSERT_GT(h.pid, 0);
    fs::remove(dst);
    auto r = client("curl -sS --max-time 120 -T " + src + " -w '" + std::string(kW) + "' -o /dev/null http://" + kVm1Ip +
                    ":8083/acc-put");
    EXPECT_EQ(r.status, 0) << r.err;
    auto t = transfers(r.err);
    ASSERT_EQ(t.size(), 1u) << r.err;
    EXPECT_EQ(t[0].code, 201) << slurp(h.log);
    ASSERT_TRUE(fs::exists(dst));
    EXPECT_EQ(fs::file_size(dst), 256 * kMiB);
    const std::string got = sha256_of(dst);
    EXPECT_EQ(got, want);
    std::printf("[ B ] PUT 256 MiB: %.2f s, SHA-256 %s\n[ B ] httpd log:\n%s", t[0].secs,
                got == want ? "match" : "MISMATCH", slurp(h.log).c_str());
    stop(&servers_.back());
    std::error_code ec;
    fs::remove(dst, ec);
}

// (B) client -> vpipe-proxy (vm1) -> vpipe-httpd (vm2), GET of 256 MiB.
TEST_F(Acceptance, B_ProxiedGet256MiB) {
    const std::string src = root_[2] + "/acc-256m";
    random_file(src, 256 * kMiB);
    const std::string want = sha256_of(src);
    Server h = start("vm2", "httpd-vm2", {kHttpd, "--mode", "vpipe", "--no-fallback", "--port", "8083", "--root", root_[2]});
    Server p = start("vm1", "proxy-vm1",
                     {kProxy, "--mode", "vpipe", "--no-fallback", "--listen", "9003", "--to", kVm2Ip + ":8083"});
    ASSERT_GT(h.pid, 0);
    ASSERT_GT(p.pid, 0);
    auto r = client("curl -sS --max-time 120 -w '" + std::string(kW) + "' http://" + kVm1Ip + ":9003/acc-256m | sha256sum");
    EXPECT_EQ(r.status, 0) << r.err;
    auto t = transfers(r.err);
    ASSERT_EQ(t.size(), 1u) << r.err;
    EXPECT_EQ(t[0].code, 200);
    EXPECT_EQ(t[0].size, 256 * kMiB);
    EXPECT_EQ(r.out.substr(0, 64), want);
    for (auto& sv : servers_)
        if (sv.pid == p.pid) stop(&sv);  // the proxy logs the connection when it closes
    std::printf("[ B ] proxied GET 256 MiB: %.2f s = %.1f MiB/s, SHA-256 %s\n[ B ] proxy log:\n%s", t[0].secs,
                t[0].speed / kMiB, r.out.substr(0, 64) == want ? "match" : "MISMATCH", slurp(p.log).c_str());
    for (auto& sv : servers_) stop(&sv);
    std::error_code ec;
    fs::remove(src, ec);
}

}  // namespace
