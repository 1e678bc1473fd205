// Fault matrix row "VM removed / destroyed" in the lab (docs/faults.md): one VM is torn down
// with `vpipe-lab remove-vm` (its processes SIGKILLed, its vif and namespace deleted, the engine
// told to release it, its disks detached) in the middle of an offload, one test per operation,
// while vm1 has an offload of its own held in dom0 across the removal.
//
// Each test removes its own VM (vm2: file -> file, vm3: file -> socket, vm4: socket -> file,
// vm5: socket -> socket) and asserts: the remote peer holds an exact prefix of the stream and
// is told the end (a reset: dom0 resets a connection whose VM is gone); a file on the removed
// VM's image, read offline afterwards (mounted read-only from the image), holds an exact prefix
// of its source followed by nothing but the zeros of prepared space; nothing of the removed VM
// stays in dom0 (shadow sockets, steered flows, nft per-flow elements, its vif, its namespace,
// its loop devices) and the engine no longer lists it; vm1's held offload finishes byte-exact
// and a new one works.
//
// Helper modes: argv[1] == "--helper", argv[2] = mode, then key=value arguments.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <vpipe/vpipe.h>

#include "support/lab_fixture.h"
#include "support/lab_sockets.h"

namespace {

using namespace vpipe::labtest;
using Clock = std::chrono::steady_clock;
std::string g_self;  // /proc/self/exe at start
constexpr uint64_t kSeed = 42;
constexpr uint64_t kLen = 64u << 20, kPauseAt = 8u << 20;

void await_file(const std::string& path) {
    struct stat st{};
    while (stat(path.c_str(), &st) != 0) usleep(10000);  // the test's event: a file
}

// Reads stream `seed` from `fd` until EOF or an error: `pause_at` bytes, PAUSED, nothing more
// until the file `resume` exists, then the rest; every byte checked.
void read_pausing(int fd, uint64_t seed, uint64_t pause_at, const std::string& resume, uint64_t* got,
                  long long* mismatch, int* end) {
    std::vector<uint8_t> buf(1 << 20);
    bool paused = false;
    for (;;) {
        if (!paused && *got >= pause_at) {
            paused = true;
            printf("PAUSED\n");
            fflush(stdout);
            await_file(resume);
        }
        uint64_t want = buf.size();
        if (!paused) want = std::min<uint64_t>(want, pause_at - *got);
        ssize_t r = recv(fd, buf.data(), want, 0);
        if (r == 0) return;
        if (r < 0) {
            if (errno == EINTR) continue;
            *end = errno;
            return;
        }
        long long bad = check_pattern(seed, *got, buf.data(), static_cast<size_t>(r));
        if (bad >= 0 && *mismatch < 0) *mismatch = static_cast<long long>(*got) + bad;
        *got += static_cast<uint64_t>(r);
    }
}

// vm (address ip): serves one "GET <off> <len>" of `file` with ONE vpipe_file_to_socket_fd
// call. Prints "RESULT ret=<n> err=<errno>".
int vm_serve_one_call(const std::map<std::string, std::string>& a) {
    int l = listen_on(a.at("ip"), static_cast<int>(num(a, "port")));
    printf("READY\n");
    fflush(stdout);
    int s = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    int f = open(a.at("file").c_str(), O_RDONLY | O_CLOEXEC);
    unsigned long long off = 0, len = 0;
    sscanf(read_line(s).c_str(), "GET %llu %llu", &off, &len);
    errno = 0;
    ssize_t n = vpipe_file_to_socket_fd(f, s, static_cast<off_t>(off), len);
    printf("RESULT ret=%zd err=%d\n", n, n < 0 ? errno : 0);
    fflush(stdout);
    close(s);
    close(l);
    return 0;
}

// client: asks the VM at ip for `len` bytes of stream `seed`, reads `pause_at`, PAUSED, waits
// for `resume`, reads until the end. Prints "RESULT got= mismatch= end=<0 EOF, else errno>".
int client_pause_get(const std::map<std::string, std::string>& a) {
    const uint64_t seed = num(a, "seed"), len = num(a, "len"), pause_at = num(a, "pause_at");
    int s = connect_to(a.at("ip"), static_cast<int>(num(a, "port")));
    const std::string req = "GET 0 " + std::to_string(len) + "\n";
    write_all(s, req.data(), req.size());
    uint64_t got = 0;
    long long mismatch = -1;
    int end = 0;
    read_pausing(s, seed, pause_at, a.at("resume"), &got, &mismatch, &end);
    printf("RESULT got=%llu mismatch=%lld end=%d\n", static_cast<unsigned long long>(got), mismatch, end);
    fflush(stdout);
    close(s);
    return 0;
}

// vm: receives up to `len` bytes into a new `file` with ONE vpipe_socket_to_file_fd call.
int vm_recv_one_call(const std::map<std::string, std::string>& a) {
    int l = listen_on(a.at("ip"), static_cast<int>(num(a, "port")));
    printf("READY\n");
    fflush(stdout);
    int s = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    int f = open(a.at("file").c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    errno = 0;
    ssize_t n = vpipe_socket_to_file_fd(s, f, 0, num(a, "len"));
    printf("RESULT ret=%zd err=%d\n", n, n < 0 ? errno : 0);
    fflush(stdout);
    return 0;
}

// client: sends `pause_at` bytes of stream `seed`, PAUSED, waits for `resume`, sends the rest
// of `len` until done or an error, then reads the connection until its end.
// Prints "RESULT sent= end=<errno of the failed send, 0> back=<bytes read> rend=<0 EOF, errno>".
int client_pause_send(const std::map<std::string, std::string>& a) {
    const uint64_t seed = num(a, "seed"), len = num(a, "len"), pause_at = num(a, "pause_at");
    int s = connect_to(a.at("ip"), static_cast<int>(num(a, "port")));
    std::vector<uint8_t> buf(1 << 20);
    uint64_t sent = 0;
    int end = 0;
    auto send_upto = [&](uint64_t upto) {
        while (sent < upto) {
            const size_t k = static_cast<size_t>(std::min<uint64_t>(buf.size(), upto - sent));
            fill_pattern(seed, sent, buf.data(), k);
            ssize_t r = send(s, buf.data(), k, MSG_NOSIGNAL);
            if (r < 0) {
                if (errno == EINTR) continue;
                end = errno;
                return;
            }
            sent += static_cast<uint64_t>(r);
        }
    };
    send_upto(pause_at);
    printf("PAUSED\n");
    fflush(stdout);
    await_file(a.at("resume"));
    if (end == 0) send_upto(len);
    uint64_t back = 0;
    int rend = 0;
    for (;;) {
        ssize_t r = recv(s, buf.data(), buf.size(), 0);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) rend = errno;
        if (r <= 0) break;
        back += static_cast<uint64_t>(r);
    }
    printf("RESULT sent=%llu end=%d back=%llu rend=%d\n", static_cast<unsigned long long>(sent), end,
           static_cast<unsigned long long>(back), rend);
    fflush(stdout);
    close(s);
    return 0;
}

// vm: relays up to `len` bytes from the client's connection to the client's listener (`to`)
// with ONE vpipe_socket_to_socket_fd call.
int vm_relay_one_call(const std::map<std::string, std::string>& a) {
    int l = listen_on(a.at("ip"), static_cast<int>(num(a, "port")));
    printf("READY\n");
    fflush(stdout);
    int in = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    int out = connect_to(kClientIp, static_cast<int>(num(a, "to")));
    errno = 0;
    ssize_t n = vpipe_socket_to_socket_fd(in, out, num(a, "len"));
    printf("RESULT ret=%zd err=%d\n", n, n < 0 ? errno : 0);
    fflush(stdout);
    return 0;
}

// client of vm-relay-one-call: sends stream `seed` to the VM (a thread, until `len` or an
// error) and reads what the VM relays to its listener: `pause_at` bytes, PAUSED, nothing until
// `resume`, then until the end, every byte checked.
// Prints "RESULT got= mismatch= end= sent= send_end=".
int client_relay_pause(const std::map<std::string, std::string>& a) {
    const uint64_t len = num(a, "len"), seed = num(a, "seed"), pause_at = num(a, "pause_at");
    int l = listen_on(kClientIp, static_cast<int>(num(a, "to")));
    int s = connect_to(a.at("ip"), static_cast<int>(num(a, "port")));
    int b = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    uint64_t sent = 0;
    int send_end = 0;
    std::thread tx([&] {
        std::vector<uint8_t> buf(1 << 20);
        while (sent < len) {
            const size_t k = static_cast<size_t>(std::min<uint64_t>(buf.size(), len - sent));
            fill_pattern(seed, sent, buf.data(), k);
            ssize_t r = send(s, buf.data(), k, MSG_NOSIGNAL);
            if (r < 0) {
                if (errno == EINTR) continue;
                send_end = errno;
                break;
            }
            sent += static_cast<uint64_t>(r);
        }
    });
    uint64_t got = 0;
    long long mismatch = -1;
    int end = 0;
    read_pausing(b, seed, pause_at, a.at("resume"), &got, &mismatch, &end);
    const auto t_read = std::chrono::steady_clock::now();
    tx.join();  // ends on its own once the VM's end of the connection is gone (RST)
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t_read);
    printf("RESULT got=%llu mismatch=%lld end=%d sent=%llu send_end=%d send_end_ms_after_read_end=%lld\n",
           static_cast<unsigned long long>(got), mismatch, end, static_cast<unsigned long long>(sent), send_end,
           static_cast<long long>(ms.count()));
    fflush(stdout);
    return 0;
}

