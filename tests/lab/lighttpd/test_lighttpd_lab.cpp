// patches/lighttpd: lighttpd 1.4.69 with lighttpd-1.4.69-vpipe.patch (built by
// patches/lighttpd/build.sh) serves a 64 MiB file from a lab VM's ext4 disk; curl on the client
// host downloads it byte-exact (SHA-256), a second request on the same keep-alive connection and a
// Range request too.
//  - server.vpipe = "enable": the engine's file -> socket bytes of vm1 grow by the bodies' bytes
//    (dom0 sent them), and no shadow socket, steered flow or nft element is left afterwards;
//  - server.vpipe off (the default): the same requests work and the engine's counters do not move.
// One cold GET is timed in each mode (printed; one measurement, not a benchmark).
// Skips with the reason when the patched binary is not built or curl is missing.
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

#ifndef VPIPE_LIGHTTPD_BIN
#error "needs VPIPE_LIGHTTPD_BIN"
#endif

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace vpipe::labtest;

constexpr uint64_t kSize = 64 * kMiB;
constexpr uint64_t kRange = 40000000;  // bytes 1000..40000999
const std::string kLighttpd = VPIPE_LIGHTTPD_BIN;
constexpr int kPort = 8093;

// Drops the guest's cached pages of a file (the lab's VM disks are mounted on this host).
void drop_cache(const std::string& path) {
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        close(fd);
    }
}

