// patches/lighttpd: lighttpd 1.4.69 with lighttpd-1.4.69-vpipe.patch (built by
// patches/lighttpd/build.sh) serves files from a lab VM's ext4 disk to curl on the client host:
//  - one connection: GET 64 MiB (hashed on the way), GET 64 MiB again and GET 200 KiB, all three
//    on the same connection (curl reports no new connect and the same local port): keep-alive
//    after a hand-over, and a short body by sendfile() on the restored connection;
//  - a Range request (bytes 1000..40000999, 206, SHA-256 of the part);
//  - a multipart Range request (a 100-byte part, then a 1,000,000-byte part: the short one by
//    sendfile(), the long one handed over in the next write; each part checked byte by byte);
//  - one cold GET of 64 MiB, timed (printed; one measurement, not a benchmark).
// Every body is byte-exact. server.vpipe = "enable": the engine's file -> socket counters of vm1
// grow by exactly the file chunks at or above the offload threshold (one ring request per such
// chunk, its bytes), nothing below it; lighttpd's error log has no error; after each test no
// shadow socket, steered flow or nft element is left. server.vpipe = "disable": the same
// requests and checks, and the engine's counters do not move.
// The event loop keeps serving while dom0 sends: 4 downloads of 256 MiB are in flight (each client
// reads its first 4 MiB, then stops reading until a gate opens), and meanwhile 200 GETs of 1 KiB
// files (25 connections x 8 keep-alive requests) go to the same lighttpd: every small body is
// byte-exact, and the engine still has the 4 large operations in progress (vm1's `active`) after
// the last small response arrived, as it had before the first; then the gates open and the large
// bodies arrive byte-exact, moved by dom0 (file_to_socket +4 ops, +4 x 256 MiB). The same with
// server.vpipe = "disable" (sendfile; the engine untouched). The old blocking call stalled the
// loop on the first large download: the other three never started. Latency figures: bench/run.sh
// apps.
// lighttpd runs with VPIPE_MIN_OFFLOAD set to libvpipe's default threshold, so that neither the
// host's /etc/vpipe/vpipe.conf nor the environment changes what is offloaded.
// Skips with the reason when the patched binary is not built or curl is missing.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <vpipe/vpipe.h>  // VPIPE_MIN_OFFLOAD_DEFAULT only: the test does not link libvpipe

#include "support/lab_fixture.h"

#ifndef VPIPE_LIGHTTPD_BIN
#error "needs VPIPE_LIGHTTPD_BIN"
#endif

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace vpipe::labtest;

constexpr uint64_t kThreshold = VPIPE_MIN_OFFLOAD_DEFAULT;  // what lighttpd's libvpipe is told
constexpr uint64_t kSeed = 23, kSmallSeed = 24;
constexpr uint64_t kSize = 64 * kMiB;
constexpr uint64_t kSmall = 200 * 1024;  // below the threshold: sendfile()
static_assert(kSmall < kThreshold && kSize >= kThreshold);
constexpr uint64_t kRangeFirst = 1000, kRange = 40000000;  // bytes 1000..40000999
// the multipart Range request: a part below the threshold, then one above it
constexpr uint64_t kPart1First = 0, kPart1 = 100, kPart2First = 1000000, kPart2 = 1000000;
static_assert(kPart1 < kThreshold && kPart2 >= kThreshold);
const std::string kLighttpd = VPIPE_LIGHTTPD_BIN;
// a port per test: one test's connections (e.g. after a crash) do not keep the other from binding
constexpr int kPortVPipe = 8093, kPortClassic = 8094;
// large downloads in flight while small requests are served
constexpr int kLarge = 4;  // the lab engine's worker threads per VM: all four are in progress at once
constexpr uint64_t kLargeSize = 256 * kMiB, kLargeRead = 4 * kMiB, kTiny = 1024;
constexpr int kTinyFiles = 8, kTinyRounds = 25;  // 25 connections x 8 requests
static_assert(kTiny < kThreshold && kLargeSize >= kThreshold);