int helper_main(int argc, char** argv) {
    signal(SIGPIPE, SIG_IGN);
    setenv("VPIPE_NO_FALLBACK", "1", 1);
    const std::string mode = argv[2];
    auto a = kv(argc, argv, 3);
    if (mode == "vm-serve-one-call") return vm_serve_one_call(a);
    if (mode == "client-pause-get") return client_pause_get(a);
    if (mode == "vm-recv-one-call") return vm_recv_one_call(a);
    if (mode == "client-pause-send") return client_pause_send(a);
    if (mode == "vm-relay-one-call") return vm_relay_one_call(a);
    if (mode == "client-relay-pause") return client_relay_pause(a);
    fprintf(stderr, "unknown helper mode %s\n", mode.c_str());
    return 2;
}

// ---- the test process -------------------------------------------------------------------------

struct Proc : LabProc {
    Proc(const std::string& where, const std::string& mode, const std::vector<std::string>& args)
        : LabProc(where, helper_argv(mode, args)) {}
    static std::vector<std::string> helper_argv(const std::string& mode, const std::vector<std::string>& args) {
        std::vector<std::string> av{g_self, "--helper", mode};
        av.insert(av.end(), args.begin(), args.end());
        return av;
    }
};

std::map<std::string, std::string> fields(const std::string& line) {
    std::map<std::string, std::string> m;
    std::stringstream ss(line);
    for (std::string w; ss >> w;) {
        auto eq = w.find('=');
        if (eq != std::string::npos) m[w.substr(0, eq)] = w.substr(eq + 1);
    }
    return m;
}

