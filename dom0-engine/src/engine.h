// The engine: the VMs it serves, the shared buffer pool, one ring service per VM, and the
// control socket vpipectl talks to.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "config.h"
#include "calibration.h"
#include "control.h"
#include "credits.h"
#include "metrics.h"
#include "io/page_pool.h"
#include "shadow.h"
#include "vm.h"
#include "vm_service.h"

namespace vpipe::engine {

class Engine {
public:
    explicit Engine(EngineConfig cfg);  // opens images, binds sockets; throws on failure
    ~Engine();

    void start();
    void stop();

    nlohmann::json stats() const;
    const EngineConfig& config() const { return cfg_; }
    // The control socket's request handler (public for tests).
    nlohmann::json handle(const nlohmann::json& req);

private:
    void ticker();

    EngineConfig cfg_;
    Calibration calibration_;
    uint64_t total_rate_ = 0;            // bytes per second handed out by the scheduler
    std::string total_rate_source_;      // "calibration" or "config"
    // Declared before the VMs: their workers charge it until they are joined.
    std::unique_ptr<CreditScheduler> credits_;
    std::thread ticker_;
    std::mutex ticker_mu_;
    std::condition_variable ticker_cv_;
    bool ticker_stop_ = false;
    std::unique_ptr<PagePool> pool_;
    std::unique_ptr<SocketEngine> sockets_;  // shadow sockets + steering (nullptr: none)
    std::vector<std::unique_ptr<Vm>> vms_;
    std::vector<std::unique_ptr<VmService>> services_;
    std::unique_ptr<ControlServer> control_;
    std::unique_ptr<MetricsServer> metrics_;
    bool stopped_ = false;
};

}  // namespace vpipe::engine