// Drops the guest's cached pages of a file (the lab's VM disks are mounted on this host): a
// range wholly in the guest's cache is sent by the guest (libvpipe's cache rule), not by dom0.
void drop_cache(const std::string& path) {
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        close(fd);
    }
}

// The parts of a multipart/byteranges body: (first byte, bytes); "" or what is wrong.
struct Part {
    uint64_t first = 0, len = 0, total = 0;
    std::string data;
};
std::string parse_multipart(const std::string& headers, const std::string& body, std::vector<Part>* parts) {
    const std::string key = "boundary=";
    const auto ct = headers.find("multipart/byteranges");
    if (ct == std::string::npos) return "no multipart/byteranges Content-Type in " + headers;
    const auto b = headers.find(key, ct);
    if (b == std::string::npos) return "no boundary in " + headers;
    const auto e = headers.find_first_of("\r\n;", b);
    const std::string delim = "--" + headers.substr(b + key.size(), e - b - key.size());
    size_t pos = body.find(delim);
    if (pos == std::string::npos) return "no first boundary in the body";
    for (;;) {
        pos += delim.size();
        if (body.compare(pos, 2, "--") == 0) return "";  // the closing boundary
        const auto hend = body.find("\r\n\r\n", pos);
        if (hend == std::string::npos) return "a part without the end of its headers";
        const std::string ph = body.substr(pos, hend - pos);
        const auto cr = ph.find("Content-Range: bytes ");
        Part p;
        unsigned long long a = 0, z = 0, t = 0;
        if (cr == std::string::npos || std::sscanf(ph.c_str() + cr, "Content-Range: bytes %llu-%llu/%llu", &a, &z, &t) != 3 ||
            z < a)
            return "a part without a Content-Range: " + ph;
        p.first = a;
        p.len = z - a + 1;
        p.total = t;
        const size_t at = hend + 4;
        if (at + p.len > body.size()) return "a part longer than the body";
        p.data = body.substr(at, p.len);
        parts->push_back(std::move(p));
        pos = body.find(delim, at + p.len);
        if (pos != at + p.len + 2) return "the part is not followed by CRLF and the boundary";
    }
}

class LighttpdLab : public LabFixture {
protected:
    static void SetUpTestSuite() {
        bring_up({.up = {"--vms", "1", "--disks", "1", "--disk-mib", "1536"},
                  .binaries = {"vpipectl"},
                  .tools = {"curl", "sha256sum", "timeout"},
                  .name = "lighttpd"});
    }
    void SetUp() override {
        LabFixture::SetUp();
        if (IsSkipped() || HasFatalFailure()) return;
        if (access(kLighttpd.c_str(), X_OK) != 0)
            GTEST_SKIP() << "the patched lighttpd is not built (" << kLighttpd
                         << "): run patches/lighttpd/build.sh (scripts/test.sh does)";
    }
    void TearDown() override {
        if (!ready()) return;
        stop_servers();
        expect_nothing_left_behind();
        auto ps = sh("pgrep -f -x '" + kLighttpd + " -D -f .*' || true");
        EXPECT_EQ(ps.out, "") << "a patched lighttpd is still running";
    }

    // vm1's engine counters: file -> socket bytes and operations (ring requests)
    static std::pair<uint64_t, uint64_t> engine_f2s() {
        const json st = engine_stats();
        EXPECT_TRUE(st.contains("vms")) << "engine stats: " << st.dump();
        for (const auto& v : st.value("vms", json::array()))
            if (v.value("name", "") == "vm1") {
                uint64_t b = v.contains("bytes") ? v["bytes"].value("file_to_socket", uint64_t{0}) : 0;
                uint64_t o = v.contains("ops") ? v["ops"].value("file_to_socket", uint64_t{0}) : 0;
                return {b, o};
            }
        ADD_FAILURE() << "no vm1 in the engine's stats: " << st.dump();
        return {0, 0};
    }