// The next line of `p` starting with `prefix`, or "" if none came within `secs` (p is killed
// then: a peer that is never told the end of its connection would wait for ever).
std::string line_within(LabProc& p, const std::string& prefix, int secs = 30) {
    std::atomic<bool> done{false};
    std::thread watchdog([&done, pid = p.pid, secs] {
        for (int i = 0; i < secs * 10 && !done; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
        if (!done) ::kill(pid, SIGKILL);
    });
    std::string l = p.line(prefix);
    done = true;
    watchdog.join();
    return l;
}

// How many leading bytes of `data` are stream `seed`'s (from position 0).
size_t stream_prefix(uint64_t seed, const std::vector<uint8_t>& data) {
    size_t k = 0;
    while (k < data.size()) {
        const size_t n = std::min<size_t>(1 << 20, data.size() - k);
        const long long bad = check_pattern(seed, k, data.data() + k, n);
        if (bad >= 0) return k + static_cast<size_t>(bad);
        k += n;
    }
    return k;
}

std::vector<uint8_t> file_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

class VmRemoved : public LabFixture {
protected:
    static void SetUpTestSuite() {
        if (!bring_up({.up = {"--vms", "5", "--disk-mib", "1024"},
                       .binaries = {"vpipectl", "cp-vpipe"},
                       .tools = {"curl", "losetup", "mount"},
                       .name = "vmremoved"}))
            return;
        error_ = write_pattern_file(mount(1) + "/f64m", kSeed, kLen);
    }
    void TearDown() override {
        if (ready()) expect_released();
    }

    static std::string ip(int vm) { return "10.199.0." + std::to_string(10 + vm); }
    static int port() { return next_port_++; }
    static bool removed(const std::string& name) { return removed_.count(name) != 0; }

    // Polling the engine (it has no event for these): up to 20 s.
    static bool dom0_holds(int n) {
        const auto until = Clock::now() + std::chrono::seconds(20);
        for (;;) {
            if (engine_stats()["sockets"].value("shadow_sockets", 0) >= n) return true;
            if (Clock::now() >= until) return false;
            std::this_thread::sleep_for(std::chrono::milliseconds(10));  // polling the engine
        }
    }
    static nlohmann::json engine_vm(const std::string& name) {
        const nlohmann::json s = engine_stats();
        for (const auto& v : s.value("vms", nlohmann::json::array()))
            if (v.value("name", "") == name) return v;
        return nlohmann::json();
    }

    // vpipe-lab remove-vm NAME, which must succeed.
    static void remove_vm(const std::string& name) {
        const auto t0 = Clock::now();
        auto r = lab({"-v", "remove-vm", name});
        const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
        ASSERT_EQ(r.status, 0) << r.all();
        removed_.insert(name);
        printf("[ info ] (%.2f s) %s%s", secs, r.out.c_str(), r.err.c_str());
        const std::string log = slurp(info_["engine"]["log"].get<std::string>());
        std::stringstream ss(log);
        for (std::string l; std::getline(ss, l);)
            if (l.find(name) != std::string::npos && l.find("request") == std::string::npos)
                printf("[ engine ] %s\n", l.c_str());
    }

    // Everything of a removed VM is gone: the engine does not list it (stats, and so the
    // metrics, which are formatted from them), dom0 has no vif for it, the host no namespace,
    // no loop device on its images; the lab state says removed.
    static void expect_vm_gone(int vm) {
        const std::string name = "vm" + std::to_string(vm);
        const nlohmann::json s = engine_stats();
        ASSERT_TRUE(s.contains("vms")) << s.dump();
        for (const auto& v : s["vms"]) EXPECT_NE(v.value("name", ""), name) << "the engine still lists it: " << s.dump();
        // the metrics (Prometheus text on the engine's default 127.0.0.1:9477, in dom0)
        auto m = lab({"dom0", "--", "curl", "-sf", "http://127.0.0.1:9477/metrics"});
        ASSERT_EQ(m.status, 0) << m.all();
        EXPECT_NE(m.out.find("vm=\"vm1\""), std::string::npos) << m.out;
        EXPECT_EQ(m.out.find("vm=\"" + name + "\""), std::string::npos) << "the metrics still list it: " << m.out;
        auto link = lab({"dom0", "--", "ip", "link", "show", "vif" + std::to_string(vm) + ".0"});
        EXPECT_NE(link.status, 0) << "its vif is still in dom0: " << link.all();
        auto br = lab({"dom0", "--", "bridge", "link", "show"});
        EXPECT_EQ(br.out.find("vif" + std::to_string(vm) + ".0"), std::string::npos) << br.out;
        const auto ns = lab_netns();
        EXPECT_EQ(std::find(ns.begin(), ns.end(), "vpl-" + name), ns.end()) << "its namespace is still there";
        auto info = nlohmann::json::parse(lab({"info", "--json"}).out, nullptr, false);
        ASSERT_FALSE(info.is_discarded());
        const auto& v = info["vms"][vm - 1];
        EXPECT_TRUE(v.value("removed", false)) << v.dump();
        EXPECT_FALSE(v.value("agent_running", true)) << v.dump();
        for (const auto& d : v["disks"]) {
            auto lj = run({"losetup", "-j", d["image"].get<std::string>()});
            EXPECT_EQ(lj.out, "") << "a loop device is still attached to " << d["image"];
            EXPECT_FALSE(d.value("mounted", true)) << d.dump();
        }
        auto ex = lab({"exec", name, "--", "true"});
        EXPECT_EQ(ex.status, 125) << ex.all();
    }

    // Nothing of any flow stays in dom0 (the fixture's check, for the VMs still there): no shadow
    // socket or steered flow, no per-flow element in dom0's nft table or a remaining VM's.
    static void expect_released() {
        const nlohmann::json s = engine_stats();
        EXPECT_EQ(s.value("shadow_sockets", -1), 0) << s.dump();
        EXPECT_EQ(s.value("steered_flows", -1), 0) << s.dump();
        std::set<std::string> listed, want;
        for (const auto& vm : s.value("vms", nlohmann::json::array())) {
            listed.insert(vm.value("name", "?"));
            EXPECT_EQ(vm.value("shadow_sockets", -1), 0) << vm.dump();
            EXPECT_EQ(vm.value("steered_flows", -1), 0) << vm.dump();
            EXPECT_EQ(vm.value("active", -1), 0) << vm.dump();
        }
        for (const auto& vm : info_["vms"])
            if (!removed(vm.value("name", ""))) want.insert(vm.value("name", ""));
        EXPECT_EQ(listed, want) << s.dump();
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
        EXPECT_GT(vpipe_sets, 0) << rs.out;
        EXPECT_EQ(elems, 0) << "per-flow elements left in dom0: " << rs.out;
        for (const auto& name : want) {
            auto g = lab({"exec", name, "--", "nft", "-j", "list", "table", "ip", "vpipe_guest"});
            EXPECT_EQ(g.out.find("\"elem\""), std::string::npos) << name << ": per-flow elements left: " << g.out;
        }
        printf("[ left behind ] dom0 nft: %d vpipe set(s), %d element(s); engine: %d shadow sockets, %d steered "
               "flows, VMs listed: %zu\n",
               vpipe_sets, elems, s.value("shadow_sockets", -1), s.value("steered_flows", -1), listed.size());
    }

    // The bytes of `rel` (a path inside disk 0) on the removed VM's image, read offline: the
    // image mounted read-only on a loop device of its own, then unmounted.
    static std::vector<uint8_t> offline_bytes(int vm, const std::string& rel, std::string* error) {
        const std::string image = info_["vms"][vm - 1]["disks"][0]["image"].get<std::string>();
        const std::string dir = tmp_ + "/offline-vm" + std::to_string(vm);
        std::filesystem::create_directories(dir);
        auto m = run({"mount", "-o", "ro,loop", image, dir});
        if (m.status != 0) {
            *error = "mount -o ro,loop " + image + ": " + m.all();
            return {};
        }
        std::vector<uint8_t> data = file_bytes(dir + "/" + rel);
        auto u = run({"umount", dir});
        if (u.status != 0) *error = "umount " + dir + ": " + u.all();
        return data;
    }

    // vm1's own file -> socket, held in dom0 across the removal: started (dom0 holds it, the
    // client paused after kPauseAt) by begin(), finished byte-exact by end().
    struct Survivor {
        std::string resume;
        std::unique_ptr<Proc> vm, cl;
        void begin(bool pause = true) {
            resume = tmp_ + "/resume-vm1-" + std::to_string(port());
            if (!pause) std::ofstream(resume).put('1');
            const int p = port();
            vm = std::make_unique<Proc>("vm1", "vm-serve-one-call",
                                        std::vector<std::string>{"ip=" + ip(1), "port=" + std::to_string(p),
                                                                 "file=" + mount(1) + "/f64m"});
            ASSERT_EQ(vm->line("READY"), "READY") << vm->all;
            cl = std::make_unique<Proc>("client", "client-pause-get",
                                        std::vector<std::string>{"ip=" + ip(1), "port=" + std::to_string(p),
                                                                 "seed=" + std::to_string(kSeed),
                                                                 "len=" + std::to_string(kLen),
                                                                 "pause_at=" + std::to_string(kPauseAt),
                                                                 "resume=" + resume});
            ASSERT_EQ(cl->line("PAUSED"), "PAUSED") << cl->all;
        }
        void end() {
            std::ofstream(resume).put('1');
            auto c = fields(line_within(*cl, "RESULT"));
            auto r = fields(line_within(*vm, "RESULT"));
            EXPECT_EQ(c["got"], std::to_string(kLen)) << cl->all;
            EXPECT_EQ(c["mismatch"], "-1") << cl->all;
            EXPECT_EQ(c["end"], "0") << cl->all;
            EXPECT_EQ(r["ret"], std::to_string(kLen)) << vm->all;
            cl->wait();
            vm->wait();
            unlink(resume.c_str());
        }
    };
    // vm1 after the removal: one whole file -> socket straight through.
    static void vm1_works_after() {
        Survivor s;
        ASSERT_NO_FATAL_FAILURE(s.begin(false));
        s.end();
    }

    // The removed VM's application was killed with its VM: it never returned from its call.
    static void expect_killed(Proc& vm) {
        EXPECT_EQ(vm.wait(), -1) << "the application in the removed VM exited by itself:\n" << vm.all;
        EXPECT_EQ(vm.all.find("RESULT"), std::string::npos) << vm.all;
    }

    static inline int next_port_ = 21000;
    static inline std::set<std::string> removed_;
};

}  // namespace

