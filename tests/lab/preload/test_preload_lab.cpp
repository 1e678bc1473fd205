// libvpipe-preload.so under Debian's stock binaries in a lab VM:
//  - lighttpd (1.4.69) and nginx (1.22.1) serve a 64 MiB file from the VM's disk with
//    LD_PRELOAD; curl on the client host downloads it byte-exact (SHA-256), a second request on
//    the same connection (keep-alive) and a Range request too, and the engine's file -> socket
//    counter grows by what the preload says dom0 moved, nearly all of the bodies: dom0 moved
//    them, not a guest fallback.
//  - cp (coreutils, copy_file_range) copies a 64 MiB file on the VM's disk under the preload: the
//    engine's file -> file counter grows by 64 MiB and the copy is byte-exact.
// Each server test also times one GET of the same file from the same server without the preload
// (the guest's page cache dropped before each GET), printed next to the preloaded ones.
// Skips with the reason when lighttpd, nginx or curl is not installed (scripts/install-deps.sh).
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "support/lab_fixture.h"

#ifndef VPIPE_PRELOAD_SO
#error "needs VPIPE_PRELOAD_SO"
#endif

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace vpipe::labtest;

constexpr uint64_t kSize = 64 * kMiB;
const std::string kPreload = VPIPE_PRELOAD_SO;

// Drops the guest's cached pages of a file (the lab's VM disks are mounted on this host).
void drop_cache(const std::string& path) {
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        close(fd);
    }
}

// The preload's counters: one JSON line per process; summed.
struct PreloadStats {
    uint64_t calls = 0, handed = 0, offloaded = 0, lib_fallback = 0, lib_failed = 0, bytes_dom0 = 0, bytes_guest = 0;
    uint64_t passed = 0, epoll_rearmed = 0, epoll_lost = 0, lines = 0;
    std::string text;
};
PreloadStats read_stats(const std::string& path, const char* call) {
    PreloadStats s;
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) {
        auto j = json::parse(line, nullptr, false);
        if (j.is_discarded() || !j.contains(call)) continue;
        const auto& c = j[call];
        ++s.lines;
        s.calls += c.value("calls", 0ull);
        s.handed += c.value("handed", 0ull);
        s.offloaded += c.value("offloaded", 0ull);
        s.lib_fallback += c.value("lib_fallback", 0ull);
        s.lib_failed += c.value("lib_failed", 0ull);
        s.bytes_dom0 += c.value("bytes_dom0", 0ull);
        s.bytes_guest += c.value("bytes_guest", 0ull);
        for (const auto& [k, v] : c["passed"].items()) s.passed += v.get<uint64_t>();
        s.epoll_rearmed += j.value("epoll_rearmed", 0ull);
        s.epoll_lost += j.value("epoll_lost", 0ull);
        s.text += line + "\n";
    }
    return s;
}

class PreloadLab : public LabFixture {
protected:
    static void SetUpTestSuite() {
        bring_up({.up = {"--vms", "1", "--disks", "1", "--disk-mib", "512"},
                  .binaries = {"vpipectl"},
                  .tools = {"curl", "sha256sum"},
                  .name = "preload"});
    }
    void SetUp() override {
        LabFixture::SetUp();
        if (IsSkipped() || HasFatalFailure()) return;
        ASSERT_EQ(access(kPreload.c_str(), R_OK), 0) << kPreload << " is not built";
    }
    void TearDown() override {
        if (!ready()) return;
        stop_servers();
        expect_nothing_left_behind();
    }

    // The engine's bytes of one operation for vm1.
    static uint64_t engine_bytes(const char* op) {
        const json st = engine_stats();
        for (const auto& v : st["vms"])
            if (v.value("name", "") == "vm1" && v.contains("bytes")) return v["bytes"].value(op, uint64_t{0});
        return 0;
    }

    // A server in vm1 started by `cmd` (a shell command line), reported as started once its port
    // accepts connections; `env` prefixes it ("" = stock).
    static LabServer& start(const std::string& key, const std::string& env, const std::string& cmd, int port) {
        const std::string script = env + " " + cmd + " & p=$!; trap 'kill -TERM $p; wait $p; exit 0' TERM; " +
                                   "for i in $(seq 100); do (exec 3<>/dev/tcp/" + kVm1Ip + "/" + std::to_string(port) +
                                   ") 2>/dev/null && break; sleep 0.1; done; echo listening on; wait $p";
        return start_server(key, "vm1", {"bash", "-c", script});
    }

    struct Get {
        int code = 0, conn = -1;
        uint64_t size = 0;
        double secs = 0;
    };
    static std::vector<Get> gets(const std::string& err) {
        std::vector<Get> v;
        std::istringstream in(err);
        for (std::string line; std::getline(in, line);) {
            Get g;
            if (std::sscanf(line.c_str(), "W code=%d size=%lu conn=%d time=%lf", &g.code, &g.size, &g.conn, &g.secs) == 4)
                v.push_back(g);
        }
        return v;
    }
    static constexpr const char* kW = "%{stderr}W code=%{http_code} size=%{size_download} conn=%{num_connects} time=%{time_total}\\n";

