// patches/pound: Pound 4.16 with pound-4.16-vpipe.patch (built by patches/pound/build.sh) in vm1,
// in front of vpipe-httpd in vm2 (classic sendfile mode, port 8080), curl on the client host:
//  - one connection: GET 64 MiB (hashed on the way), GET 64 MiB again and GET 200 KiB, all on the
//    same connection (curl reports no new connect and the same local port): keep-alive after a
//    hand-over, and a short body by Pound's own relay on the restored connection;
//  - one connection: PUT 64 MiB (an upload: vpipe-httpd writes it to vm2's disk, SHA-256
//    checked there), then GET 64 MiB on the same connection.
// POUND_VPIPE=1: the engine's socket -> socket counters of vm1 (where Pound runs) grow by one
// ring request per body of 64 MiB (4) and by their bytes, less what Pound's buffer BIO had read
// with the head (at most one MAXBUF = 4096 bytes a body, relayed by Pound first): dom0 moved the
// bodies, not a fallback. Pound's log says vPipe is on and has no fallback or failure line.
// POUND_VPIPE unset: the same requests and checks, and the counters do not move.
// Per listener (`VPipe on|off` in ListenHTTP, which wins over the environment): one Pound with
// two listeners, one with the directive and one without, GET 64 MiB through each; with
// POUND_VPIPE unset `VPipe on` alone moves a body through the engine, with POUND_VPIPE=1
// `VPipe off` alone keeps Pound's relay (and the listener without the directive follows the
// environment). A config with `VPipe maybe` is refused by `pound -c`.
// After each test no shadow socket, steered flow or nft element is left, no Pound runs.
// Pound runs with VPIPE_MIN_OFFLOAD set to libvpipe's default threshold, so that neither the
// host's /etc/vpipe/vpipe.conf nor the environment changes what is offloaded.
// Skips with the reason when the patched binary is not built or curl is missing.
#include <fcntl.h>
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
#include <vpipe/vpipe.h>  // VPIPE_MIN_OFFLOAD_DEFAULT only: the test does not link libvpipe

#include "support/lab_fixture.h"

#ifndef VPIPE_POUND_BIN
#error "needs VPIPE_POUND_BIN"
#endif

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace vpipe::labtest;

constexpr uint64_t kThreshold = VPIPE_MIN_OFFLOAD_DEFAULT;  // what Pound's libvpipe is told
constexpr uint64_t kSeed = 31, kSmallSeed = 32, kUpSeed = 33;
constexpr uint64_t kSize = 64 * kMiB;
constexpr uint64_t kSmall = 200 * 1024;  // below the threshold: Pound's own relay
constexpr uint64_t kMaxBuf = 4096;       // Pound's MAXBUF: its buffer BIO reads at most this much ahead
static_assert(kSmall < kThreshold && kSize >= kThreshold);
const std::string kPound = VPIPE_POUND_BIN;
constexpr int kBackendPort = 8080;
constexpr int kPortVPipe = 8095, kPortClassic = 8096;
constexpr int kPortDirective = 8097, kPortDefault = 8098;  // the per-listener test

void drop_cache(const std::string& path) {
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        close(fd);
    }
}

class PoundLab : public LabFixture {
protected:
    static void SetUpTestSuite() {
        bring_up({.up = {"--vms", "2", "--disks", "1", "--disk-mib", "512"},
                  .binaries = {"vpipectl", "vpipe-httpd"},
                  .tools = {"curl", "sha256sum"},
                  .name = "pound"});
    }
    void SetUp() override {
        LabFixture::SetUp();
        if (IsSkipped() || HasFatalFailure()) return;
        if (access(kPound.c_str(), X_OK) != 0)
            GTEST_SKIP() << "the patched Pound is not built (" << kPound
                         << "): run patches/pound/build.sh (scripts/test.sh does)";
    }
    void TearDown() override {
        if (!ready()) return;
        stop_servers();
        expect_nothing_left_behind();
        auto ps = sh("pgrep -f '^" + kPound + " ' || true");
        EXPECT_EQ(ps.out, "") << "a patched Pound is still running";
    }