// file -> file: cp-vpipe in vm2 copies 512 MiB; vm2 is removed once dom0 answered 32 MiB of it.
// dom0 stops the stages in flight at their next window once the channel is closed. Offline, the
// destination on vm2's image holds at every offset the source's byte or a zero (prepared space),
// the source is intact; vm2's copy is no longer in the engine.
TEST_F(VmRemoved, MidFileToFile) {
    const uint64_t len = 512u << 20;
    const std::string src = mount(2) + "/f2f.src", dst = mount(2) + "/f2f.dst";
    ASSERT_EQ(write_pattern_file(src, 61, len, true), "");
    Survivor s;
    ASSERT_NO_FATAL_FAILURE(s.begin());
    LabProc cp("vm2", {kBin + "/cp-vpipe", "--no-fallback", src, dst});
    // mid-copy: dom0 answered 32 MiB of it and still works on the rest
    bool mid = false;
    for (const auto until = Clock::now() + std::chrono::seconds(60); !mid && Clock::now() < until;) {
        const nlohmann::json v = engine_vm("vm2");
        mid = v.value("active", 0) > 0 && v["bytes"].value("file_to_file", uint64_t{0}) >= (32u << 20);
        if (!mid) std::this_thread::sleep_for(std::chrono::milliseconds(5));  // polling the engine
    }
    ASSERT_TRUE(mid) << "the copy was never seen in progress: " << engine_vm("vm2").dump();
    ASSERT_NO_FATAL_FAILURE(remove_vm("vm2"));
    EXPECT_EQ(cp.wait(), -1) << "cp-vpipe exited by itself: " << cp.all;
    ASSERT_NO_FATAL_FAILURE(expect_vm_gone(2));
    s.end();
    std::string err;
    const std::vector<uint8_t> got = offline_bytes(2, "f2f.dst", &err);
    ASSERT_EQ(err, "");
    const size_t k = stream_prefix(61, got);
    size_t in_place = 0, neither = 0, first_neither = got.size();
    std::vector<uint8_t> want(1 << 20);
    for (size_t at = 0; at < got.size(); at += want.size()) {
        const size_t n = std::min(want.size(), got.size() - at);
        fill_pattern(61, at, want.data(), n);
        for (size_t i = 0; i < n; ++i) {
            if (got[at + i] == want[i])
                ++in_place;
            else if (got[at + i] != 0 && neither++ == 0)
                first_neither = at + i;
        }
    }
    printf("[ info ] vm2 removed mid file->file: the destination holds %zu bytes on the image, the source's first "
           "%zu, %zu of the source's bytes in all\n",
           got.size(), k, in_place);
    EXPECT_LE(got.size(), len);
    EXPECT_EQ(neither, 0u) << "a byte that is neither the source's nor a zero at " << first_neither;
    const std::vector<uint8_t> source = offline_bytes(2, "f2f.src", &err);
    ASSERT_EQ(err, "");
    EXPECT_EQ(source.size(), len);
    EXPECT_EQ(stream_prefix(61, source), len) << "the source changed";
    vm1_works_after();
}

