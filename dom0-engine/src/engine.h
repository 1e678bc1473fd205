// The engine: the VMs it serves, the shared buffer pool, one ring service per VM, and the
// control socket vpipectl talks to.
#pragma once

#include <memory>
#include <vector>

#include <nlohmann/json.hpp>

#include "config.h"
#include "control.h"
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

private:
    EngineConfig cfg_;
    std::unique_ptr<PagePool> pool_;
    std::unique_ptr<SocketEngine> sockets_;  // shadow sockets + steering (nullptr: none)
    std::vector<std::unique_ptr<Vm>> vms_;
    std::vector<std::unique_ptr<VmService>> services_;
    std::unique_ptr<ControlServer> control_;
};

}  // namespace vpipe::engine