    // vm1's engine counters: socket -> socket bytes and operations (ring requests), once vm1 has
    // no operation running: the client has every byte before dom0 has handed the connections
    // back and counted the operation, so a read right after curl could miss it (up to 30 s).
    static std::pair<uint64_t, uint64_t> engine_s2s() {
        json st = engine_stats();
        const auto vm1_active = [](const json& j) {
            for (const auto& v : j.value("vms", json::array()))
                if (v.value("name", "") == "vm1") return v.value("active", uint64_t{0});
            return uint64_t{0};
        };
        for (int i = 0; i < 1500 && vm1_active(st) > 0; ++i) {
            std::this_thread::sleep_for(std::chrono::milliseconds(20));  // (no event for "idle")
            st = engine_stats();
        }
        EXPECT_EQ(vm1_active(st), 0u) << "vm1 still has an operation in dom0 after 30 s: " << st.dump();
        EXPECT_TRUE(st.contains("vms")) << "engine stats: " << st.dump();
        for (const auto& v : st.value("vms", json::array()))
            if (v.value("name", "") == "vm1") {
                uint64_t b = v.contains("bytes") ? v["bytes"].value("socket_to_socket", uint64_t{0}) : 0;
                uint64_t o = v.contains("ops") ? v["ops"].value("socket_to_socket", uint64_t{0}) : 0;
                return {b, o};
            }
        ADD_FAILURE() << "no vm1 in the engine's stats: " << st.dump();
        return {0, 0};
    }

    static int port(bool vpipe) { return vpipe ? kPortVPipe : kPortClassic; }

    // The patched Pound in vm1 (foreground, log on stderr), POUND_VPIPE=1 or unset; reported
    // started once its port accepts connections.
    static void start_pound(const std::string& key, bool vpipe) {
        start_pound(key, vpipe, {{port(vpipe), ""}});
    }
    static std::string pound_config(const std::string& key, const std::vector<std::pair<int, std::string>>& listeners) {
        std::ostringstream c;
        c << "Daemon 0\nLogFacility -\nLogLevel 1\nPIDFile \"" << tmp_ << "/" << key << ".pid\"\n";
        for (const auto& [p, extra] : listeners)
            c << "ListenHTTP\n  xHTTP 1\n  Address " << kVm1Ip << "\n  Port " << p << "\n" << extra
              << "  Service\n    Backend\n      Address " << kVm2Ip << "\n      Port " << kBackendPort
              << "\n    End\n  End\nEnd\n";
        return c.str();
    }
    // The same with several listeners: (port, extra lines in its ListenHTTP); started once every
    // port accepts connections.
    static void start_pound(const std::string& key, bool vpipe, const std::vector<std::pair<int, std::string>>& listeners) {
        const std::string conf = tmp_ + "/" + key + ".cfg";
        std::ofstream(conf) << pound_config(key, listeners);
        // POUND_VPIPE_VERBOSE=1: the patch logs its switch-on and each body's path (quiet by
        // default, because Pound's own suite compares its log line by line).
        const std::string env = std::string(vpipe ? "POUND_VPIPE=1 " : "") + "POUND_VPIPE_VERBOSE=1 " +
                                 "VPIPE_MIN_OFFLOAD=" + std::to_string(kThreshold) + " ";
        std::string wait;
        for (const auto& l : listeners)
            wait += "for i in $(seq 100); do (exec 3<>/dev/tcp/" + kVm1Ip + "/" + std::to_string(l.first) +
                    ") 2>/dev/null && break; sleep 0.1; done; ";
        const std::string script = env + kPound + " -F -f " + conf +
                                   " & p=$!; trap 'kill -TERM $p; wait $p; exit $?' TERM; " + wait +
                                   "echo listening on; wait $p";
        start_server(key, "vm1", {"bash", "-c", script});
    }

    struct Req {
        int code = 0, conn = -1, port = -1;
        uint64_t down = 0, up = 0;
        double secs = 0;
    };
    static std::vector<Req> reqs(const std::string& err) {
        std::vector<Req> v;
        std::istringstream in(err);
        for (std::string line; std::getline(in, line);) {
            Req g;
            if (std::sscanf(line.c_str(), "W code=%d down=%lu up=%lu conn=%d port=%d time=%lf", &g.code, &g.down, &g.up,
                            &g.conn, &g.port, &g.secs) == 6)
                v.push_back(g);
        }
        return v;
    }
    static constexpr const char* kW =
        "%{stderr}W code=%{http_code} down=%{size_download} up=%{size_upload} conn=%{num_connects} "
        "port=%{local_port} time=%{time_total}\\n";