    // One cold GET of the whole file; its time, or -1 if it was not byte-exact.
    static double timed_get(const std::string& url, const std::string& file, const std::string& want) {
        drop_cache(file);
        auto r = client("curl -sS --max-time 120 -w '" + std::string(kW) + "' -o - " + url + " | sha256sum");
        auto g = gets(r.err);
        if (r.status != 0 || g.size() != 1 || g[0].size != kSize || r.out.substr(0, 64) != want) return -1;
        return g[0].secs;
    }

    // The whole check for one server: GET + a second GET on the same connection, a Range GET,
    // all byte-exact; dom0 moved them. `env`: the preload's environment for this server.
    void serve_and_check(const std::string& name, const std::string& cmd, int port, const std::string& env) {
        const std::string file = mount(1) + "/" + name + "-64m";
        ASSERT_EQ(write_pattern_file(file, 13, kSize, true), "");
        const std::string want = sha256_of(file);
        const std::string url = "http://" + kVm1Ip + ":" + std::to_string(port) + "/" + name + "-64m";
        // the range: bytes 1000..40000999
        auto rr = sh("head -c 40001000 " + file + " | tail -c 40000000 | sha256sum");
        ASSERT_EQ(rr.status, 0);
        const std::string want_range = rr.out.substr(0, 64);

        // stock, for the numbers
        start(name + "-stock", "", cmd, port);
        const double stock1 = timed_get(url, file, want), stock2 = timed_get(url, file, want);
        stop_server(name + "-stock");
        EXPECT_GT(stock1, 0) << "stock " << name << " did not serve the file byte-exact: " << server_log(name + "-stock");

        const std::string stats = tmp_ + "/" + name + "-stats.jsonl";
        start(name, "env LD_PRELOAD=" + kPreload + " VPIPE_PRELOAD_STATS=" + stats + " " + env, cmd, port);
        drop_cache(file);
        const uint64_t e0 = engine_bytes("file_to_socket");
        // two requests on one connection, the first hashed on the way, the second to a file
        auto r = client("curl -sS --max-time 120 -w '" + std::string(kW) + "' -o - " + url + " -o " + tmp_ + "/" + name +
                        "-second " + url + " | sha256sum");
        EXPECT_EQ(r.status, 0) << r.err;
        auto g = gets(r.err);
        ASSERT_EQ(g.size(), 2u) << r.err << server_log(name);
        EXPECT_EQ(g[0].code, 200);
        EXPECT_EQ(g[0].size, kSize);
        EXPECT_EQ(r.out.substr(0, 64), want) << "SHA-256 of the first body";
        EXPECT_EQ(g[1].code, 200);
        EXPECT_EQ(g[1].conn, 0) << "the second request needed a new connection (keep-alive)";
        EXPECT_EQ(sha256_of(tmp_ + "/" + name + "-second"), want) << "the second request on the same connection";
        // a Range request
        drop_cache(file);
        auto rg = client("curl -sS --max-time 120 -r 1000-40000999 -w '" + std::string(kW) + "' -o - " + url + " | sha256sum");
        EXPECT_EQ(rg.status, 0) << rg.err;
        auto gr = gets(rg.err);
        ASSERT_EQ(gr.size(), 1u) << rg.err;
        EXPECT_EQ(gr[0].code, 206);
        EXPECT_EQ(gr[0].size, 40000000u);
        EXPECT_EQ(rg.out.substr(0, 64), want_range) << "SHA-256 of the range";
        const double pre1 = timed_get(url, file, want), pre2 = timed_get(url, file, want);
        EXPECT_GT(pre1, 0);
        EXPECT_GT(pre2, 0);
        const uint64_t e1 = engine_bytes("file_to_socket");
        const std::string log = server_log(name);
        EXPECT_EQ(stop_server(name), 0) << log;  // the preload writes its counters at exit

        const uint64_t bodies = 4 * kSize + 40000000;
        const PreloadStats s = read_stats(stats, "sendfile");
        std::printf("[ %s ] preload counters:\n%s", name.c_str(), s.text.c_str());
        ASSERT_GE(s.lines, 1u) << "no counters from the preloaded server in " << stats << "\n" << log;
        EXPECT_EQ(s.lib_failed, 0u);
        EXPECT_EQ(s.epoll_lost, 0u);
        EXPECT_GT(s.offloaded, 0u);
        // both servers keep their connections in epoll: every hand-over took the socket out and
        // put it back (but a connection's first call, made before the server registered it;
        // 4 connections); the requests after one worked, so no readiness was lost
        EXPECT_GT(s.epoll_rearmed, 0u);
        EXPECT_GE(s.epoll_rearmed + 4, s.handed);
        // dom0 moved (nearly) all of the bodies: the engine says so, and agrees with the preload
        EXPECT_EQ(e1 - e0, s.bytes_dom0) << "engine file_to_socket grew by " << (e1 - e0) << ", preload says dom0 moved "
                                         << s.bytes_dom0;
        EXPECT_GE(e1 - e0, bodies * 95 / 100) << "dom0 moved only " << (e1 - e0) << " of " << bodies << " body bytes";
        EXPECT_LE(e1 - e0, bodies);
        std::printf("[ %s ] 64 MiB GET, guest cache dropped: stock %.3f s / %.3f s, preloaded %.3f s / %.3f s; engine "
                    "file_to_socket +%llu B of %llu B of bodies (%llu calls handed, %llu offloaded, %llu fell back in "
                    "libvpipe, %llu passed to libc)\n",
                    name.c_str(), stock1, stock2, pre1, pre2, static_cast<unsigned long long>(e1 - e0),
                    static_cast<unsigned long long>(bodies), static_cast<unsigned long long>(s.handed),
                    static_cast<unsigned long long>(s.offloaded), static_cast<unsigned long long>(s.lib_fallback),
                    static_cast<unsigned long long>(s.passed));
        std::error_code ec;
        fs::remove(file, ec);
    }
};

