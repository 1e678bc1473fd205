// Prometheus text formatting of the engine's stats, the fairness config keys, and the
// metrics endpoint itself (GET /metrics, 404 otherwise) on an ephemeral loopback port.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <map>
#include <set>
#include <sstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "config.h"
#include "metrics.h"

using namespace vpipe::engine;

namespace {

nlohmann::json sample_stats() {
    return nlohmann::json::parse(R"({
      "vms": [
        {"name": "vm1", "id": 1, "weight": 3, "requests": 5, "rejected": 1, "failed": 0, "active": 2,
         "bytes": {"file_to_file": 10, "file_to_socket": 4194304},
         "ops": {"file_to_file": 1, "file_to_socket": 2},
         "credits": {"weight": 3, "credit": -1024, "charged": 4194314, "waits": 7, "active": true}},
        {"name": "v\"m2", "id": 2, "weight": 1, "requests": 0, "rejected": 0, "failed": 0, "active": 0,
         "bytes": {"file_to_socket": 0}, "ops": {"file_to_socket": 0},
         "credits": {"weight": 1, "credit": 500, "charged": 0, "waits": 0, "active": false}}
      ],
      "fairness": {"mode": "work-conserving", "tick_ms": 10, "total_rate": 47500000,
                   "total_rate_source": "config", "disk_rate": 900000000, "disk_rate_source": "calibration",
                   "calibration": {"disk_bytes_per_second": 1000, "memory_bytes_per_second": 2000,
                                   "measured_bytes_per_second": 1000, "seconds": 0.5, "disk": "/x"}},
      "pool": {"buffers": 64, "in_use": 3, "buffer_bytes": 1048576, "high_water": 4}
    })");
}

bool has_line(const std::string& text, const std::string& line) {
    return text.find("\n" + line + "\n") != std::string::npos || text.rfind(line + "\n", 0) == 0;
}

std::string http_get(uint16_t port, const std::string& request) {
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(s, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
        close(s);
        return "connect failed";
    }
    (void)!send(s, request.data(), request.size(), MSG_NOSIGNAL);
    std::string out;
    char buf[4096];
    for (ssize_t n; (n = recv(s, buf, sizeof buf, 0)) > 0;) out.append(buf, static_cast<size_t>(n));
    close(s);
    return out;
}

// Checks text against Prometheus' text exposition format (version 0.0.4): "" when it conforms,
// else what is wrong and on which line. Every sample's family is announced by one # TYPE line
// before it, names and label names are legal, label values are quoted with \\, \" and \n the only
// escapes, values are numbers, and no series appears twice.
std::string exposition_error(const std::string& text) {
    auto legal_name = [](const std::string& n, bool colon) {
        if (n.empty() || std::isdigit(static_cast<unsigned char>(n[0]))) return false;
        for (char c : n)
            if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || (colon && c == ':'))) return false;
        return true;
    };
    static const std::set<std::string> kTypes{"counter", "gauge", "histogram", "summary", "untyped"};
    std::map<std::string, std::string> types;
    std::set<std::string> series;
    std::istringstream in(text);
    int no = 0;
    for (std::string line; std::getline(in, line);) {
        ++no;
        const std::string at = "line " + std::to_string(no) + " \"" + line + "\": ";
        if (line.empty()) return at + "empty line";
        if (line[0] == '#') {
            std::istringstream w(line);
            std::string hash, kind, name, type;
            w >> hash >> kind >> name;
            if (kind == "TYPE") {
                w >> type;
                if (!legal_name(name, true) || !kTypes.count(type)) return at + "bad TYPE";
                if (!types.emplace(name, type).second) return at + "family announced twice";
            } else if (kind == "HELP") {
                if (!legal_name(name, true)) return at + "bad HELP";
            }
            continue;
        }
        size_t i = 0;
        while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
        const std::string name = line.substr(0, i);
        if (!legal_name(name, true)) return at + "bad metric name";
        if (!types.count(name)) return at + "sample before its family's # TYPE";
        std::string labels;
        if (i < line.size() && line[i] == '{') {
            const size_t open = i++;
            for (;;) {
                size_t eq = line.find('=', i);
                if (eq == std::string::npos || !legal_name(line.substr(i, eq - i), false)) return at + "bad label name";
                if (eq + 1 >= line.size() || line[eq + 1] != '"') return at + "label value not quoted";
                size_t k = eq + 2;
                for (; k < line.size() && line[k] != '"'; ++k)
                    if (line[k] == '\\') {
                        if (k + 1 >= line.size() || std::string("\\\"n").find(line[k + 1]) == std::string::npos)
                            return at + "bad escape in a label value";
                        ++k;
                    }
                if (k >= line.size()) return at + "unterminated label value";
                i = k + 1;
                if (i < line.size() && line[i] == ',') { ++i; continue; }
                if (i < line.size() && line[i] == '}') { ++i; break; }
                return at + "bad label list";
            }
            labels = line.substr(open, i - open);
        }
        if (i >= line.size() || line[i] != ' ') return at + "no value";
        const std::string value = line.substr(i + 1);
        char* end = nullptr;
        std::strtod(value.c_str(), &end);
        if (value.empty() || *end != '\0') return at + "value is not a number";
        if (!series.insert(name + labels).second) return at + "series appears twice";
    }
    if (!text.empty() && text.back() != '\n') return "the text does not end with a newline";
    return "";
}

}  // namespace