    struct Moved {
        uint64_t bytes = 0, ops = 0;
        double get_secs = 0, put_secs = 0;
    };

    Moved relay_and_check(bool vpipe) {
        const std::string key = vpipe ? "pound-vpipe" : "pound-classic";
        const std::string name = key + "-64m", small = key + "-200k", up = key + "-up";
        const std::string file = mount(2) + "/" + name, small_file = mount(2) + "/" + small;
        const std::string up_src = tmp_ + "/" + up + ".src", up_dst = mount(2) + "/" + up;
        EXPECT_EQ(write_pattern_file(file, kSeed, kSize, true), "");
        EXPECT_EQ(write_pattern_file(small_file, kSmallSeed, kSmall, true), "");
        EXPECT_EQ(write_pattern_file(up_src, kUpSeed, kSize), "");
        std::error_code ec;
        fs::remove(up_dst, ec);
        const std::string want = sha256_of(file), want_small = sha256_of(small_file), want_up = sha256_of(up_src);
        const std::string base = "http://" + kVm1Ip + ":" + std::to_string(port(vpipe)) + "/";
        const std::string url = base + name;
        const std::string out = tmp_ + "/" + key;
        Moved m;

        start_server("backend", "vm2",
                     {kHttpd, "--mode", "sendfile", "--port", std::to_string(kBackendPort), "--root", mount(2)});
        start_pound(key, vpipe);
        const auto [b0, o0] = engine_s2s();
        // 1. three GETs on one connection: 64 MiB hashed on the way, 64 MiB again, 200 KiB
        auto r = client("curl -sS --max-time 120 -w '" + std::string(kW) + "' -o - " + url + " -o " + out +
                        "-second " + url + " -o " + out + "-small " + base + small + " | sha256sum");
        EXPECT_EQ(r.status, 0) << r.err << server_log(key);
        auto g = reqs(r.err);
        EXPECT_EQ(g.size(), 3u) << r.err << server_log(key);
        if (g.size() == 3) {
            EXPECT_EQ(g[0].code, 200);
            EXPECT_EQ(g[0].down, kSize);
            EXPECT_EQ(g[0].conn, 1);
            for (int i : {1, 2}) {
                EXPECT_EQ(g[i].code, 200) << "request " << i + 1;
                EXPECT_EQ(g[i].conn, 0) << "request " << i + 1 << " needed a new connection (keep-alive)";
                EXPECT_EQ(g[i].port, g[0].port) << "request " << i + 1 << " went on another connection";
            }
            EXPECT_EQ(g[1].down, kSize);
            EXPECT_EQ(g[2].down, kSmall);
            m.get_secs = g[0].secs;
        }
        EXPECT_EQ(r.out.substr(0, 64), want) << "SHA-256 of the first body";
        EXPECT_EQ(sha256_of(out + "-second"), want) << "the second request on the same connection";
        EXPECT_EQ(sha256_of(out + "-small"), want_small) << "the third (short) request on the same connection";
        // 2. an upload, then a GET on the same connection (no Expect: 100-continue round)
        drop_cache(file);
        auto u = client("curl -sS --max-time 120 -H 'Expect:' -T " + up_src + " -w '" + std::string(kW) + "' -o " +
                        out + "-put.resp " + base + up + " --next -w '" + std::string(kW) + "' -o - " + url +
                        " | sha256sum");
        EXPECT_EQ(u.status, 0) << u.err << server_log(key);
        auto gu = reqs(u.err);
        EXPECT_EQ(gu.size(), 2u) << u.err << server_log(key);
        if (gu.size() == 2) {
            EXPECT_EQ(gu[0].code, 201) << slurp(out + "-put.resp");
            EXPECT_EQ(gu[0].up, kSize);
            EXPECT_EQ(gu[0].conn, 1);
            EXPECT_EQ(gu[1].code, 200);
            EXPECT_EQ(gu[1].down, kSize);
            EXPECT_EQ(gu[1].conn, 0) << "the GET after the upload needed a new connection (keep-alive)";
            EXPECT_EQ(gu[1].port, gu[0].port) << "the GET after the upload went on another connection";
            m.put_secs = gu[0].secs;
        }
        EXPECT_EQ(u.out.substr(0, 64), want) << "SHA-256 of the GET after the upload";
        EXPECT_EQ(sha256_of(up_dst), want_up) << "SHA-256 of the uploaded file on vm2's disk";
        const auto [b1, o1] = engine_s2s();
        m.bytes = b1 - b0;
        m.ops = o1 - o0;
        const std::string log = server_log(key);
        EXPECT_EQ(stop_server(key), 0) << "Pound's exit status on SIGTERM; its output: " << log;
        std::printf("[ %s ] Pound's log:\n%s", key.c_str(), server_log(key).c_str());
        const std::string full = server_log(key);
        if (vpipe) {
            EXPECT_NE(full.find("vpipe: enabled (POUND_VPIPE=1)"), std::string::npos) << full;
            EXPECT_EQ(full.find("vpipe: fallback"), std::string::npos) << full;
            EXPECT_EQ(full.find("failed"), std::string::npos) << full;
        } else {
            // the one vPipe line is the verbose switch-on notice saying it is off
            const auto at = full.find("vpipe: off unless a listener says VPipe on (POUND_VPIPE=unset)");
            EXPECT_NE(at, std::string::npos) << full;
            EXPECT_EQ(full.find("vpipe:", at + 1), std::string::npos) << full;
            EXPECT_EQ(full.find("vpipe:"), at) << full;
        }
        stop_server("backend");
        fs::remove(file, ec);
        fs::remove(small_file, ec);
        fs::remove(up_dst, ec);
        fs::remove(up_src, ec);
        return m;
    }
};

