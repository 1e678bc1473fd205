// Prometheus text formatting of the engine's stats, the fairness config keys, and the
// metrics endpoint itself (GET /metrics, 404 otherwise) on an ephemeral loopback port.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

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
    // every sample line belongs to a family announced before it
    EXPECT_EQ(m.back(), '\n');
}

TEST(Metrics, EmptyStatsStillWellFormed) {
    const std::string m = format_metrics(nlohmann::json::object());
    EXPECT_TRUE(has_line(m, "vpipe_engine_total_rate_bytes_per_second 0")) << m;
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