    // vm1's operations in progress in the engine
    static int64_t engine_active() {
        for (const auto& v : engine_stats().value("vms", json::array()))
            if (v.value("name", "") == "vm1") return v.value("active", int64_t{-1});
        return -1;
    }

    static int port(bool vpipe) { return vpipe ? kPortVPipe : kPortClassic; }

    // The patched lighttpd in vm1, with server.vpipe on or off; reported started once its port
    // accepts connections. Its exit status on SIGTERM is lighttpd's own.
    static void start_lighttpd(const std::string& key, bool vpipe) {
        const std::string conf = tmp_ + "/" + key + ".conf";
        std::ofstream(conf) << "server.document-root = \"" << mount(1) << "\"\n"
                            << "server.bind = \"" << kVm1Ip << "\"\nserver.port = " << port(vpipe) << "\n"
                            << "server.errorlog = \"" << tmp_ << "/" << key << ".err\"\n"
                            << "mimetype.assign = (\"\" => \"application/octet-stream\")\n"
                            << "server.vpipe = \"" << (vpipe ? "enable" : "disable") << "\"\n";
        const std::string script = "VPIPE_MIN_OFFLOAD=" + std::to_string(kThreshold) + " " + kLighttpd + " -D -f " +
                                   conf + " & p=$!; trap 'kill -TERM $p; wait $p; exit $?' TERM; " +
                                   "for i in $(seq 100); do (exec 3<>/dev/tcp/" + kVm1Ip + "/" + std::to_string(port(vpipe)) +
                                   ") 2>/dev/null && break; sleep 0.1; done; echo listening on; wait $p";
        start_server(key, "vm1", {"bash", "-c", script});
    }

    struct Get {
        int code = 0, conn = -1, port = -1;
        uint64_t size = 0;
        double secs = 0;
    };
    static std::vector<Get> gets(const std::string& err) {
        std::vector<Get> v;
        std::istringstream in(err);
        for (std::string line; std::getline(in, line);) {
            Get g;
            if (std::sscanf(line.c_str(), "W code=%d size=%lu conn=%d port=%d time=%lf", &g.code, &g.size, &g.conn,
                            &g.port, &g.secs) == 5)
                v.push_back(g);
        }
        return v;
    }
    static constexpr const char* kW =
        "%{stderr}W code=%{http_code} size=%{size_download} conn=%{num_connects} port=%{local_port} "
        "time=%{time_total}\\n";

    struct Moved {
        uint64_t bytes = 0, ops = 0;  // the engine's growth over all requests
        uint64_t want_bytes = 0, want_ops = 0;  // what the file chunks at or above the threshold make
    };