TEST_F(PreloadLab, Lighttpd_Get64MiB_KeepAlive_Range_MovedByDom0) {
    if (!have_tool("lighttpd")) GTEST_SKIP() << "lighttpd is not installed (scripts/install-deps.sh installs it)";
    const std::string conf = tmp_ + "/lighttpd.conf";
    std::ofstream(conf) << "server.document-root = \"" << mount(1) << "\"\n"
                        << "server.bind = \"" << kVm1Ip << "\"\nserver.port = 8091\n"
                        << "server.errorlog = \"" << tmp_ << "/lighttpd.err\"\n"
                        << "mimetype.assign = (\"\" => \"application/octet-stream\")\n";
    // lighttpd writes at most 256 KiB per call, its first body call 256 KiB less the head: with
    // libvpipe's default threshold (256 KiB) that call is the guest's, and the readahead it
    // starts puts the rest into the guest's cache, where the cache rule leaves it (README)
    serve_and_check("lighttpd", "lighttpd -D -f " + conf, 8091, "VPIPE_MIN_OFFLOAD=128K");
}

TEST_F(PreloadLab, Nginx_Get64MiB_KeepAlive_Range_MovedByDom0) {
    if (!have_tool("nginx")) GTEST_SKIP() << "nginx is not installed (scripts/install-deps.sh installs it)";
    const std::string conf = tmp_ + "/nginx.conf";
    fs::create_directories(tmp_ + "/nginx");
    // nginx clears its workers' environment but for what `env` names: libvpipe finds the lab's
    // agent through VPIPE_AGENT_SOCKET (on Xen it uses /dev/vpipe and needs nothing)
    std::ofstream(conf) << "daemon off;\nmaster_process on;\nworker_processes 1;\nuser root;\n"
                        << "env VPIPE_AGENT_SOCKET;\n"
                        << "pid " << tmp_ << "/nginx.pid;\nerror_log " << tmp_ << "/nginx.err;\n"
                        << "events { worker_connections 64; }\n"
                        << "http {\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_timeout 30;\n"
                        << "  default_type application/octet-stream;\n"
                        << "  client_body_temp_path " << tmp_ << "/nginx/body;\n  proxy_temp_path " << tmp_ << "/nginx/proxy;\n"
                        << "  fastcgi_temp_path " << tmp_ << "/nginx/fastcgi;\n  uwsgi_temp_path " << tmp_ << "/nginx/uwsgi;\n"
                        << "  scgi_temp_path " << tmp_ << "/nginx/scgi;\n"
                        << "  server {\n    listen " << kVm1Ip << ":8092;\n    root " << mount(1) << ";\n  }\n}\n";
    serve_and_check("nginx", "nginx -e stderr -p " + tmp_ + "/nginx -c " + conf, 8092, "");
}

TEST_F(PreloadLab, Cp64MiB_CopyFileRangeMovedByDom0) {
    const std::string src = mount(1) + "/cp-src", dst = mount(1) + "/cp-dst";
    ASSERT_EQ(write_pattern_file(src, 17, kSize, true), "");
    const std::string want = sha256_of(src);
    std::error_code ec;
    fs::remove(dst, ec);
    const std::string stats = tmp_ + "/cp-stats.jsonl";
    const uint64_t e0 = engine_bytes("file_to_file");
    auto r = lab({"exec", "vm1", "--", "env", "LD_PRELOAD=" + kPreload, "VPIPE_PRELOAD_STATS=" + stats, "cp", src, dst});
    const uint64_t e1 = engine_bytes("file_to_file");
    ASSERT_EQ(r.status, 0) << r.all();
    EXPECT_EQ(fs::file_size(dst), kSize);
    EXPECT_EQ(sha256_of(dst), want);
    const PreloadStats s = read_stats(stats, "copy_file_range");
    std::printf("[ cp ] preload counters:\n%s", s.text.c_str());
    EXPECT_EQ(s.offloaded, 1u);
    EXPECT_EQ(s.bytes_dom0, kSize);
    EXPECT_EQ(s.lib_fallback + s.lib_failed, 0u);
    EXPECT_EQ(e1 - e0, kSize) << "engine file_to_file grew by " << (e1 - e0);
    fs::remove(src, ec);
    fs::remove(dst, ec);
}

}  // namespace