// file -> socket: vm3 serves 64 MiB with one call, the client read 8 MiB and pauses (dom0 holds
// the connection); vm3 is removed. The client holds an exact prefix and then reads a reset.
TEST_F(VmRemoved, MidFileToSocket) {
    ASSERT_EQ(write_pattern_file(mount(3) + "/f64m", kSeed, kLen), "");
    Survivor s;
    ASSERT_NO_FATAL_FAILURE(s.begin());
    const std::string resume = tmp_ + "/resume-vm3";
    const int p = port();
    Proc vm("vm3", "vm-serve-one-call", {"ip=" + ip(3), "port=" + std::to_string(p), "file=" + mount(3) + "/f64m"});
    ASSERT_EQ(vm.line("READY"), "READY") << vm.all;
    Proc cl("client", "client-pause-get",
            {"ip=" + ip(3), "port=" + std::to_string(p), "seed=" + std::to_string(kSeed), "len=" + std::to_string(kLen),
             "pause_at=" + std::to_string(kPauseAt), "resume=" + resume});
    ASSERT_EQ(cl.line("PAUSED"), "PAUSED") << cl.all;
    ASSERT_TRUE(dom0_holds(2)) << engine_stats().dump();
    ASSERT_NO_FATAL_FAILURE(remove_vm("vm3"));
    expect_killed(vm);
    std::ofstream(resume).put('1');
    auto c = fields(line_within(cl, "RESULT"));
    ASSERT_FALSE(c.empty()) << "the client was not told the end within 30 s\n" << cl.all;
    cl.wait();
    printf("[ info ] vm3 removed mid file->socket: the client got %s of %llu bytes, then end %s\n", c["got"].c_str(),
           static_cast<unsigned long long>(kLen), c["end"].c_str());
    EXPECT_EQ(c["mismatch"], "-1") << cl.all;
    EXPECT_GE(std::stoull(c["got"]), kPauseAt) << cl.all;
    EXPECT_LT(std::stoull(c["got"]), kLen) << cl.all;
    EXPECT_EQ(c["end"], std::to_string(ECONNRESET)) << "the end the client read: " << cl.all;
    ASSERT_NO_FATAL_FAILURE(expect_vm_gone(3));
    s.end();
    vm1_works_after();
}

