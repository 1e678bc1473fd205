// Lab tests of vpipe-httpd and vpipe-proxy: the lab (2 VMs, 2 GiB disks, engine and agents) is
// brought up for the suite, servers run inside the VMs (`vpipe-lab exec`), curl runs on the
// client host (`vpipe-lab client`), and every transfer is checked byte for byte (SHA-256) with
// exact status codes and sizes.
//
// Needs root; skips otherwise. The lab is shared with other people's tests: when one is up, the
// suite waits (up to 10 minutes) instead of touching it, and it only ever takes down the lab it
// brought up itself. Test names end in the mode (e.g. HttpdGet_vpipe); the 512 MiB case is
// AppsLab.Large_Get512MiB_vpipe (filter it out with --gtest_filter=-*Large* or ctest -E Large).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
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

#include "support/lab_fixture.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace std::chrono_literals;

using namespace vpipe::labtest;

// The outcome of one curl transfer: -w fields (written to stderr with %{stderr}) and the SHA-256
// of the body (piped into sha256sum, so nothing large touches the disk).
struct Curl {
    int rc = -1;        // curl's exit code
    int code = 0;       // HTTP status
    uint64_t size = 0;  // body bytes received
    int connects = -1;
    double seconds = 0, speed = 0;
    std::string sha, err;
};

const char* kCurlW = "%{stderr}W code=%{http_code} size=%{size_download} conn=%{num_connects} "
                     "time=%{time_total} speed=%{speed_download} rc=%{exitcode}\\n";

Curl parse_curl(const Res& r) {
    Curl c;
    c.err = r.err;
    c.sha = r.out.substr(0, 64);
    std::istringstream in(r.err);
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("W ", 0) != 0) continue;
        std::sscanf(line.c_str(), "W code=%d size=%lu conn=%d time=%lf speed=%lf rc=%d", &c.code, &c.size,
                    &c.connects, &c.seconds, &c.speed, &c.rc);
    }
    return c;
}

// GET (or whatever `opts` say) of url from the client; the body is hashed.
Curl curl_sha(const std::string& url, const std::string& opts = "") {
    return parse_curl(client("curl -sS --connect-timeout 5 --max-time 300 " + opts + " -w '" + kCurlW + "' '" + url +
                             "' | sha256sum"));
}

// A transfer whose body goes to a file and whose response head goes to another.
struct CurlFile {
    Curl c;
    std::string body, head;
};

CurlFile curl_file(const std::string& tmp, const std::string& url, const std::string& opts = "") {
    std::string b = tmp + "/body", h = tmp + "/head";
    fs::remove(b);
    fs::remove(h);
    CurlFile f;
    f.c = parse_curl(client("curl -sS --connect-timeout 5 --max-time 120 " + opts + " -o " + b + " -D " + h + " -w '" +
                            kCurlW + "' '" + url + "'"));
    f.body = slurp(b);
    f.head = slurp(h);
    return f;
}

// Value of a header in a dumped response head ("" if absent); the last response's if several.
std::string header_value(const std::string& head, const std::string& name) {
    std::string v;
    std::istringstream in(head);
    std::string line;
    while (std::getline(in, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.size() > name.size() && strncasecmp(line.c_str(), name.c_str(), name.size()) == 0 &&
            line[name.size()] == ':') {
            v = line.substr(name.size() + 1);
            while (!v.empty() && v[0] == ' ') v.erase(0, 1);
        }
    }
    return v;
}

// ---------------------------------------------------------------------------------------------

class AppsLab : public LabFixture {
protected:
    static inline std::map<std::string, std::string> sha_;  // path -> SHA-256

    static void SetUpTestSuite() {
        bring_up({.up = {"--vms", "2", "--disk-mib", "2048"},
                  .binaries = {"vpipe-httpd", "vpipe-proxy"},
                  .tools = {"curl"},
                  .name = "apps-test"});
    }

    static void TearDownTestSuite() {
        sha_.clear();
        LabFixture::TearDownTestSuite();
    }

    static int httpd_port(const std::string& mode) { return mode == "rw" ? 8081 : mode == "sendfile" ? 8082 : 8083; }

    // The httpd of `mode` in VM `vm` (1 or 2), started on first use. Its URL base.
    std::string httpd(const std::string& mode, int vm = 1) {
        std::string key = "httpd-" + mode + "-vm" + std::to_string(vm);
        int port = httpd_port(mode);
        if (!has_server(key))
            start_server(key, "vm" + std::to_string(vm),
                         {kHttpd, "--mode", mode, "--port", std::to_string(port), "--root", mount(vm)});
        return "http://" + std::string(vm == 1 ? kVm1Ip : kVm2Ip) + ":" + std::to_string(port);
    }

    // A file of `size` pseudo-random bytes in VM vm's disk (created once). Its host path.
    std::string file(int vm, const std::string& name, uint64_t size) {
        std::string path = mount(vm) + "/" + name;
        struct stat st {};
        if (stat(path.c_str(), &st) == 0 && static_cast<uint64_t>(st.st_size) == size) return path;
        EXPECT_EQ(write_pattern_file(path, std::hash<std::string>{}(name) ^ size, size), "");
        sha_.erase(path);
        return path;
    }
    std::string sha(const std::string& path) {
        if (!sha_.count(path)) sha_[path] = sha256_of(path);
        return sha_[path];
    }

    // Lines of a server log that mention `needle`.
    static std::vector<std::string> log_lines(const std::string& log, const std::string& needle) {
        std::vector<std::string> out;
        std::istringstream in(log);
        std::string line;
        while (std::getline(in, line))
            if (line.find(needle) != std::string::npos) out.push_back(line);
        return out;
    }