class LighttpdLab : public LabFixture {
protected:
    static void SetUpTestSuite() {
        bring_up({.up = {"--vms", "1", "--disks", "1", "--disk-mib", "512"},
                  .binaries = {"vpipectl"},
                  .tools = {"curl", "sha256sum"},
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
    }

    // vm1's engine counters: file -> socket bytes and operations
    static std::pair<uint64_t, uint64_t> engine_f2s() {
        const json st = engine_stats();
        for (const auto& v : st["vms"])
            if (v.value("name", "") == "vm1") {
                uint64_t b = v.contains("bytes") ? v["bytes"].value("file_to_socket", uint64_t{0}) : 0;
                uint64_t o = v.contains("ops") ? v["ops"].value("file_to_socket", uint64_t{0}) : 0;
                return {b, o};
            }
        return {0, 0};
    }

    // The patched lighttpd in vm1, with server.vpipe on or off; reported started once its port
    // accepts connections.
    static void start_lighttpd(const std::string& key, bool vpipe) {
        const std::string conf = tmp_ + "/" + key + ".conf";
        std::ofstream(conf) << "server.document-root = \"" << mount(1) << "\"\n"
                            << "server.bind = \"" << kVm1Ip << "\"\nserver.port = " << kPort << "\n"
                            << "server.errorlog = \"" << tmp_ << "/" << key << ".err\"\n"
                            << "mimetype.assign = (\"\" => \"application/octet-stream\")\n"
                            << "server.vpipe = \"" << (vpipe ? "enable" : "disable") << "\"\n";
        const std::string script = kLighttpd + " -D -f " + conf + " & p=$!; trap 'kill -TERM $p; wait $p; exit 0' TERM; " +
                                   "for i in $(seq 100); do (exec 3<>/dev/tcp/" + kVm1Ip + "/" + std::to_string(kPort) +
                                   ") 2>/dev/null && break; sleep 0.1; done; echo listening on; wait $p";
        start_server(key, "vm1", {"bash", "-c", script});
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

    // GET + a second GET on the same connection, a Range GET, all byte-exact; then one timed cold
    // GET. Returns the engine's (bytes, ops) growth over all of it; *secs: the timed GET.
    std::pair<uint64_t, uint64_t> serve_and_check(bool vpipe, double* secs) {
        const std::string key = vpipe ? "lighttpd-vpipe" : "lighttpd-classic";
        const std::string name = key + "-64m";
        const std::string file = mount(1) + "/" + name;
        EXPECT_EQ(write_pattern_file(file, 23, kSize, true), "");
        const std::string want = sha256_of(file);
        auto rr = sh("head -c 40001000 " + file + " | tail -c 40000000 | sha256sum");
        EXPECT_EQ(rr.status, 0);
        const std::string want_range = rr.out.substr(0, 64);
        const std::string url = "http://" + kVm1Ip + ":" + std::to_string(kPort) + "/" + name;

        start_lighttpd(key, vpipe);
        drop_cache(file);
        const auto [b0, o0] = engine_f2s();
        // two requests on one connection, the first hashed on the way, the second to a file
        auto r = client("curl -sS --max-time 120 -w '" + std::string(kW) + "' -o - " + url + " -o " + tmp_ + "/" + key +
                        "-second " + url + " | sha256sum");
        EXPECT_EQ(r.status, 0) << r.err;
        auto g = gets(r.err);
        EXPECT_EQ(g.size(), 2u) << r.err << server_log(key);
        if (g.size() == 2) {
            EXPECT_EQ(g[0].code, 200);
            EXPECT_EQ(g[0].size, kSize);
            EXPECT_EQ(g[1].code, 200);
            EXPECT_EQ(g[1].conn, 0) << "the second request needed a new connection (keep-alive)";
        }
        EXPECT_EQ(r.out.substr(0, 64), want) << "SHA-256 of the first body";
        EXPECT_EQ(sha256_of(tmp_ + "/" + key + "-second"), want) << "the second request on the same connection";
        // a Range request
        drop_cache(file);
        auto rg = client("curl -sS --max-time 120 -r 1000-40000999 -w '" + std::string(kW) + "' -o - " + url +
                         " | sha256sum");
        EXPECT_EQ(rg.status, 0) << rg.err;
        auto gr = gets(rg.err);
        EXPECT_EQ(gr.size(), 1u) << rg.err;
        if (gr.size() == 1) {
            EXPECT_EQ(gr[0].code, 206);
            EXPECT_EQ(gr[0].size, kRange);
        }
        EXPECT_EQ(rg.out.substr(0, 64), want_range) << "SHA-256 of the range";
        // one timed cold GET (a new connection)
        drop_cache(file);
        auto rt = client("curl -sS --max-time 120 -w '" + std::string(kW) + "' -o - " + url + " | sha256sum");
        auto gt = gets(rt.err);
        EXPECT_EQ(rt.out.substr(0, 64), want) << "SHA-256 of the timed GET";
        *secs = gt.size() == 1 ? gt[0].secs : -1;
        const auto [b1, o1] = engine_f2s();
        const std::string log = server_log(key);
        EXPECT_EQ(stop_server(key), 0) << log;
        std::ifstream errlog(tmp_ + "/" + key + ".err");
        std::printf("[ %s ] lighttpd's error log:\n%s", key.c_str(),
                    std::string(std::istreambuf_iterator<char>(errlog), {}).c_str());
        std::error_code ec;
        fs::remove(file, ec);
        return {b1 - b0, o1 - o0};
    }
};

TEST_F(LighttpdLab, VPipeEnabled_Get64MiB_KeepAlive_Range_MovedByDom0) {
    double secs = 0;
    const auto [bytes, ops] = serve_and_check(true, &secs);
    const uint64_t bodies = 3 * kSize + kRange;
    // every body is one file chunk above the threshold: one hand-over each, all of it by dom0
    EXPECT_GE(bytes, bodies) << "engine file_to_socket grew by " << bytes << " of " << bodies << " body bytes";
    EXPECT_LE(bytes, bodies);
    EXPECT_EQ(ops, 4u) << "one hand-over per response";
    std::printf("[ lighttpd server.vpipe=enable ] engine file_to_socket +%llu B in %llu ops (bodies %llu B); one cold "
                "64 MiB GET %.3f s (one measurement, not a benchmark)\n",
                static_cast<unsigned long long>(bytes), static_cast<unsigned long long>(ops),
                static_cast<unsigned long long>(bodies), secs);
}

TEST_F(LighttpdLab, VPipeDisabled_SameRequests_EngineUntouched) {
    double secs = 0;
    const auto [bytes, ops] = serve_and_check(false, &secs);
    EXPECT_EQ(bytes, 0u);
    EXPECT_EQ(ops, 0u);
    std::printf("[ lighttpd server.vpipe=disable ] engine file_to_socket +%llu B in %llu ops; one cold 64 MiB GET "
                "%.3f s (one measurement, not a benchmark)\n",
                static_cast<unsigned long long>(bytes), static_cast<unsigned long long>(ops), secs);
}

}  // namespace
