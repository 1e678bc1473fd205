// The engine: the VMs it serves, the shared buffer pool, one ring service per VM, and the
// control socket vpipectl talks to.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
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

    // VMs that appear at run time (the Xen backend). add_vm opens the VM's disks, registers it
    // with the credit scheduler and starts its service, which has no channel socket when
    // cfg.channel is empty: attach() one to it. nullptr (and *error) when the VM cannot be
    // served (an image that does not open, a duplicate id or name). Thread-safe.
    VmService* add_vm(const VmConfig& cfg, std::string* error);
    // Stops the VM's service (its channel is dropped) and forgets the VM. Operations waiting on
    // a socket are cancelled (-ECANCELED: shadows handed back, steering entries removed); the
    // rest (file copies) finish on a background thread, responses dropped; then its disks close.
    // false when there is no such VM. With `released` given it waits (at most `wait`) for that
    // background thread, and says whether the VM's workers ended and its disks closed in time
    // (the lab's `remove-vm`: the images are detached after the engine let go of them).
    bool remove_vm(uint32_t id, bool* released = nullptr,
                   std::chrono::milliseconds wait = std::chrono::milliseconds(0));
    // Extra sections of stats() (e.g. "xen"), computed on demand. Set before start().
    void add_stats_section(std::string key, std::function<nlohmann::json()> fn);
    ShadowSockets* sockets() const { return sockets_.get(); }
    const PeerPolicy& peer_policy() const { return policy_; }

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
    std::unique_ptr<CreditScheduler> credits_;       // operations with a socket endpoint
    std::unique_ptr<CreditScheduler> disk_credits_;  // file -> file (never on the network)
    std::string disk_rate_source_;                   // "calibration" or "config"
    std::thread ticker_;
    std::mutex ticker_mu_;
    std::condition_variable ticker_cv_;
    bool ticker_stop_ = false;
    std::unique_ptr<PagePool> pool_;
    std::unique_ptr<ShadowSockets> sockets_;  // shadow sockets + steering (nullptr: none)
    PeerPolicy policy_;                       // who shadow sockets may talk to (all VMs)
    mutable std::mutex vms_mu_;          // vms_ and services_ (VMs come and go at run time)
    std::vector<std::unique_ptr<Vm>> vms_;
    std::vector<std::unique_ptr<VmService>> services_;
    struct Retiring {
        std::thread thread;
        std::shared_ptr<std::atomic<bool>> done;
    };
    std::vector<Retiring> retiring_;     // removed VMs whose workers are finishing (reaped later)
    std::condition_variable retired_cv_; // (with vms_mu_) a Retiring's done turned true
    std::vector<std::pair<std::string, std::function<nlohmann::json()>>> sections_;
    bool started_ = false;
    std::unique_ptr<ControlServer> control_;
    std::unique_ptr<MetricsServer> metrics_;
    bool stopped_ = false;
};

}  // namespace vpipe::engine