TEST_F(PoundLab, VPipeEnabled_GetsAndUpload_KeepAlive_MovedByDom0) {
    const Moved m = relay_and_check(true);
    // 64 MiB bodies: three GETs and one PUT, each one hand-over; at most MAXBUF of each was
    // already in Pound's buffer BIO and relayed by Pound first. The 200 KiB body: Pound's relay.
    EXPECT_EQ(m.ops, 4u) << "engine socket_to_socket ops: one per 64 MiB body";
    EXPECT_LE(m.bytes, 4 * kSize);
    EXPECT_GE(m.bytes, 4 * (kSize - kMaxBuf));
    std::printf("[ Pound POUND_VPIPE=1 ] engine socket_to_socket of vm1 +%llu B in %llu ops (4 bodies of %llu B); "
                "64 MiB GET %.3f s, 64 MiB PUT %.3f s (one measurement each, not a benchmark)\n",
                static_cast<unsigned long long>(m.bytes), static_cast<unsigned long long>(m.ops),
                static_cast<unsigned long long>(kSize), m.get_secs, m.put_secs);
}

// One GET of 64 MiB through each of two listeners of one Pound: the one with `directive` in
// its ListenHTTP first, then the one without; the engine's socket -> socket counters of vm1
// after each (bytes, ops), the body checked by SHA-256 each time.
struct PerListener {
    uint64_t directive_bytes = 0, directive_ops = 0, default_bytes = 0, default_ops = 0;
};

TEST_F(PoundLab, VPipeDirective_WrongValue_ConfigRefused) {
    const std::string conf = tmp_ + "/bad.cfg";
    std::ofstream(conf) << pound_config("bad", {{kPortDirective, "  VPipe maybe\n"}});
    auto r = lab({"exec", "vm1", "--", kPound, "-c", "-f", conf});
    EXPECT_NE(r.status, 0) << r.all();
    EXPECT_NE(r.all().find("not a boolean value"), std::string::npos) << r.all();
    std::ofstream(conf) << pound_config("good", {{kPortDirective, "  VPipe off\n"}});
    r = lab({"exec", "vm1", "--", kPound, "-c", "-f", conf});
    EXPECT_EQ(r.status, 0) << r.all();
}

