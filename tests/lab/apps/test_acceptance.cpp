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

#include "support/lab_fixture.h"

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

// n bytes of stream `seed` into path (on the host; the VMs' disks are mounted here).
void pattern_file(const std::string& path, uint64_t seed, uint64_t n) {
    ASSERT_EQ(write_pattern_file(path, seed, n), "");
    ASSERT_EQ(fs::file_size(path), n);
}

class Acceptance : public LabFixture {
protected:
    static void SetUpTestSuite() {
        bring_up({.up = {"--vms", "2", "--disk-mib", "2048"},
                  .binaries = {"vpipe-httpd", "vpipe-proxy", "vpipectl"},
                  .tools = {"curl"},
                  .name = "acceptance"});
    }

    // (C): nothing of any flow stays behind.
    void TearDown() override {
        if (!ready()) return;
        stop_servers();  // idle keep-alive connections closed too
        expect_nothing_left_behind();
    }

    static uint64_t disk_bytes_read(const std::string& vm) {
        uint64_t n = 0;
        const json st = engine_stats();  // (not a temporary: the loop below refers into it)
        for (const auto& v : st["vms"])
            if (v.value("name", "") == vm)
                for (const auto& d : v["disks"]) n += d.value("bytes_read", uint64_t{0});
        return n;
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
    const std::string big = mount(1) + "/acc-512m", second = mount(1) + "/acc-2m";
    pattern_file(big, 1, 512 * kMiB);
    pattern_file(second, 2, 2 * kMiB + 3);
    const std::string want_big = sha256_of(big), want_second = sha256_of(second);
    LabServer& h =
        start_server("httpd-vm1", "vm1", {kHttpd, "--mode", "vpipe", "--no-fallback", "--port", "8083", "--root", mount(1)});
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
    EXPECT_GE(r1 - r0, 512 * kMiB) << "the engine did not read the file's blocks from the image: "
                                   << engine_stats().dump();
    std::printf("[ A ] 512 MiB GET: %.2f s = %.1f MiB/s, SHA-256 %s; second request on the same connection: %s\n",
                t[0].secs, t[0].speed / kMiB, r.out.substr(0, 64) == want_big ? "match" : "MISMATCH",
                (t[1].conn == 0 && sha256_of(tmp_ + "/second") == want_second) ? "ok" : "FAILED");
    std::printf("[ A ] syscall bytes (rchar+wchar): httpd %lld, agent %lld, total %lld (< %llu); engine read %llu B "
                "of vm1's image\n",
                static_cast<long long>(dh), static_cast<long long>(da), static_cast<long long>(dh + da),
                static_cast<unsigned long long>(kMiB), static_cast<unsigned long long>(r1 - r0));
    std::printf("[ A ] httpd log:\n%s", slurp(h.log).c_str());
    stop_server(&h);
    std::error_code ec;
    fs::remove(big, ec);
    fs::remove(second, ec);
}

// (B) PUT of 256 MiB into vm1's disk.
TEST_F(Acceptance, B_Put256MiB) {
    const std::string src = tmp_ + "/put-src", dst = mount(1) + "/acc-put";
    pattern_file(src, 3, 256 * kMiB);
    const std::string want = sha256_of(src);
    LabServer& h =
        start_server("httpd-vm1", "vm1", {kHttpd, "--mode", "vpipe", "--no-fallback", "--port", "8083", "--root", mount(1)});
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
    stop_server(&h);
    std::error_code ec;
    fs::remove(dst, ec);
}

// (B) client -> vpipe-proxy (vm1) -> vpipe-httpd (vm2), GET of 256 MiB.
TEST_F(Acceptance, B_ProxiedGet256MiB) {
    const std::string src = mount(2) + "/acc-256m";
    pattern_file(src, 4, 256 * kMiB);
    const std::string want = sha256_of(src);
    LabServer& h =
        start_server("httpd-vm2", "vm2", {kHttpd, "--mode", "vpipe", "--no-fallback", "--port", "8083", "--root", mount(2)});
    LabServer& p = start_server("proxy-vm1", "vm1",
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
    stop_server(&p);  // the proxy logs the connection when it closes
    std::printf("[ B ] proxied GET 256 MiB: %.2f s = %.1f MiB/s, SHA-256 %s\n[ B ] proxy log:\n%s", t[0].secs,
                t[0].speed / kMiB, r.out.substr(0, 64) == want ? "match" : "MISMATCH", slurp(p.log).c_str());
    stop_server(&h);
    std::error_code ec;
    fs::remove(src, ec);
}

}  // namespace