    // All requests (see the top), all byte-exact; *secs: the timed GET.
    Moved serve_and_check(bool vpipe, double* secs) {
        const std::string key = vpipe ? "lighttpd-vpipe" : "lighttpd-classic";
        const std::string name = key + "-64m", small = key + "-200k";
        const std::string file = mount(1) + "/" + name, small_file = mount(1) + "/" + small;
        EXPECT_EQ(write_pattern_file(file, kSeed, kSize, true), "");
        EXPECT_EQ(write_pattern_file(small_file, kSmallSeed, kSmall, true), "");
        const std::string want = sha256_of(file), want_small = sha256_of(small_file);
        auto rr = sh("head -c " + std::to_string(kRangeFirst + kRange) + " " + file + " | tail -c " +
                     std::to_string(kRange) + " | sha256sum");
        EXPECT_EQ(rr.status, 0);
        const std::string want_range = rr.out.substr(0, 64);
        const std::string base = "http://" + kVm1Ip + ":" + std::to_string(port(vpipe)) + "/";
        const std::string url = base + name;
        const std::string out = tmp_ + "/" + key;
        Moved m;
        // each response body is one file chunk: handed over when at or above the threshold
        auto expect_chunk = [&](uint64_t n) {
            if (vpipe && n >= kThreshold) {
                m.want_bytes += n;
                ++m.want_ops;
            }
        };

        start_lighttpd(key, vpipe);
        drop_cache(file);
        const auto [b0, o0] = engine_f2s();
        // 1. three requests on one connection: 64 MiB hashed on the way, 64 MiB again, 200 KiB
        auto r = client("curl -sS --max-time 120 -w '" + std::string(kW) + "' -o - " + url + " -o " + out + "-second " +
                        url + " -o " + out + "-small " + base + small + " | sha256sum");
        EXPECT_EQ(r.status, 0) << r.err;
        auto g = gets(r.err);
        EXPECT_EQ(g.size(), 3u) << r.err << server_log(key);
        if (g.size() == 3) {
            EXPECT_EQ(g[0].code, 200);
            EXPECT_EQ(g[0].size, kSize);
            EXPECT_EQ(g[0].conn, 1);
            for (int i : {1, 2}) {
                EXPECT_EQ(g[i].code, 200) << "request " << i + 1;
                EXPECT_EQ(g[i].conn, 0) << "request " << i + 1 << " needed a new connection (keep-alive)";
                EXPECT_EQ(g[i].port, g[0].port) << "request " << i + 1 << " went on another connection";
            }
            EXPECT_EQ(g[1].size, kSize);
            EXPECT_EQ(g[2].size, kSmall);
        }
        EXPECT_EQ(r.out.substr(0, 64), want) << "SHA-256 of the first body";
        EXPECT_EQ(sha256_of(out + "-second"), want) << "the second request on the same connection";
        EXPECT_EQ(sha256_of(out + "-small"), want_small) << "the third (short) request on the same connection";
        expect_chunk(kSize);
        expect_chunk(kSize);
        expect_chunk(kSmall);
        // 2. a Range request
        drop_cache(file);
        auto rg = client("curl -sS --max-time 120 -r " + std::to_string(kRangeFirst) + "-" +
                         std::to_string(kRangeFirst + kRange - 1) + " -w '" + std::string(kW) + "' -o - " + url +
                         " | sha256sum");
        EXPECT_EQ(rg.status, 0) << rg.err;
        auto gr = gets(rg.err);
        EXPECT_EQ(gr.size(), 1u) << rg.err;
        if (gr.size() == 1) {
            EXPECT_EQ(gr[0].code, 206);
            EXPECT_EQ(gr[0].size, kRange);
        }
        EXPECT_EQ(rg.out.substr(0, 64), want_range) << "SHA-256 of the range";
        expect_chunk(kRange);
        // 3. a multipart Range request: a short part, then a long one
        drop_cache(file);
        auto rm = client("curl -sS --max-time 120 -r " + std::to_string(kPart1First) + "-" +
                         std::to_string(kPart1First + kPart1 - 1) + "," + std::to_string(kPart2First) + "-" +
                         std::to_string(kPart2First + kPart2 - 1) + " -w '" + std::string(kW) + "' -D " + out +
                         "-multi.head -o " + out + "-multi " + url);
        EXPECT_EQ(rm.status, 0) << rm.err;
        auto gm = gets(rm.err);
        EXPECT_EQ(gm.size(), 1u) << rm.err;
        if (gm.size() == 1) {
            EXPECT_EQ(gm[0].code, 206);
        }
        std::vector<Part> parts;
        EXPECT_EQ(parse_multipart(slurp(out + "-multi.head"), slurp(out + "-multi"), &parts), "");
        EXPECT_EQ(parts.size(), 2u) << slurp(out + "-multi.head");
        if (parts.size() == 2) {
            EXPECT_EQ(parts[0].first, kPart1First);
            EXPECT_EQ(parts[0].len, kPart1);
            EXPECT_EQ(parts[1].first, kPart2First);
            EXPECT_EQ(parts[1].len, kPart2);
        }
        for (const auto& p : parts) {
            EXPECT_EQ(p.total, kSize);
            EXPECT_EQ(check_pattern(kSeed, p.first, p.data.data(), p.data.size()), -1)
                << "part at " << p.first << ": first wrong byte";
        }
        expect_chunk(kPart1);
        expect_chunk(kPart2);
        // 4. one timed cold GET (a new connection)
        drop_cache(file);
        auto rt = client("curl -sS --max-time 120 -w '" + std::string(kW) + "' -o - " + url + " | sha256sum");
        EXPECT_EQ(rt.status, 0) << rt.err;
        auto gt = gets(rt.err);
        EXPECT_EQ(gt.size(), 1u) << rt.err;
        EXPECT_EQ(rt.out.substr(0, 64), want) << "SHA-256 of the timed GET";
        expect_chunk(kSize);
        *secs = gt.size() == 1 ? gt[0].secs : -1;
        const auto [b1, o1] = engine_f2s();
        m.bytes = b1 - b0;
        m.ops = o1 - o0;
        const std::string log = server_log(key);
        EXPECT_EQ(stop_server(key), 0) << "lighttpd's exit status on SIGTERM; its output: " << log;
        const std::string errlog = slurp(tmp_ + "/" + key + ".err");
        std::printf("[ %s ] lighttpd's error log:\n%s", key.c_str(), errlog.c_str());
        // only its start and its shutdown: no write error, no failed fdevent call
        std::istringstream lines(errlog);
        for (std::string line; std::getline(lines, line);)
            EXPECT_TRUE(line.find("server started") != std::string::npos ||
                        line.find("server stopped by UID") != std::string::npos)
                << "lighttpd logged: " << line;
        std::error_code ec;
        fs::remove(file, ec);
        fs::remove(small_file, ec);
        return m;
    }