TEST_F(PoundLab, VPipeDirective_PerListener_WinsOverEnvironment) {
    const std::string name = "pound-listener-64m", file = mount(2) + "/" + name;
    EXPECT_EQ(write_pattern_file(file, kSeed, kSize, true), "");
    const std::string want = sha256_of(file);
    start_server("backend", "vm2",
                 {kHttpd, "--mode", "sendfile", "--port", std::to_string(kBackendPort), "--root", mount(2)});
    auto through = [&](const std::string& key, bool env, const char* directive) {
        start_pound(key, env, {{kPortDirective, std::string("  VPipe ") + directive + "\n"}, {kPortDefault, ""}});
        PerListener m;
        for (int p : {kPortDirective, kPortDefault}) {
            const auto [b0, o0] = engine_s2s();
            auto r = client("curl -sS --max-time 120 -o - http://" + kVm1Ip + ":" + std::to_string(p) + "/" + name +
                            " | sha256sum");
            EXPECT_EQ(r.status, 0) << r.err << server_log(key);
            EXPECT_EQ(r.out.substr(0, 64), want) << "port " << p;
            const auto [b1, o1] = engine_s2s();
            (p == kPortDirective ? m.directive_bytes : m.default_bytes) = b1 - b0;
            (p == kPortDirective ? m.directive_ops : m.default_ops) = o1 - o0;
        }
        const std::string log = server_log(key);
        EXPECT_EQ(stop_server(key), 0) << "Pound's exit status on SIGTERM; its output: " << log;
        EXPECT_EQ(log.find("vpipe: fallback"), std::string::npos) << log;
        EXPECT_EQ(log.find("failed"), std::string::npos) << log;
        EXPECT_EQ(log.find("vpipe: enabled") != std::string::npos, env) << log;
        return m;
    };
    const PerListener on = through("pound-directive-on", false, "on");
    EXPECT_EQ(on.directive_ops, 1u) << "POUND_VPIPE unset, VPipe on: one hand-over";
    EXPECT_LE(on.directive_bytes, kSize);
    EXPECT_GE(on.directive_bytes, kSize - kMaxBuf);
    EXPECT_EQ(on.default_ops, 0u) << "POUND_VPIPE unset, no directive: Pound's relay";
    EXPECT_EQ(on.default_bytes, 0u);
    const PerListener off = through("pound-directive-off", true, "off");
    EXPECT_EQ(off.directive_ops, 0u) << "POUND_VPIPE=1, VPipe off: Pound's relay";
    EXPECT_EQ(off.directive_bytes, 0u);
    EXPECT_EQ(off.default_ops, 1u) << "POUND_VPIPE=1, no directive: one hand-over";
    EXPECT_LE(off.default_bytes, kSize);
    EXPECT_GE(off.default_bytes, kSize - kMaxBuf);
    std::printf("[ Pound per listener ] engine socket_to_socket of vm1: POUND_VPIPE unset, VPipe on +%llu B in %llu "
                "ops, no directive +%llu B in %llu ops; POUND_VPIPE=1, VPipe off +%llu B in %llu ops, no directive "
                "+%llu B in %llu ops\n",
                static_cast<unsigned long long>(on.directive_bytes), static_cast<unsigned long long>(on.directive_ops),
                static_cast<unsigned long long>(on.default_bytes), static_cast<unsigned long long>(on.default_ops),
                static_cast<unsigned long long>(off.directive_bytes), static_cast<unsigned long long>(off.directive_ops),
                static_cast<unsigned long long>(off.default_bytes), static_cast<unsigned long long>(off.default_ops));
    stop_server("backend");
    std::error_code ec;
    fs::remove(file, ec);
}

TEST_F(PoundLab, VPipeOff_SameRequests_EngineUntouched) {
    const Moved m = relay_and_check(false);
    EXPECT_EQ(m.bytes, 0u);
    EXPECT_EQ(m.ops, 0u);
    std::printf("[ Pound POUND_VPIPE unset ] engine socket_to_socket of vm1 +%llu B in %llu ops; 64 MiB GET %.3f s, "
                "64 MiB PUT %.3f s (one measurement each, not a benchmark)\n",
                static_cast<unsigned long long>(m.bytes), static_cast<unsigned long long>(m.ops), m.get_secs,
                m.put_secs);
}

}  // namespace
