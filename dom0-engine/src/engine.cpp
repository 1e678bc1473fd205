#include "engine.h"

#include <spdlog/spdlog.h>

namespace vpipe::engine {

Engine::Engine(EngineConfig cfg) : cfg_(std::move(cfg)) {
    const size_t buffer_bytes = size_t{cfg_.buffer_pages} * 4096;
    pool_ = std::make_unique<PagePool>(cfg_.pool_pages / cfg_.buffer_pages, buffer_bytes);
    // Shadow sockets need the steering table in this (dom0's) network namespace; only when
    // some VM has a network identity.
    bool any_net = false;
    for (const auto& vmc : cfg_.vms) any_net |= !vmc.ip.empty() && !vmc.bridge.empty();
    if (any_net) {
        sockets_ = SocketEngine::create();
        if (!sockets_) spdlog::warn("flow steering unavailable: socket operations will be refused");
    }
    for (const auto& vmc : cfg_.vms) {
        vms_.push_back(std::make_unique<Vm>(vmc, cfg_));
        services_.push_back(std::make_unique<VmService>(*vms_.back(), *pool_, sockets_.get()));
    }
    control_ = std::make_unique<ControlServer>(cfg_.control_socket, [this](const nlohmann::json& req) {
        const std::string cmd = req.value("cmd", "");
        if (cmd == "ping") return nlohmann::json{{"ok", true}};
        if (cmd == "stats") return nlohmann::json{{"ok", true}, {"stats", stats()}};
        return nlohmann::json{{"ok", false}, {"error", "unknown command '" + cmd + "'"}};
    });
}

Engine::~Engine() { stop(); }

void Engine::start() {
    for (auto& s : services_) s->start();
    // The control socket appears last: its existence tells the lab the engine is ready.
    control_->start();
    spdlog::info("engine ready: {} VM(s), {} buffers of {} KiB", vms_.size(), pool_->capacity(),
                 cfg_.buffer_pages * 4);
}

void Engine::stop() {
    if (control_) control_->stop();
    for (auto& s : services_) s->stop();
}

nlohmann::json Engine::stats() const {
    nlohmann::json vms = nlohmann::json::array();
    for (const auto& vm : vms_) vms.push_back(vm->stats_json());
    nlohmann::json sock = {{"available", sockets_ != nullptr},
                           {"shadow_sockets", sockets_ ? sockets_->shadow_sockets.load() : 0},
                           {"steered_flows", sockets_ ? sockets_->steered_flows.load() : 0},
                           {"handovers", sockets_ ? sockets_->handovers.load() : 0}};
    return {{"vms", vms},
            {"sockets", sock},
            {"shadow_sockets", sock["shadow_sockets"]},
            {"steered_flows", sock["steered_flows"]},
            {"pool",
             {{"buffers", pool_->capacity()},
              {"buffer_bytes", size_t{cfg_.buffer_pages} * 4096},
              {"in_use", pool_->in_use()},
              {"high_water", pool_->high_water()}}}};
}

}  // namespace vpipe::engine