    // Large downloads held in flight, small requests meanwhile (see the top); every body checked.
    // Returns the engine's file_to_socket growth.
    Moved small_while_large_in_flight(bool vpipe) {
        const std::string key = vpipe ? "lighttpd-vpipe-busy" : "lighttpd-classic-busy";
        const std::string dir = tmp_ + "/" + key;
        fs::create_directories(dir);
        chmod(dir.c_str(), 0755);
        std::vector<std::string> large, want_large, tiny, want_tiny;
        for (int i = 0; i < kLarge; ++i) {
            large.push_back(key + "-large" + std::to_string(i));
            const std::string f = mount(1) + "/" + large.back();
            EXPECT_EQ(write_pattern_file(f, 100 + i, kLargeSize, true), "");
            want_large.push_back(sha256_of(f));
            drop_cache(f);  // hashing read it: dom0 must send it, not the guest's cache
        }
        for (int j = 0; j < kTinyFiles; ++j) {
            tiny.push_back(key + "-tiny" + std::to_string(j));
            EXPECT_EQ(write_pattern_file(mount(1) + "/" + tiny.back(), 200 + j, kTiny, true), "");
            const auto p = pattern(200 + j, kTiny);
            want_tiny.emplace_back(p.begin(), p.end());
        }
        const std::string base = "http://" + kVm1Ip + ":" + std::to_string(port(vpipe)) + "/";
        start_lighttpd(key, vpipe);
        const auto [b0, o0] = engine_f2s();

        // each large client: its first kLargeRead bytes, "started i", then nothing until its gate
        // (a fifo it holds open, so that the "go" cannot be lost) says go (bounded: 60 s), then the
        // rest; "done i <status> <SHA-256>"
        std::string script = "d=" + dir + "; exec 3>&1\nget() { curl -sS --max-time 180 -o - \"$2\" | { exec 4<>\"$d/gate$1\"; " +
                             "head -c " + std::to_string(kLargeRead) + "; echo \"started $1\" >&3; " +
                             "timeout 60 head -n1 <&4 >/dev/null; exec 4<&-; cat; } | sha256sum > \"$d/sum$1\"; " +
                             "st=$?; echo \"done $1 $st $(cut -c1-64 \"$d/sum$1\")\"; }\n";
        for (int i = 0; i < kLarge; ++i)
            script += "mkfifo $d/gate" + std::to_string(i) + "; get " + std::to_string(i) + " " + base + large[i] + " &\n";
        script += "wait\n";
        LabProc big("client", {"bash", "-o", "pipefail", "-c", script});
        bool gates_open = false;
        auto open_gates = [&] {  // also on a failed assertion: the clients then finish or fail by themselves
            if (gates_open) return;
            gates_open = true;
            std::string g;
            for (int i = 0; i < kLarge; ++i) g += "echo go 1<>" + dir + "/gate" + std::to_string(i) + "; ";
            sh(g);  // (<>: never blocks, also when a client has gone)
        };
        struct Guard {
            std::function<void()> f;
            ~Guard() { f(); }
        } guard{open_gates};

        for (int i = 0; i < kLarge; ++i)
            if (big.line("started ").empty()) {
                ADD_FAILURE() << "only " << i << " of " << kLarge << " large downloads started: " << big.all
                              << server_log(key);
                return {};
            }
        const int64_t active_before = engine_active();

        // the small requests, while the large ones wait for their clients
        std::string small = "d=" + dir + "\nfor r in $(seq 0 " + std::to_string(kTinyRounds - 1) + "); do a=(); ";
        for (int j = 0; j < kTinyFiles; ++j)
            small += "a+=(-o $d/t$r-" + std::to_string(j) + " " + base + tiny[j] + "); ";
        small += "curl -sS --max-time 20 -w 'W code=%{http_code} size=%{size_download} conn=%{num_connects}\\n' "
                 "\"${a[@]}\" || exit 1; done";
        auto rs = client(small);
        const int64_t active_after = engine_active();
        EXPECT_EQ(rs.status, 0) << rs.err;
        int ok = 0, conns = 0;
        std::istringstream in(rs.out);
        for (std::string line; std::getline(in, line);) {
            int code = 0, conn = -1;
            unsigned long size = 0;
            if (std::sscanf(line.c_str(), "W code=%d size=%lu conn=%d", &code, &size, &conn) == 3) {
                ok += code == 200 && size == kTiny;
                conns += conn;
            }
        }
        EXPECT_EQ(ok, kTinyFiles * kTinyRounds) << rs.out;
        EXPECT_EQ(conns, kTinyRounds) << "one connection per curl, its 8 requests kept alive";
        int exact = 0;
        for (int r = 0; r < kTinyRounds; ++r)
            for (int j = 0; j < kTinyFiles; ++j)
                exact += slurp(dir + "/t" + std::to_string(r) + "-" + std::to_string(j)) == want_tiny[j];
        EXPECT_EQ(exact, kTinyFiles * kTinyRounds) << "small bodies byte-exact";
        // the large ones were in dom0's hands from before the first small request to after the last
        EXPECT_EQ(active_before, vpipe ? kLarge : 0) << "vm1's operations in progress before the small requests";
        EXPECT_EQ(active_after, vpipe ? kLarge : 0) << "vm1's operations in progress after the last small response";

        open_gates();
        int done = 0;
        for (std::string l; !(l = big.line("done ")).empty();) {
            int i = -1, st = -1;
            char h[65] = {};
            if (std::sscanf(l.c_str(), "done %d %d %64s", &i, &st, h) == 3 && i >= 0 && i < kLarge) {
                EXPECT_EQ(st, 0) << "large download " << i;
                EXPECT_EQ(std::string(h), want_large[i]) << "SHA-256 of large download " << i;
                ++done;
            }
        }
        EXPECT_EQ(big.wait(), 0) << big.all;
        EXPECT_EQ(done, kLarge) << big.all;
        const auto [b1, o1] = engine_f2s();
        EXPECT_EQ(stop_server(key), 0) << "lighttpd's exit status on SIGTERM; its output: " << server_log(key);
        const std::string errlog = slurp(tmp_ + "/" + key + ".err");
        std::istringstream lines(errlog);
        for (std::string line; std::getline(lines, line);)
            EXPECT_TRUE(line.find("server started") != std::string::npos ||
                        line.find("server stopped by UID") != std::string::npos)
                << "lighttpd logged: " << line;
        std::error_code ec;
        for (const auto& f : large) fs::remove(mount(1) + "/" + f, ec);
        for (const auto& f : tiny) fs::remove(mount(1) + "/" + f, ec);
        fs::remove_all(dir, ec);
        Moved m;
        m.bytes = b1 - b0;
        m.ops = o1 - o0;
        return m;
    }
};