TEST(Metrics, FormatsPerVmAndEngineNumbers) {
    const std::string m = format_metrics(sample_stats());
    EXPECT_TRUE(has_line(m, "# TYPE vpipe_vm_bytes_total counter")) << m;
    EXPECT_TRUE(has_line(m, "vpipe_vm_bytes_total{vm=\"vm1\",op=\"file_to_socket\"} 4194304")) << m;
    EXPECT_TRUE(has_line(m, "vpipe_vm_bytes_total{vm=\"v\\\"m2\",op=\"file_to_socket\"} 0")) << m;
    EXPECT_TRUE(has_line(m, "vpipe_vm_weight{vm=\"vm1\"} 3")) << m;
    EXPECT_TRUE(has_line(m, "vpipe_vm_credit_bytes{vm=\"vm1\"} -1024")) << m;
    EXPECT_TRUE(has_line(m, "vpipe_vm_credit_bytes{vm=\"v\\\"m2\"} 500")) << m;
    EXPECT_TRUE(has_line(m, "vpipe_vm_charged_bytes_total{vm=\"vm1\"} 4194314")) << m;
    EXPECT_TRUE(has_line(m, "vpipe_vm_credit_waits_total{vm=\"vm1\"} 7")) << m;
    EXPECT_TRUE(has_line(m, "vpipe_vm_credit_active{vm=\"vm1\"} 1")) << m;
    EXPECT_TRUE(has_line(m, "vpipe_vm_active_operations{vm=\"vm1\"} 2")) << m;
    EXPECT_TRUE(has_line(m, "vpipe_engine_total_rate_bytes_per_second 47500000")) << m;
    EXPECT_TRUE(has_line(m, "vpipe_engine_disk_rate_bytes_per_second 900000000")) << m;
    EXPECT_TRUE(has_line(m, "vpipe_engine_calibrated_rate_bytes_per_second{path=\"memory\"} 2000")) << m;
    EXPECT_TRUE(has_line(m, "vpipe_engine_tick_seconds 0.01")) << m;
    EXPECT_TRUE(has_line(m, "vpipe_engine_fairness_strict 0")) << m;
    EXPECT_TRUE(has_line(m, "vpipe_engine_pool_buffers_in_use 3")) << m;
    // every sample line belongs to a family announced before it, and the rest of the format
    EXPECT_EQ(exposition_error(m), "") << m;
}

// The checker itself catches what it is there to catch.
TEST(Metrics, ExpositionCheckerRejectsMalformedText) {
    EXPECT_EQ(exposition_error("# TYPE a counter\na{x=\"1\"} 2\n"), "");
    EXPECT_NE(exposition_error("a 1\n"), "");                                         // no # TYPE
    EXPECT_NE(exposition_error("# TYPE a counter\na 1\na 2\n"), "");                  // twice
    EXPECT_NE(exposition_error("# TYPE a counter\na{x=1} 2\n"), "");                   // unquoted
    EXPECT_NE(exposition_error("# TYPE a counter\na{x=\"\\q\"} 2\n"), "");            // bad escape
    EXPECT_NE(exposition_error("# TYPE a counter\na two\n"), "");                      // not a number
    EXPECT_NE(exposition_error("# TYPE a counter\na 1"), "");                           // no newline
    EXPECT_NE(exposition_error("# TYPE a counter\n# TYPE a gauge\na 1\n"), "");        // announced twice
}

TEST(Metrics, EmptyStatsStillWellFormed) {
    const std::string m = format_metrics(nlohmann::json::object());
    EXPECT_TRUE(has_line(m, "vpipe_engine_total_rate_bytes_per_second 0")) << m;
    EXPECT_EQ(exposition_error(m), "") << m;
}

TEST(Metrics, ServesOnlyGetMetrics) {
    MetricsServer srv("127.0.0.1:0", [] { return std::string("vpipe_x 1\n"); });
    srv.start();
    ASSERT_NE(srv.port(), 0);
    std::string ok = http_get(srv.port(), "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_EQ(ok.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << ok;
    EXPECT_NE(ok.find("text/plain; version=0.0.4"), std::string::npos) << ok;
    EXPECT_NE(ok.find("\r\n\r\nvpipe_x 1\n"), std::string::npos) << ok;
    EXPECT_EQ(http_get(srv.port(), "GET / HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 404", 0), 0u);
    EXPECT_EQ(http_get(srv.port(), "POST /metrics HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 404", 0), 0u);
    srv.stop();
}

TEST(Metrics, BadListenAddressThrows) {
    EXPECT_THROW(MetricsServer("nonsense:1", [] { return std::string(); }), std::runtime_error);
}

TEST(FairnessConfig, DefaultsAndKeys) {
    auto d = parse_config("");
    EXPECT_EQ(d.fairness, "work-conserving");
    EXPECT_EQ(d.tick_ms, 10u);
    EXPECT_EQ(d.total_rate_mbps, 0u);
    EXPECT_EQ(d.metrics_listen, "127.0.0.1:9477");
    auto c = parse_config("[engine]\nfairness = \"strict\"\ntick_ms = 5\ntotal_rate_mbps = 380\nmetrics_listen = \"\"\n");
    EXPECT_EQ(c.fairness, "strict");
    EXPECT_EQ(c.tick_ms, 5u);
    EXPECT_EQ(c.total_rate_mbps, 380u);
    EXPECT_EQ(c.metrics_listen, "");
    EXPECT_THROW(parse_config("[engine]\nfairness = \"fair\"\n"), std::runtime_error);
    EXPECT_THROW(parse_config("[engine]\ntick_ms = 0\n"), std::runtime_error);
    EXPECT_THROW(parse_config("[engine]\nmetrics_listen = \"9477\"\n"), std::runtime_error);
    EXPECT_THROW(parse_config("[engine]\nmetrics_listen = \"127.0.0.1:99999\"\n"), std::runtime_error);
}