// socket -> file: the client sent 8 MiB that vm4 receives into a file with one call (dom0
// holds the connection); vm4 is removed. The client's further sends fail and it reads a reset;
// offline, the file on vm4's image holds an exact prefix of the stream, then zeros only.
TEST_F(VmRemoved, MidSocketToFile) {
    const std::string resume = tmp_ + "/resume-vm4";
    Survivor s;
    ASSERT_NO_FATAL_FAILURE(s.begin());
    const int p = port();
    Proc vm("vm4", "vm-recv-one-call",
            {"ip=" + ip(4), "port=" + std::to_string(p), "file=" + mount(4) + "/s2f", "len=" + std::to_string(kLen)});
    ASSERT_EQ(vm.line("READY"), "READY") << vm.all;
    Proc cl("client", "client-pause-send",
            {"ip=" + ip(4), "port=" + std::to_string(p), "seed=" + std::to_string(kSeed), "len=" + std::to_string(kLen),
             "pause_at=" + std::to_string(kPauseAt), "resume=" + resume});
    ASSERT_EQ(cl.line("PAUSED"), "PAUSED") << cl.all;
    ASSERT_TRUE(dom0_holds(2)) << engine_stats().dump();
    ASSERT_NO_FATAL_FAILURE(remove_vm("vm4"));
    expect_killed(vm);
    std::ofstream(resume).put('1');
    auto c = fields(line_within(cl, "RESULT"));
    ASSERT_FALSE(c.empty()) << "the client was not told the end within 30 s\n" << cl.all;
    cl.wait();
    printf("[ info ] vm4 removed mid socket->file: the client sent %s (send error %s), read %s back, end %s\n",
           c["sent"].c_str(), c["end"].c_str(), c["back"].c_str(), c["rend"].c_str());
    // dom0 reset the connection while the client paused: its next send reports the reset,
    // nothing ever comes back
    EXPECT_LT(std::stoull(c["sent"]), kLen) << cl.all;
    EXPECT_EQ(c["end"], std::to_string(ECONNRESET)) << "the end the client's send saw: " << cl.all;
    EXPECT_EQ(c["back"], "0") << cl.all;
    ASSERT_NO_FATAL_FAILURE(expect_vm_gone(4));
    s.end();
    std::string err;
    const std::vector<uint8_t> data = offline_bytes(4, "s2f", &err);
    ASSERT_EQ(err, "");
    const size_t k = stream_prefix(kSeed, data);
    printf("[ info ] vm4 removed mid socket->file: the file holds %zu bytes on the image, the stream's first %zu\n",
           data.size(), k);
    EXPECT_LE(data.size(), kLen);
    EXPECT_LE(k, std::stoull(c["sent"]));
    EXPECT_TRUE(std::all_of(data.begin() + static_cast<long>(k), data.end(), [](uint8_t b) { return b == 0; }))
        << "a byte past the stream's prefix (" << k << ") that is neither the stream's nor a zero";
    vm1_works_after();
}