TEST_F(LighttpdLab, VPipeEnabled_KeepAlive_Ranges_MovedByDom0) {
    double secs = 0;
    const Moved m = serve_and_check(true, &secs);
    // 64 MiB x 3, the 40,000,000-byte range and the 1,000,000-byte part: 5 hand-overs; the
    // 200 KiB body and the 100-byte part are below the threshold
    EXPECT_EQ(m.want_ops, 5u);
    EXPECT_EQ(m.want_bytes, 3 * kSize + kRange + kPart2);
    EXPECT_EQ(m.bytes, m.want_bytes) << "engine file_to_socket bytes";
    EXPECT_EQ(m.ops, m.want_ops) << "engine file_to_socket ops: one per file chunk at or above the threshold";
    std::printf("[ lighttpd server.vpipe=enable ] engine file_to_socket +%llu B in %llu ops (want %llu B, %llu ops); "
                "one cold 64 MiB GET %.3f s (one measurement, not a benchmark)\n",
                static_cast<unsigned long long>(m.bytes), static_cast<unsigned long long>(m.ops),
                static_cast<unsigned long long>(m.want_bytes), static_cast<unsigned long long>(m.want_ops), secs);
}

TEST_F(LighttpdLab, VPipeDisabled_SameRequests_EngineUntouched) {
    double secs = 0;
    const Moved m = serve_and_check(false, &secs);
    EXPECT_EQ(m.want_ops, 0u);
    EXPECT_EQ(m.bytes, 0u);
    EXPECT_EQ(m.ops, 0u);
    std::printf("[ lighttpd server.vpipe=disable ] engine file_to_socket +%llu B in %llu ops; one cold 64 MiB GET "
                "%.3f s (one measurement, not a benchmark)\n",
                static_cast<unsigned long long>(m.bytes), static_cast<unsigned long long>(m.ops), secs);
}

}  // namespace

TEST_F(LighttpdLab, VPipeEnabled_SmallRequestsServedWhileLargeDownloadsInFlight) {
    const Moved m = small_while_large_in_flight(true);
    EXPECT_EQ(m.bytes, kLarge * kLargeSize) << "engine file_to_socket bytes: the large bodies, by dom0";
    EXPECT_EQ(m.ops, static_cast<uint64_t>(kLarge)) << "engine file_to_socket ops: one per large body";
    std::printf("[ lighttpd server.vpipe=enable, busy ] %d x %llu MiB in flight by dom0 while %d small GETs were "
                "served; engine file_to_socket +%llu B in %llu ops\n",
                kLarge, static_cast<unsigned long long>(kLargeSize / kMiB), kTinyFiles * kTinyRounds,
                static_cast<unsigned long long>(m.bytes), static_cast<unsigned long long>(m.ops));
}

TEST_F(LighttpdLab, VPipeDisabled_SmallRequestsServedWhileLargeDownloadsInFlight) {
    const Moved m = small_while_large_in_flight(false);
    EXPECT_EQ(m.bytes, 0u);
    EXPECT_EQ(m.ops, 0u);
}