    // "offloaded" / "fallback(...)" from the last log line mentioning `needle`.
    static std::string vpipe_path(const std::string& log, const std::string& needle) {
        auto lines = log_lines(log, needle);
        if (lines.empty()) return "?";
        auto pos = lines.back().find("vpipe=");
        if (pos == std::string::npos) return "-";
        auto end = lines.back().find(" ms=", pos);
        return lines.back().substr(pos + 6, end == std::string::npos ? std::string::npos : end - pos - 6);
    }

    // The engine's counters of VM `vm` for `op` (file_to_socket, socket_to_file, ...): requests
    // done and bytes moved.
    struct OpCount {
        uint64_t ops = 0, bytes = 0;
    };
    static OpCount engine_op(int vm, const std::string& op) {
        const json st = engine_stats();
        OpCount c;
        if (!st.contains("vms")) return c;
        for (const auto& v : st["vms"])
            if (v.value("name", "") == "vm" + std::to_string(vm)) {
                c.ops = v["ops"].value(op, uint64_t{0});
                c.bytes = v["bytes"].value(op, uint64_t{0});
            }
        return c;
    }

    // Takes a file out of the page cache, so that libvpipe's cache rule (a range the guest holds
    // in its page cache is sent by the guest) does not apply: the next GET of it must be offloaded.
    static void drop_cache(const std::string& path) {
        int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        ASSERT_GE(fd, 0) << path;
        ::fsync(fd);
        EXPECT_EQ(::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
        ::close(fd);
    }

    // vpipe mode: `transfer` (which moves `bytes` body bytes of `op` in VM `vm` with `requests`
    // calls of the server) was done by the engine: the server's log line(s) for `needle` say
    // "vpipe=offloaded", and the engine's counters grew by exactly those bytes. The server logs
    // after the transfer; the engine counts an operation when it answers its ring request.
    template <class F>
    void expect_engine_moved(const std::string& server, int vm, const std::string& op, const std::string& needle,
                             uint64_t bytes, size_t requests, F&& transfer) {
        const size_t lines0 = log_lines(server_log(server), needle).size();
        const OpCount c0 = engine_op(vm, op);
        transfer();
        // The client can hold every byte before the engine has answered the ring request (it
        // counts the operation then, after the hand-back): wait for the count, with a deadline.
        OpCount c1 = engine_op(vm, op);
        for (auto deadline = std::chrono::steady_clock::now() + 10s;
             (c1.ops - c0.ops < requests || c1.bytes - c0.bytes < bytes) && std::chrono::steady_clock::now() < deadline;
             c1 = engine_op(vm, op))
            std::this_thread::sleep_for(20ms);  // polling the engine's counters
        EXPECT_EQ(c1.bytes - c0.bytes, bytes) << "engine's " << op << " bytes of vm" << vm;
        EXPECT_GE(c1.ops - c0.ops, requests) << "engine's " << op << " requests of vm" << vm;
        std::vector<std::string> lines;
        for (auto deadline = std::chrono::steady_clock::now() + 10s;;) {
            lines = log_lines(server_log(server), needle);
            if (lines.size() >= lines0 + requests || std::chrono::steady_clock::now() > deadline) break;
            std::this_thread::sleep_for(20ms);  // polling the log file for the line, with a deadline
        }
        ASSERT_EQ(lines.size(), lines0 + requests) << server_log(server);
        for (size_t i = lines0; i < lines.size(); ++i)
            EXPECT_NE(lines[i].find(" vpipe=offloaded "), std::string::npos) << lines[i];
    }

    // ---- the checks, one function per test, run for each mode

    void HttpdGet(const std::string& mode) {
        std::string base = httpd(mode);
        struct Case {
            std::string name;
            uint64_t size;
        };
        for (const Case& c : std::vector<Case>{{"z0", 0}, {"b1", 1}, {"m1", kMiB + 1}, {"m64", 64 * kMiB}}) {
            SCOPED_TRACE(c.name);
            std::string path = file(1, c.name, c.size);
            Curl r = curl_sha(base + "/" + c.name);
            EXPECT_EQ(r.rc, 0) << r.err;
            EXPECT_EQ(r.code, 200) << r.err;
            EXPECT_EQ(r.size, c.size);
            EXPECT_EQ(r.sha, sha(path));
            if (c.name == "m64")
                std::printf("[ THROUGHPUT ] vpipe-httpd --mode %s: 64 MiB GET piped into sha256sum in %.3f s = %.1f MiB/s\n",
                            mode.c_str(), r.seconds, r.speed / kMiB);
        }
        // throughput without the hashing on the client: the median of 3 GETs to /dev/null
        {
            std::vector<double> speeds;
            for (int i = 0; i < 3; ++i) {
                Curl t = parse_curl(client("curl -sS --max-time 120 -o /dev/null -w '" + std::string(kCurlW) + "' " +
                                           base + "/m64"));
                EXPECT_EQ(t.code, 200);
                EXPECT_EQ(t.size, 64 * kMiB);
                speeds.push_back(t.speed / kMiB);
            }
            std::sort(speeds.begin(), speeds.end());
            std::string vp = mode == "vpipe" ? vpipe_path(server_log("httpd-" + mode + "-vm1"), "GET /m64 ") : "-";
            std::printf("[ THROUGHPUT ] vpipe-httpd --mode %s: 64 MiB GET to /dev/null: median %.1f MiB/s "
                        "(%.1f / %.1f / %.1f)%s\n",
                        mode.c_str(), speeds[1], speeds[0], speeds[1], speeds[2],
                        mode == "vpipe" ? (" vpipe=" + vp).c_str() : "");
            RecordProperty("get64_mib_per_s", std::to_string(speeds[1]));
        }
        // HEAD: the head of a GET (curl -I writes the head as the output); no body follows
        CurlFile h = curl_file(tmp_, base + "/m1", "-I");
        EXPECT_EQ(h.c.code, 200);
        EXPECT_EQ(header_value(h.head, "Content-Length"), std::to_string(kMiB + 1));
        auto raw = client("printf 'HEAD /m1 HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n' | socat -t 5 - TCP:" +
                          kVm1Ip + ":" + std::to_string(httpd_port(mode)));
        EXPECT_EQ(raw.out.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << raw.out;
        EXPECT_EQ(raw.out.size() - raw.out.find("\r\n\r\n"), 4u) << "HEAD sent a body: " << raw.out;
        // the log has one line per request with the mode (and the vPipe outcome)
        std::string log = server_log("httpd-" + mode + "-vm1");
        auto lines = log_lines(log, "\"GET /m64 HTTP/1.1\" 200 bytes=67108864 mode=" + mode);
        EXPECT_EQ(lines.size(), 4u) << log;
        if (mode == "vpipe") {
            ASSERT_FALSE(lines.empty());
            EXPECT_TRUE(lines[0].find("vpipe=offloaded") != std::string::npos ||
                        lines[0].find("vpipe=fallback(") != std::string::npos ||
                        lines[0].find("vpipe=mixed(") != std::string::npos)
                << lines[0];
            auto z = log_lines(log, "\"GET /z0 HTTP/1.1\" 200 bytes=0 mode=vpipe vpipe=-");
            EXPECT_EQ(z.size(), 1u) << log;
            // out of the page cache, the 64 MiB and the 1 MiB + 1 GETs are the engine's work
            for (const Case& c : std::vector<Case>{{"m64", 64 * kMiB}, {"m1", kMiB + 1}}) {
                SCOPED_TRACE(c.name + " offloaded");
                const std::string path = file(1, c.name, c.size);
                const std::string want = sha(path);
                drop_cache(path);
                expect_engine_moved("httpd-vpipe-vm1", 1, "file_to_socket", "\"GET /" + c.name + " HTTP/1.1\" 200",
                                    c.size, 1, [&] {
                                        Curl r = curl_sha(base + "/" + c.name);
                                        EXPECT_EQ(r.code, 200) << r.err;
                                        EXPECT_EQ(r.size, c.size);
                                        EXPECT_EQ(r.sha, want);
                                    });
            }
        }
    }

    void HttpdRanges(const std::string& mode) {
        std::string base = httpd(mode);
        std::string path = file(1, "m1", kMiB + 1);
        std::string data = slurp(path);
        ASSERT_EQ(data.size(), kMiB + 1);
        struct Case {
            std::string range;
            uint64_t start, len;
        };
        for (const Case& c : std::vector<Case>{{"0-0", 0, 1},
                                                {"1000-1999", 1000, 1000},
                                                {"524288-", 524288, kMiB + 1 - 524288},
                                                {"-100", kMiB + 1 - 100, 100},
                                                {"1048570-99999999", 1048570, 7}}) {
            SCOPED_TRACE(c.range);
            CurlFile f = curl_file(tmp_, base + "/m1", "-H 'Range: bytes=" + c.range + "'");
            EXPECT_EQ(f.c.code, 206) << f.c.err;
            EXPECT_EQ(f.c.size, c.len);
            EXPECT_EQ(header_value(f.head, "Content-Range"),
                      "bytes " + std::to_string(c.start) + "-" + std::to_string(c.start + c.len - 1) + "/" +
                          std::to_string(kMiB + 1));
            EXPECT_EQ(header_value(f.head, "Content-Length"), std::to_string(c.len));
            EXPECT_TRUE(f.body == data.substr(c.start, c.len)) << "body differs";
        }
        // a range in the middle of the 64 MiB file, hashed against the same bytes on disk
        std::string big = file(1, "m64", 64 * kMiB);
        auto want = run({"bash", "-c", "tail -c +10000001 " + big + " | head -c 20000001 | sha256sum"});
        auto get_mid = [&] {
            Curl m = curl_sha(base + "/m64", "-r 10000000-30000000");
            EXPECT_EQ(m.code, 206);
            EXPECT_EQ(m.size, 20000001u);
            EXPECT_EQ(m.sha, want.out.substr(0, 64));
        };
        if (mode == "vpipe") {
            drop_cache(big);  // (else the cache rule has the guest send it)
            expect_engine_moved("httpd-vpipe-vm1", 1, "file_to_socket", "\"GET /m64 HTTP/1.1\" 206", 20000001u, 1,
                                get_mid);
        } else {
            get_mid();
        }
        // unsatisfiable: past the end, and any range of an empty file
        CurlFile u = curl_file(tmp_, base + "/m1", "-H 'Range: bytes=1048577-'");
        EXPECT_EQ(u.c.code, 416);
        EXPECT_EQ(header_value(u.head, "Content-Range"), "bytes */1048577");
        file(1, "z0", 0);
        CurlFile u0 = curl_file(tmp_, base + "/z0", "-H 'Range: bytes=-1'");
        EXPECT_EQ(u0.c.code, 416);
        // multiple ranges and malformed ranges are ignored: the whole file, byte for byte (a
        // multipart answer or the first range alone would have other bytes, maybe the same size)
        for (std::string r : {"0-1,5-6", "bytes=x-y", "5-3"}) {
            CurlFile w = curl_file(tmp_, base + "/m1", "-H 'Range: bytes=" + r + "'");
            EXPECT_EQ(w.c.code, 200) << r;
            EXPECT_EQ(w.c.size, kMiB + 1) << r;
            EXPECT_EQ(header_value(w.head, "Content-Range"), "") << r;
            EXPECT_EQ(w.body.size(), data.size()) << r;
            EXPECT_TRUE(w.body == data) << r << ": body differs from the file";
        }
    }

    void HttpdKeepAlive(const std::string& mode) {
        std::string base = httpd(mode);
        std::string b1 = file(1, "b1", 1), m1 = file(1, "m1", kMiB + 1);
        file(1, "z0", 0);
        // three requests, one connection; in vpipe mode the middle one (above the threshold, out
        // of the guest's page cache) is the engine's work, and the connection it hands back
        // carries the third request
        auto three = [&] {
            auto r = client("curl -sS --max-time 60 -o " + tmp_ + "/k1 -o " + tmp_ + "/k2 -o " + tmp_ +
                            "/k3 -w '%{http_code} %{num_connects} %{size_download}\\n' " + base + "/b1 " + base +
                            "/m1 " + base + "/b1");
            EXPECT_EQ(r.status, 0) << r.err;
            EXPECT_EQ(r.out, "200 1 1\n200 0 1048577\n200 0 1\n");
            EXPECT_EQ(slurp(tmp_ + "/k1"), slurp(b1));
            EXPECT_TRUE(slurp(tmp_ + "/k2") == slurp(m1));
            EXPECT_EQ(slurp(tmp_ + "/k3"), slurp(b1));
        };
        if (mode == "vpipe") {
            drop_cache(m1);
            expect_engine_moved("httpd-vpipe-vm1", 1, "file_to_socket", "\"GET /m1 HTTP/1.1\" 200", kMiB + 1, 1,
                                three);
        } else {
            three();
        }
        // the server saw the three on one connection (same peer address and port)
        auto lines = log_lines(server_log("httpd-" + mode + "-vm1"), "\"GET /");
        ASSERT_GE(lines.size(), 3u);
        auto peer = [](const std::string& l) { return l.substr(l.find(' ') + 1, l.find(" \"") - l.find(' ') - 1); };
        size_t n = lines.size();
        EXPECT_EQ(peer(lines[n - 1]), peer(lines[n - 3]));
        EXPECT_EQ(peer(lines[n - 2]), peer(lines[n - 3]));
        // Connection: close is honoured: a new connection for each request
        auto c = client("curl -sS --max-time 60 -H 'Connection: close' -o /dev/null -o /dev/null "
                        "-w '%{http_code} %{num_connects}\\n' " + base + "/b1 " + base + "/b1");
        EXPECT_EQ(c.out, "200 1\n200 1\n") << c.err;
        // HTTP/1.0 closes by default
        CurlFile h10 = curl_file(tmp_, base + "/b1", "-0");
        EXPECT_EQ(h10.c.code, 200);
        EXPECT_EQ(header_value(h10.head, "Connection"), "close");
        // pipelined requests on one connection are answered in order
        auto p = client("printf 'GET /z0 HTTP/1.1\\r\\nHost: x\\r\\n\\r\\nHEAD /m1 HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n"
                        "GET /nope HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n' | "
                        "socat -t 5 - TCP:" + kVm1Ip + ":" + std::to_string(httpd_port(mode)) +
                        " | grep -a '^HTTP/1.1'");
        EXPECT_EQ(p.out, "HTTP/1.1 200 OK\r\nHTTP/1.1 200 OK\r\nHTTP/1.1 404 Not Found\r\n") << p.err;
    }

    void HttpdPut(const std::string& mode) {
        std::string base = httpd(mode);
        struct Case {
            std::string src;
            uint64_t size;
        };
        for (const Case& c : std::vector<Case>{{"z0", 0}, {"b1", 1}, {"m1", kMiB + 1}, {"m64", 64 * kMiB}}) {
            SCOPED_TRACE(c.src);
            std::string src = file(1, c.src, c.size);
            std::string name = "up-" + mode + "-" + c.src;
            std::string dst = mount(1) + "/" + name;
            fs::remove(dst);
            auto put = [&] {
                return parse_curl(client("curl -sS --max-time 300 -T " + src + " -w '" + kCurlW + "' " + base + "/" +
                                         name + " | sha256sum"));
            };
            const OpCount w0 = engine_op(1, "socket_to_file");
            Curl r = put();
            EXPECT_EQ(r.rc, 0) << r.err;
            EXPECT_EQ(r.code, 201) << r.err;
            if (mode == "vpipe" && c.size == 64 * kMiB) {
                // the engine wrote the body into the file, all but what arrived with the head
                // (pwrite()n by the server; at most its head buffer)
                const OpCount w1 = engine_op(1, "socket_to_file");
                std::printf("[ PUT 64 MiB ] engine socket_to_file of vm1: +%lu requests, +%lu bytes\n",
                            (unsigned long)(w1.ops - w0.ops), (unsigned long)(w1.bytes - w0.bytes));
                EXPECT_GE(w1.ops - w0.ops, 1u);
                EXPECT_LE(w1.bytes - w0.bytes, c.size);
                EXPECT_GE(w1.bytes - w0.bytes, c.size - 64 * 1024);
            }
            ASSERT_TRUE(fs::exists(dst));
            EXPECT_EQ(fs::file_size(dst), c.size);
            EXPECT_EQ(sha256_of(dst), sha(src));
            // again: the existing file is replaced
            Curl again = put();
            EXPECT_EQ(again.code, 204) << again.err;
            EXPECT_EQ(fs::file_size(dst), c.size);
            EXPECT_EQ(sha256_of(dst), sha(src));
            auto lines = log_lines(server_log("httpd-" + mode + "-vm1"),
                                   "\"PUT /" + name + " HTTP/1.1\" 201 bytes=" + std::to_string(c.size) + " mode=" + mode);
            EXPECT_EQ(lines.size(), 1u);
            if (c.src == "m64" && !lines.empty()) std::printf("[ PUT 64 MiB ] %s\n", lines[0].c_str());
            if (mode == "vpipe" && c.src == "m64" && !lines.empty()) {
                EXPECT_NE(lines[0].find(" vpipe=offloaded "), std::string::npos) << lines[0];
            }
            fs::remove(dst);
        }
        // a shorter body replaces a longer file completely: the file is the body, nothing of the
        // old content before or after it (a size check alone would pass with the old first byte)
        std::string dst = mount(1) + "/up-" + mode + "-shrink";
        file(1, "m1", kMiB + 1);
        const std::string shortb = tmp_ + "/short-body";
        const std::string body = "vPipe short PUT body\n";
        {
            std::ofstream(shortb, std::ios::binary) << body;
        }
        Curl big = parse_curl(client("curl -sS -T " + mount(1) + "/m1 -w '" + kCurlW + "' " + base + "/up-" + mode +
                                     "-shrink | sha256sum"));
        EXPECT_EQ(big.code, 201) << big.err;
        ASSERT_EQ(slurp(dst).size(), kMiB + 1);
        ASSERT_NE(slurp(dst).substr(0, body.size()), body) << "the old content must differ from the new";
        Curl s = parse_curl(client("curl -sS -T " + shortb + " -w '" + kCurlW + "' " + base + "/up-" + mode +
                                   "-shrink | sha256sum"));
        EXPECT_EQ(s.code, 204) << s.err;
        EXPECT_EQ(fs::file_size(dst), body.size());
        EXPECT_EQ(slurp(dst), body);
        fs::remove(dst);
        // PUT can't escape the root, write a directory, or create parents
        CurlFile t = curl_file(tmp_, base + "/../up-escape", "--path-as-is -T " + mount(1) + "/b1");
        EXPECT_EQ(t.c.code, 403);
        std::error_code ec;
        fs::create_directory(mount(1) + "/putdir", ec);
        CurlFile d = curl_file(tmp_, base + "/putdir", "-T " + mount(1) + "/b1");
        EXPECT_EQ(d.c.code, 403);
        CurlFile r = curl_file(tmp_, base + "/", "-X PUT --data-binary x");  // (-T would append a file name)
        EXPECT_EQ(r.c.code, 403);
        CurlFile l = curl_file(tmp_, base + "/nolength", "-X PUT -H 'Transfer-Encoding: chunked' --data-binary x");
        EXPECT_EQ(l.c.code, 411);
        EXPECT_FALSE(fs::exists(mount(1) + "/nolength"));
        CurlFile p = curl_file(tmp_, base + "/no-such-dir/x", "-T " + mount(1) + "/b1");
        EXPECT_EQ(p.c.code, 404);
        EXPECT_FALSE(fs::exists(mount(1) + "/../up-escape"));
    }

    void HttpdErrors(const std::string& mode) {
        std::string base = httpd(mode);
        file(1, "b1", 1);
        auto code = [&](const std::string& url, const std::string& opts = "") {
            CurlFile f = curl_file(tmp_, url, opts);
            return f.c.code;
        };
        EXPECT_EQ(code(base + "/no-such-file"), 404);
        EXPECT_EQ(code(base + "/b1/below-a-file"), 404);
        // traversal: literal, percent-encoded, and through a symlink that leads out of the root
        EXPECT_EQ(code(base + "/../../../../etc/passwd", "--path-as-is"), 403);
        EXPECT_EQ(code(base + "/%2e%2e/%2e%2e/etc/passwd"), 403);
        EXPECT_EQ(code(base + "/a/..%2f..%2f..%2fetc/passwd"), 403);
        std::error_code ec;
        fs::create_directory_symlink("/etc", mount(1) + "/escape", ec);
        EXPECT_EQ(code(base + "/escape/passwd"), 403);
        fs::create_directory(mount(1) + "/adir", ec);
        EXPECT_EQ(code(base + "/adir"), 403);
        EXPECT_EQ(code(base + "/"), 403);
        EXPECT_EQ(code(base + "/b1", "-X DELETE"), 405);
        EXPECT_EQ(code(base + "/b1", "-X POST -d x"), 405);
        EXPECT_EQ(code(base + "/bad%zz"), 400);
        EXPECT_EQ(code(base + "/nul%00"), 400);
        EXPECT_EQ(code(base + "/b1", "-H 'Host:'"), 400);  // HTTP/1.1 needs Host
        // a malformed request line, and an oversized head
        auto bad = client("printf 'GARBAGE\\r\\n\\r\\n' | socat -t 5 - TCP:" + kVm1Ip + ":" +
                          std::to_string(httpd_port(mode)) + " | head -1");
        EXPECT_EQ(bad.out, "HTTP/1.1 400 Bad Request\r\n") << bad.err;
        EXPECT_EQ(code(base + "/b1", "-H 'X-Big: " + std::string(20000, 'x') + "'"), 431);
        EXPECT_EQ(code(base + "/b1", "-H 'X-Big: " + std::string(1000, 'x') + "'"), 200);
        // the server is still fine
        Curl ok = curl_sha(base + "/b1");
        EXPECT_EQ(ok.code, 200);
        EXPECT_EQ(ok.size, 1u);
    }

    // n parallel GETs of distinct 16 MiB files from each VM in `vms`
    void concurrent(const std::string& mode, const std::vector<int>& vms, int n) {
        std::string script;
        std::vector<std::pair<std::string, std::string>> expect;  // result file -> sha
        for (int vm : vms) {
            std::string base = httpd(mode, vm);
            for (int i = 0; i < n; ++i) {
                std::string name = "c16-" + std::to_string(i);
                std::string src = file(vm, name, 16 * kMiB);
                std::string res = tmp_ + "/par-vm" + std::to_string(vm) + "-" + std::to_string(i);
                script += "(curl -sS --max-time 120 -w '" + std::string(kCurlW) + "' " + base + "/" + name + " 2>" + res +
                          ".w | sha256sum > " + res + ".sha) & ";
                expect.emplace_back(res, sha(src));
            }
        }
        script += "wait";
        // vpipe mode: every GET is offloaded (the files out of the page cache), the engine moved
        // all the bytes of each VM
        std::map<int, OpCount> c0;
        std::map<int, size_t> lines0;
        if (mode == "vpipe")
            for (int vm : vms) {
                for (int i = 0; i < n; ++i) drop_cache(mount(vm) + "/c16-" + std::to_string(i));
                c0[vm] = engine_op(vm, "file_to_socket");
                lines0[vm] = log_lines(server_log("httpd-vpipe-vm" + std::to_string(vm)), "\"GET /c16-").size();
            }
        auto t0 = std::chrono::steady_clock::now();
        auto r = client(script);
        double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        EXPECT_EQ(r.status, 0) << r.err;
        if (mode == "vpipe")
            for (int vm : vms) {
                SCOPED_TRACE("vm" + std::to_string(vm));
                const OpCount c1 = engine_op(vm, "file_to_socket");
                EXPECT_EQ(c1.bytes - c0[vm].bytes, uint64_t(n) * 16 * kMiB);
                EXPECT_GE(c1.ops - c0[vm].ops, uint64_t(n));
                const std::string key = "httpd-vpipe-vm" + std::to_string(vm);
                std::vector<std::string> lines;
                for (auto deadline = std::chrono::steady_clock::now() + 10s;;) {
                    lines = log_lines(server_log(key), "\"GET /c16-");
                    if (lines.size() >= lines0[vm] + n || std::chrono::steady_clock::now() > deadline) break;
                    std::this_thread::sleep_for(20ms);  // polling the log file for the lines, with a deadline
                }
                ASSERT_EQ(lines.size(), lines0[vm] + n) << server_log(key);
                for (size_t i = lines0[vm]; i < lines.size(); ++i)
                    EXPECT_NE(lines[i].find(" vpipe=offloaded "), std::string::npos) << lines[i];
            }
        for (const auto& [res, want] : expect) {
            SCOPED_TRACE(res);
            Res fake;
            fake.out = slurp(res + ".sha");
            fake.err = slurp(res + ".w");
            Curl c = parse_curl(fake);
            EXPECT_EQ(c.rc, 0) << c.err;
            EXPECT_EQ(c.code, 200) << c.err;
            EXPECT_EQ(c.size, 16 * kMiB);
            EXPECT_EQ(c.sha, want);
        }
        std::printf("[ THROUGHPUT ] %zu parallel 16 MiB GETs, mode %s, %zu VM(s): %.2f s = %.1f MiB/s total\n",
                    expect.size(), mode.c_str(), vms.size(), secs, expect.size() * 16.0 / secs);
    }
    void HttpdConcurrentOneVm(const std::string& mode) { concurrent(mode, {1}, 4); }
    void HttpdConcurrentTwoVms(const std::string& mode) { concurrent(mode, {1, 2}, 4); }

    static int proxy_port(const std::string& mode) { return mode == "rw" ? 9001 : mode == "splice" ? 9002 : 9003; }

    // client -> proxy (vm1) -> httpd (vm2, sendfile mode, port 8080)
    void ProxyGet64MiB(const std::string& mode) {
        if (!has_server("backend"))
            start_server("backend", "vm2", {kHttpd, "--mode", "sendfile", "--port", "8080", "--root", mount(2)});
        std::string key = "proxy-" + mode;
        int port = proxy_port(mode);
        if (!has_server(key))
            start_server(key, "vm1", {kProxy, "--mode", mode, "--listen", std::to_string(port), "--to", kVm2Ip + ":8080"});
        std::string base = "http://" + kVm1Ip + ":" + std::to_string(port);
        std::string src = file(2, "m64", 64 * kMiB);
        const std::string want = sha(src);
        const OpCount p0 = engine_op(1, "socket_to_socket");
        Curl r = curl_sha(base + "/m64");
        EXPECT_EQ(r.rc, 0) << r.err;
        EXPECT_EQ(r.code, 200) << r.err;
        EXPECT_EQ(r.size, 64 * kMiB);
        EXPECT_EQ(r.sha, want);
        if (mode == "vpipe") {
            // the proxy in vm1 handed the body to the engine: it moved it socket -> socket, all
            // but what the relay read together with the response head (at most one read buffer)
            const OpCount p1 = engine_op(1, "socket_to_socket");
            std::printf("[ PROXY ] engine socket_to_socket of vm1: +%lu requests, +%lu bytes\n",
                        (unsigned long)(p1.ops - p0.ops), (unsigned long)(p1.bytes - p0.bytes));
            EXPECT_GE(p1.ops - p0.ops, 1u);
            EXPECT_LE(p1.bytes - p0.bytes, 64 * kMiB);
            EXPECT_GE(p1.bytes - p0.bytes, 64 * kMiB - 256 * 1024);
        }
        // small responses on a kept-alive connection must not wait for a full chunk
        std::string b1 = file(2, "b1", 1);
        auto k = client("curl -sS --max-time 20 -o /dev/null -o /dev/null -w '%{http_code} %{size_download}\\n' " +
                        base + "/b1 " + base + "/b1");
        EXPECT_EQ(k.out, "200 1\n200 1\n") << k.err;
        // two bodies big enough for vPipe (in vpipe mode) on one kept-alive connection
        std::string m1 = file(2, "m1", kMiB + 1);
        auto k2 = client("curl -sS --max-time 30 -o " + tmp_ + "/p1 -o " + tmp_ + "/p2 -w '%{http_code} %{size_download}\\n' " +
                         base + "/m1 " + base + "/m1");
        EXPECT_EQ(k2.out, "200 1048577\n200 1048577\n") << k2.err;
        EXPECT_TRUE(slurp(tmp_ + "/p1") == slurp(m1) && slurp(tmp_ + "/p2") == slurp(m1));
        // and the other direction: an upload through the proxy
        std::string dst = mount(2) + "/up-proxy-" + mode;
        fs::remove(dst);
        Curl u = parse_curl(client("curl -sS --max-time 60 -T " + m1 + " -w '" + kCurlW + "' " + base + "/up-proxy-" +
                                   mode + " | sha256sum"));
        EXPECT_EQ(u.code, 201) << u.err;
        EXPECT_EQ(sha256_of(dst), sha(m1));
        fs::remove(dst);
        // one log line per connection, with the byte counts; the relay logs after both
        // directions closed, so wait for the 4th line (with a deadline), not a fixed time
        std::string log;
        for (auto deadline = std::chrono::steady_clock::now() + 10s;;) {
            log = server_log(key);
            if (log_lines(log, " up=").size() >= 4 || std::chrono::steady_clock::now() > deadline) break;
            std::this_thread::sleep_for(20ms);  // polling the log for the line, with a deadline
        }
        auto all = log_lines(log, " up=");
        EXPECT_EQ(all.size(), 4u) << log;
        bool found = false;
        for (const auto& l : all)
            if (l.find(" down=6710") != std::string::npos && l.find("mode=" + mode) != std::string::npos) {
                found = true;
                if (mode == "vpipe") {
                    EXPECT_NE(l.find(" vpipe="), std::string::npos) << l;
                }
                std::printf("[ PROXY ] %s\n", l.c_str());
            }
        EXPECT_TRUE(found) << log;
        std::printf("[ THROUGHPUT ] vpipe-proxy --mode %s (backend sendfile in vm2): 64 MiB GET in %.3f s = %.1f MiB/s\n",
                    mode.c_str(), r.seconds, r.speed / kMiB);
    }
};

#define PER_HTTPD_MODE(check)                          \
    TEST_F(AppsLab, check##_rw) { check("rw"); }       \
    TEST_F(AppsLab, check##_sendfile) { check("sendfile"); } \
    TEST_F(AppsLab, check##_vpipe) { check("vpipe"); }

PER_HTTPD_MODE(HttpdGet)
PER_HTTPD_MODE(HttpdRanges)
PER_HTTPD_MODE(HttpdKeepAlive)
PER_HTTPD_MODE(HttpdPut)
PER_HTTPD_MODE(HttpdErrors)
PER_HTTPD_MODE(HttpdConcurrentOneVm)
PER_HTTPD_MODE(HttpdConcurrentTwoVms)

TEST_F(AppsLab, ProxyGet64MiB_rw) { ProxyGet64MiB("rw"); }
TEST_F(AppsLab, ProxyGet64MiB_splice) { ProxyGet64MiB("splice"); }
TEST_F(AppsLab, ProxyGet64MiB_vpipe) { ProxyGet64MiB("vpipe"); }

// The big one, vpipe mode only (filter with -*Large*).
TEST_F(AppsLab, Large_Get512MiB_vpipe) {
    std::string base = httpd("vpipe");
    std::string path = file(1, "g512", 512 * kMiB);
    const std::string want = sha(path);
    drop_cache(path);  // (else the cache rule has the guest send what it holds)
    Curl r;
    expect_engine_moved("httpd-vpipe-vm1", 1, "file_to_socket", "\"GET /g512 HTTP/1.1\" 200", 512 * kMiB, 1, [&] {
        r = curl_sha(base + "/g512");
        EXPECT_EQ(r.rc, 0) << r.err;
        EXPECT_EQ(r.code, 200) << r.err;
        EXPECT_EQ(r.size, 512 * kMiB);
        EXPECT_EQ(r.sha, want);
    });
    std::printf("[ THROUGHPUT ] vpipe-httpd --mode vpipe: 512 MiB GET in %.3f s = %.1f MiB/s (vpipe=%s)\n", r.seconds,
                r.speed / kMiB, vpipe_path(server_log("httpd-vpipe-vm1"), "GET /g512 ").c_str());
    fs::remove(path);
}

// SIGTERM stops both servers with status 0, also with a client connection open.
TEST_F(AppsLab, ServersExitZeroOnSigterm) {
    file(1, "b1", 1);
    LabServer& h = start_server("sigterm-httpd", "vm1", {kHttpd, "--mode", "vpipe", "--port", "8090", "--root", mount(1)});
    LabServer& p =
        start_server("sigterm-proxy", "vm1", {kProxy, "--mode", "vpipe", "--listen", "9090", "--to", kVm1Ip + ":8090"});
    Curl r = curl_sha("http://" + kVm1Ip + ":9090/b1");
    EXPECT_EQ(r.code, 200);
    // an idle keep-alive connection through the proxy, held open by socat for a while (the
    // `sleep 20` is the idle client under test: it keeps the connection open, doing nothing)
    const size_t gets0 = log_lines(slurp(h.log), "\"GET /b1 HTTP/1.1\" 200").size();
    pid_t idle = fork();
    if (idle == 0) {
        int devnull = open("/dev/null", O_RDWR);
        dup2(devnull, 1);
        dup2(devnull, 2);
        execl(kLab.c_str(), kLab.c_str(), "client", "--", "bash", "-c",
              ("(printf 'GET /b1 HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'; sleep 20) | socat -t 20 - TCP:" + kVm1Ip + ":9090")
                  .c_str(),
              static_cast<char*>(nullptr));
        _exit(127);
    }
    // the connection is up and idle once its request was answered: the httpd logged it
    for (auto deadline = std::chrono::steady_clock::now() + 10s;
         log_lines(slurp(h.log), "\"GET /b1 HTTP/1.1\" 200").size() < gets0 + 1;) {
        ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "the idle connection's request never came\n"
                                                              << slurp(h.log);
        std::this_thread::sleep_for(20ms);  // polling the log for the line, with a deadline
    }
    auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(stop_server(&p), 0) << slurp(p.log);
    EXPECT_EQ(stop_server(&h), 0) << slurp(h.log);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 8s);
    EXPECT_NE(slurp(h.log).find("stopping"), std::string::npos);
    EXPECT_NE(slurp(p.log).find("stopping"), std::string::npos);
    kill(idle, SIGKILL);
    waitpid(idle, nullptr, 0);
}

// ---- command lines (no lab needed)

TEST(AppsCli, ManStyleHelp) {
    for (const auto& bin : {kHttpd, kProxy}) {
        if (access(bin.c_str(), X_OK) != 0) GTEST_SKIP() << bin << " not built";
        auto r = run({bin, "--help"});
        EXPECT_EQ(r.status, 0) << bin;
        for (const char* s : {"NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "EXAMPLES", "--mode"})
            EXPECT_NE(r.out.find(s), std::string::npos) << bin << " --help lacks " << s;
    }
}

TEST(AppsCli, BadArgumentsExitNonZeroWithAMessage) {
    if (access(kHttpd.c_str(), X_OK) != 0 || access(kProxy.c_str(), X_OK) != 0) GTEST_SKIP() << "not built";
    std::vector<std::vector<std::string>> bad = {
        {kHttpd},
        {kHttpd, "--mode", "rw", "--port", "8080"},
        {kHttpd, "--mode", "splice", "--port", "8080", "--root", "/tmp"},
        {kHttpd, "--mode", "rw", "--port", "0", "--root", "/tmp"},
        {kHttpd, "--mode", "rw", "--port", "99999", "--root", "/tmp"},
        {kHttpd, "--mode", "rw", "--port", "x", "--root", "/tmp"},
        {kHttpd, "--mode", "rw", "--port", "8080", "--root", "/no/such/dir"},
        {kHttpd, "--mode", "rw", "--port", "8080", "--root", "/tmp", "--threads", "0"},
        {kHttpd, "--mode", "rw", "--port", "8080", "--root", "/tmp", "--bogus"},
        {kProxy},
        {kProxy, "--mode", "sendfile", "--listen", "9000", "--to", "127.0.0.1:80"},
        {kProxy, "--mode", "rw", "--listen", "9000"},
        {kProxy, "--mode", "rw", "--listen", "9000", "--to", "127.0.0.1"},
        {kProxy, "--mode", "rw", "--listen", "9000", "--to", "127.0.0.1:0"},
        {kProxy, "--mode", "rw", "--listen", "9000", "--to", ":80"},
        {kProxy, "--mode", "rw", "--listen", "70000", "--to", "127.0.0.1:80"},
        {kProxy, "--mode", "vpipe", "--listen", "9000", "--to", "127.0.0.1:80", "--chunk", "0"},
    };
    for (const auto& argv : bad) {
        std::string cmd;
        for (const auto& a : argv) cmd += a + " ";
        auto r = run(argv);
        EXPECT_EQ(r.status, 2) << cmd << "\n" << r.out << r.err;
        EXPECT_FALSE(r.err.empty()) << cmd;
    }
    // a port that can't be bound is a runtime failure (1), not a usage error
    auto busy = run({"bash", "-c",
                     "socat TCP-LISTEN:18089,bind=127.0.0.1,reuseaddr - </dev/null & "
                     "for i in $(seq 200); do ss -Hltn 'sport = :18089' | grep -q . && break; sleep 0.01; done; " +
                         kHttpd +
                         " --mode rw --port 18089 --bind 127.0.0.1 --root /tmp; rc=$?; kill %1; exit $rc"});
    EXPECT_EQ(busy.status, 1) << busy.err;
    EXPECT_NE(busy.err.find("cannot listen"), std::string::npos) << busy.err;
}

}  // namespace
