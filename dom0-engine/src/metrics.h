// Prometheus text-format metrics (exposition format 0.0.4) of the engine's stats, served over
// HTTP GET /metrics on a TCP address ([engine] metrics_listen). Tiny on purpose: one thread,
// one connection at a time, only GET /metrics (404 for anything else), 2 s per request.
#pragma once

#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "util/poll_thread.h"
#include "util/unique_fd.h"

namespace vpipe::engine {

// The metrics text for Engine::stats() JSON. Pure function (unit-tested).
std::string format_metrics(const nlohmann::json& stats);

class MetricsServer {
public:
    using Render = std::function<std::string()>;

    // Binds `listen` ("IPV4:PORT"); throws std::runtime_error if it cannot.
    MetricsServer(const std::string& listen, Render render);
    ~MetricsServer();
    void start();
    void stop();
    uint16_t port() const { return port_; }  // the bound port (useful with port 0)

private:
    void run();
    void serve(int conn);

    Render render_;
    UniqueFd listen_fd_;
    uint16_t port_ = 0;
    PollThread thread_;   // woken only to stop
};

}  // namespace vpipe::engine