// socket -> socket: vm5 relays the client's stream back to the client's listener with one call;
// the far end read 8 MiB and pauses (dom0 holds both connections); vm5 is removed. The far end
// holds an exact prefix and reads a reset; the sender's connection is reset too.
TEST_F(VmRemoved, MidSocketToSocket) {
    const std::string resume = tmp_ + "/resume-vm5";
    Survivor s;
    ASSERT_NO_FATAL_FAILURE(s.begin());
    const int p = port(), to = port();
    Proc vm("vm5", "vm-relay-one-call",
            {"ip=" + ip(5), "port=" + std::to_string(p), "to=" + std::to_string(to), "len=" + std::to_string(kLen)});
    ASSERT_EQ(vm.line("READY"), "READY") << vm.all;
    Proc cl("client", "client-relay-pause",
            {"ip=" + ip(5), "port=" + std::to_string(p), "to=" + std::to_string(to), "seed=" + std::to_string(kSeed),
             "len=" + std::to_string(kLen), "pause_at=" + std::to_string(kPauseAt), "resume=" + resume});
    ASSERT_EQ(cl.line("PAUSED"), "PAUSED") << cl.all;
    ASSERT_TRUE(dom0_holds(3)) << engine_stats().dump();
    ASSERT_NO_FATAL_FAILURE(remove_vm("vm5"));
    expect_killed(vm);
    s.end();  // vm1's offload, held across the removal
    std::ofstream(resume).put('1');
    const auto t0 = Clock::now();
    auto c = fields(line_within(cl, "RESULT"));
    printf("[ info ] vm5 removed mid socket->socket: the client's RESULT came %.2f s after it resumed\n",
           std::chrono::duration<double>(Clock::now() - t0).count());
    ASSERT_FALSE(c.empty()) << "the client was not told the end of its connections within 30 s\n" << cl.all;
    cl.wait();
    printf("[ info ] vm5 removed mid socket->socket: the far end got %s bytes (end %s), the sender sent %s (%s)\n",
           c["got"].c_str(), c["end"].c_str(), c["sent"].c_str(), c["send_end"].c_str());
    EXPECT_EQ(c["mismatch"], "-1") << cl.all;
    EXPECT_GE(std::stoull(c["got"]), kPauseAt) << cl.all;
    EXPECT_LT(std::stoull(c["got"]), kLen) << cl.all;
    EXPECT_EQ(c["end"], std::to_string(ECONNRESET)) << "the end the far end read: " << cl.all;
    EXPECT_TRUE(c["send_end"] == std::to_string(ECONNRESET) || c["send_end"] == std::to_string(EPIPE)) << cl.all;
    ASSERT_NO_FATAL_FAILURE(expect_vm_gone(5));
    vm1_works_after();
}

int main(int argc, char** argv) {
    char buf[4096];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
    g_self = n > 0 ? std::string(buf, static_cast<size_t>(n)) : argv[0];
    if (argc >= 3 && std::string(argv[1]) == "--helper") return helper_main(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
