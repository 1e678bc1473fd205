#include "engine.h"

#include <chrono>
#include <thread>

#include <spdlog/spdlog.h>

namespace vpipe::engine {

Engine::Engine(EngineConfig cfg) : cfg_(std::move(cfg)) {
    const size_t buffer_bytes = size_t{cfg_.buffer_pages} * 4096;
    set_socket_timeout(std::chrono::milliseconds(cfg_.socket_timeout_ms));  // shadow sockets (socket_ops.h)
    pool_ = std::make_unique<PagePool>(cfg_.pool_pages / cfg_.buffer_pages, buffer_bytes);
    // Shadow sockets need the steering table in this (dom0's) network namespace; only when
    // some VM has a network identity.
    bool any_net = false;
    for (const auto& vmc : cfg_.vms) any_net |= !vmc.ip.empty() && !vmc.bridge.empty();
    // On Xen, VMs (and their vif addresses) appear later, from xenstore.
    if (any_net || cfg_.xen.enabled) {
        sockets_ = ShadowSockets::create();
        if (!sockets_) spdlog::warn("flow steering unavailable: socket operations will be refused");
    }
    for (const auto& vmc : cfg_.vms) {
        vms_.push_back(std::make_unique<Vm>(vmc, cfg_));
        services_.push_back(std::make_unique<VmService>(*vms_.back(), *pool_, sockets_.get(), &policy_));
        policy_.set_vm(vmc);
    }

    // Sharing dom0 (paper 3.4): calibrate the total rate, then one scheduler for all VMs.
    DiskImage* first = nullptr;
    if (!vms_.empty() && !vms_.front()->config().disks.empty())
        first = vms_.front()->disk(vms_.front()->config().disks.front().vdev);
    calibration_ = calibrate(first, cfg_.queue_depth);
    spdlog::info("calibration: disk {:.1f} MiB/s ({}), memory copy {:.1f} MiB/s -> {:.1f} MiB/s in {:.2f} s{}",
                 calibration_.disk_bytes_per_second / 1048576.0, calibration_.disk.empty() ? "-" : calibration_.disk,
                 calibration_.memory_bytes_per_second / 1048576.0,
                 calibration_.measured_bytes_per_second / 1048576.0, calibration_.seconds,
                 calibration_.error.empty() ? "" : " (disk: " + calibration_.error + ")");
    CreditScheduler::Options opt;
    if (cfg_.total_rate_mbps) {
        total_rate_ = cfg_.total_rate_mbps * 1'000'000 / 8;
        total_rate_source_ = "config";
        opt.early_refill = false;  // a stated capacity (e.g. the link): never run past it
    } else {
        total_rate_ = std::max<uint64_t>(calibration_.measured_bytes_per_second, 1 << 20);
        total_rate_source_ = "calibration";
    }
    opt.total_rate = total_rate_;
    opt.period = std::chrono::milliseconds(cfg_.tick_ms);
    // A busy VM pauses between ring requests (hand-over to the guest and back, draining the
    // socket): keep its share and let its credit build up for ~100 ms so it catches up after
    // the pause, instead of handing the share to the others (measured in the lab: without
    // this a weight-3 VM got 0.67 instead of 0.75 against a weight-1 VM).
    const unsigned bridge_ticks = std::max(2u, 100u / cfg_.tick_ms);
    opt.active_periods = bridge_ticks;
    opt.burst_periods = static_cast<double>(bridge_ticks);
    parse_mode(cfg_.fairness, &opt.mode);  // validated by the config parser
    credits_ = std::make_unique<CreditScheduler>(opt);
    CreditScheduler::Options dopt = opt;
    if (cfg_.disk_rate_mbps) {
        dopt.total_rate = cfg_.disk_rate_mbps * 1'000'000 / 8;
        dopt.early_refill = false;
        disk_rate_source_ = "config";
    } else {
        // the disk's own estimate (an estimate: starved demand ticks early)
        dopt.total_rate = std::max<uint64_t>(calibration_.disk_bytes_per_second ? calibration_.disk_bytes_per_second
                                                                                : calibration_.measured_bytes_per_second,
                                             1 << 20);
        dopt.early_refill = true;
        disk_rate_source_ = "calibration";
    }
    disk_credits_ = std::make_unique<CreditScheduler>(dopt);
    for (auto& vm : vms_) {
        credits_->add_vm(vm->config().id, vm->config().weight);
        disk_credits_->add_vm(vm->config().id, vm->config().weight);
        vm->set_credits(credits_.get(), disk_credits_.get());
    }
    spdlog::info("fairness: {}, tick {} ms, total rate {:.1f} MiB/s ({:.0f} Mbit/s, from {}){}; "
                 "file -> file {:.1f} MiB/s (from {})",
                 cfg_.fairness, cfg_.tick_ms, total_rate_ / 1048576.0, total_rate_ * 8 / 1e6,
                 total_rate_source_, opt.early_refill ? "" : ", no early refill",
                 dopt.total_rate / 1048576.0, disk_rate_source_);

    control_ = std::make_unique<ControlServer>(cfg_.control_socket,
                                               [this](const nlohmann::json& req) { return handle(req); });
    if (!cfg_.metrics_listen.empty()) {
        try {
            metrics_ = std::make_unique<MetricsServer>(cfg_.metrics_listen,
                                                       [this] { return format_metrics(stats()); });
        } catch (const std::exception& e) {
            // metrics are for operators; the data paths do not depend on them
            spdlog::warn("metrics endpoint off: {}", e.what());
        }
    }
}

Engine::~Engine() {
    stop();
    // Workers (inside each Vm) run tasks that call back into their VmService: join them first.
    vms_.clear();
    services_.clear();
}

VmService* Engine::add_vm(const VmConfig& vmc, std::string* error) {
    std::unique_ptr<Vm> vm;
    {
        std::lock_guard lk(vms_mu_);
        if (stopped_) {
            *error = "engine stopping";
            return nullptr;
        }
        for (const auto& v : vms_) {
            if (v->config().id == vmc.id) {
                *error = "a VM with id " + std::to_string(vmc.id) + " (" + v->name() + ") exists";
                return nullptr;
            }
            if (v->name() == vmc.name) {
                *error = "a VM named " + vmc.name + " exists (id " + std::to_string(v->config().id) + ")";
                return nullptr;
            }
        }
    }
    try {
        vm = std::make_unique<Vm>(vmc, cfg_);  // opens the images: outside the lock
    } catch (const std::exception& e) {
        *error = e.what();
        return nullptr;
    }
    auto service = std::make_unique<VmService>(*vm, *pool_, sockets_.get(), &policy_);
    credits_->add_vm(vmc.id, vmc.weight);
    disk_credits_->add_vm(vmc.id, vmc.weight);
    vm->set_credits(credits_.get(), disk_credits_.get());
    VmService* raw = service.get();
    std::lock_guard lk(vms_mu_);
    if (started_) {
        try {
            service->start();
        } catch (const std::exception& e) {
            credits_->remove_vm(vmc.id);
            disk_credits_->remove_vm(vmc.id);
            *error = e.what();
            return nullptr;
        }
    }
    vms_.push_back(std::move(vm));
    services_.push_back(std::move(service));
    policy_.set_vm(vmc);
    spdlog::info("vm {} (id {}): added, {} disk(s), address {}", vmc.name, vmc.id, vmc.disks.size(),
                 vmc.ip.empty() ? "none" : vmc.ip);
    return raw;
}

bool Engine::remove_vm(uint32_t id, bool* released, std::chrono::milliseconds wait) {
    std::unique_ptr<Vm> vm;
    std::unique_ptr<VmService> service;
    {
        std::lock_guard lk(vms_mu_);
        for (size_t i = 0; i < vms_.size(); ++i) {
            if (vms_[i]->config().id != id) continue;
            vm = std::move(vms_[i]);
            service = std::move(services_[i]);
            vms_.erase(vms_.begin() + static_cast<long>(i));
            services_.erase(services_.begin() + static_cast<long>(i));
            break;
        }
    }
    if (!vm) return false;
    policy_.remove_vm(id);
    service->stop();            // drops the channel: in-flight responses go nowhere
    vm->cancel();               // operations waiting on sockets end now (-ECANCELED)
    credits_->remove_vm(id);    // workers waiting for credit return at once
    disk_credits_->remove_vm(id);
    spdlog::info("vm {} (id {}): removed", vm->name(), id);
    // Operations already running (a socket waiting for its peer) may take a while; do not hold
    // up the caller. The Vm goes first: its workers call back into the service.
    auto done = std::make_shared<std::atomic<bool>>(false);
    std::unique_lock lk(vms_mu_);
    // Reap the ones that have finished since.
    for (auto it = retiring_.begin(); it != retiring_.end();) {
        if (it->done->load()) {
            it->thread.join();
            it = retiring_.erase(it);
        } else {
            ++it;
        }
    }
    retiring_.push_back({std::thread([this, vm = std::move(vm), service = std::move(service), done]() mutable {
                             vm.reset();
                             service.reset();
                             {
                                 std::lock_guard dl(vms_mu_);
                                 done->store(true);
                             }
                             retired_cv_.notify_all();
                         }),
                         done});
    if (released) *released = retired_cv_.wait_for(lk, wait, [&] { return done->load(); });
    return true;
}

void Engine::add_stats_section(std::string key, std::function<nlohmann::json()> fn) {
    sections_.emplace_back(std::move(key), std::move(fn));
}

nlohmann::json Engine::handle(const nlohmann::json& req) {
    const std::string cmd = req.value("cmd", "");
    if (cmd == "ping") return nlohmann::json{{"ok", true}};
    if (cmd == "stats") return nlohmann::json{{"ok", true}, {"stats", stats()}};
    if (cmd == "calibration") {
        return nlohmann::json{{"ok", true},
                              {"calibration", calibration_.to_json()},
                              {"total_rate", total_rate_},
                              {"total_rate_source", total_rate_source_},
                              {"disk_rate", disk_credits_->options().total_rate},
                              {"disk_rate_source", disk_rate_source_}};
    }
    if (cmd == "set-weight") {
        const auto vm_it = req.find("vm");
        const auto w_it = req.find("weight");
        if (vm_it == req.end() || w_it == req.end() || !w_it->is_number_integer())
            return nlohmann::json{{"ok", false}, {"error", "set-weight needs \"vm\" (name or id) and an integer \"weight\""}};
        const int64_t w = w_it->get<int64_t>();
        if (w < 1 || w > kMaxWeight)
            return nlohmann::json{{"ok", false}, {"error", "weight must be 1.." + std::to_string(kMaxWeight)}};
        std::lock_guard lk(vms_mu_);
        for (auto& vm : vms_) {
            const bool match = vm_it->is_string() ? vm->name() == vm_it->get<std::string>()
                               : vm_it->is_number_integer() && vm_it->get<int64_t>() == vm->config().id;
            if (!match) continue;
            uint32_t old = 0;
            for (const auto& s : credits_->snapshot())
                if (s.id == vm->config().id) old = s.weight;
            credits_->set_weight(vm->config().id, static_cast<uint32_t>(w));
            disk_credits_->set_weight(vm->config().id, static_cast<uint32_t>(w));
            spdlog::info("vm {}: weight {} -> {}", vm->name(), old, w);
            return nlohmann::json{{"ok", true}, {"vm", vm->name()}, {"weight", w}, {"previous", old}};
        }
        return nlohmann::json{{"ok", false}, {"error", "no VM " + vm_it->dump()}};
    }
    if (cmd == "remove-vm") {
        // The VM is gone (the lab's `vpipe-lab remove-vm`, as xenstore tells the Xen backend of
        // a destroyed domain): release everything the engine holds for it. Answers once its
        // workers ended and its disks are closed (or after 60 s, "released": false).
        const auto vm_it = req.find("vm");
        if (vm_it == req.end() || !(vm_it->is_string() || vm_it->is_number_integer()))
            return nlohmann::json{{"ok", false}, {"error", "remove-vm needs \"vm\" (name or id)"}};
        uint32_t id = 0;
        std::string name;
        bool found = false;
        {
            std::lock_guard lk(vms_mu_);
            for (const auto& vm : vms_) {
                const bool match = vm_it->is_string() ? vm->name() == vm_it->get<std::string>()
                                                      : vm_it->get<int64_t>() == vm->config().id;
                if (!match) continue;
                id = vm->config().id;
                name = vm->name();
                found = true;
                break;
            }
        }
        if (!found) return nlohmann::json{{"ok", false}, {"error", "no VM " + vm_it->dump()}};
        bool released = false;
        if (!remove_vm(id, &released, std::chrono::seconds(60)))
            return nlohmann::json{{"ok", false}, {"error", "no VM " + vm_it->dump() + " (removed meanwhile)"}};
        return nlohmann::json{{"ok", true}, {"vm", name}, {"id", id}, {"released", released}};
    }
    return nlohmann::json{{"ok", false}, {"error", "unknown command '" + cmd + "'"}};
}

void Engine::ticker() {
    std::unique_lock lk(ticker_mu_);
    const auto period = std::chrono::milliseconds(cfg_.tick_ms);
    auto next = std::chrono::steady_clock::now() + period;
    while (!ticker_stop_) {
        if (ticker_cv_.wait_until(lk, next, [this] { return ticker_stop_; })) break;
        credits_->tick();
        disk_credits_->tick();
        next += period;
        const auto now = std::chrono::steady_clock::now();
        if (next < now) next = now + period;  // overslept (loaded host): do not burst ticks
    }
}

void Engine::start() {
    ticker_ = std::thread([this] { ticker(); });
    {
        std::lock_guard lk(vms_mu_);
        for (auto& s : services_) s->start();
        started_ = true;
    }
    if (metrics_) {
        metrics_->start();
        spdlog::info("metrics: http://{}:{}/metrics", cfg_.metrics_listen.substr(0, cfg_.metrics_listen.rfind(':')),
                     metrics_->port());
    }
    // The control socket appears last: its existence tells the lab the engine is ready.
    control_->start();
    spdlog::info("engine ready: {} VM(s){}, {} buffers of {} KiB", vms_.size(),
                 cfg_.xen.enabled ? " + Xen domains" : "", pool_->capacity(),
                 cfg_.buffer_pages * 4);
}

void Engine::stop() {
    {
        std::lock_guard lk(vms_mu_);
        if (stopped_) return;
        stopped_ = true;
    }
    if (control_) control_->stop();
    if (metrics_) metrics_->stop();
    // Workers waiting for credit return at once (and move the rest uncharged) so they join.
    if (credits_) credits_->stop();
    if (disk_credits_) disk_credits_->stop();
    // A clean stop answers what is in flight before the channels close: operations are
    // cancelled (each stops at its next safe point, hands its connections back with their final
    // state and answers -ECANCELED with what it moved), and the services keep posting those
    // answers for up to kStopGraceMs. Closing the channels first would drop the answers: a
    // guest would see its request fail although dom0 had moved (and handed back) its bytes.
    {
        std::lock_guard lk(vms_mu_);
        for (auto& vm : vms_) vm->cancel();
    }
    constexpr int kStopGraceMs = 5000;
    const auto grace_end = std::chrono::steady_clock::now() + std::chrono::milliseconds(kStopGraceMs);
    for (;;) {
        uint64_t active = 0;
        {
            std::lock_guard lk(vms_mu_);
            for (auto& vm : vms_) active += vm->counters().active.load();
        }
        if (active == 0) break;
        if (std::chrono::steady_clock::now() >= grace_end) {
            spdlog::warn("stopping with {} operation(s) still running: their answers are lost", active);
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));  // (no event for "all idle")
    }
    std::vector<Retiring> retiring;
    {
        std::lock_guard lk(vms_mu_);
        for (auto& s : services_) s->stop();
        retiring.swap(retiring_);
    }
    for (auto& r : retiring) r.thread.join();
    {
        std::lock_guard lk(ticker_mu_);
        ticker_stop_ = true;
    }
    ticker_cv_.notify_all();
    if (ticker_.joinable()) ticker_.join();
}

nlohmann::json Engine::stats() const {
    nlohmann::json vms = nlohmann::json::array();
    const auto shares = credits_->snapshot();
    const auto disk_shares = disk_credits_->snapshot();
    std::unique_lock vms_lk(vms_mu_);
    for (const auto& vm : vms_) {
        nlohmann::json j = vm->stats_json();
        for (const auto& s : shares) {
            if (s.id != vm->config().id) continue;
            j["weight"] = s.weight;  // live (set-weight), not the configured one
            j["credits"] = {{"weight", s.weight},
                            {"credit", s.credit},
                            {"charged", s.charged},
                            {"waits", s.waits},
                            {"sole", s.sole},
                            {"active", s.active}};
        }
        for (const auto& s : disk_shares)
            if (s.id == vm->config().id)
                j["disk_credits"] = {{"credit", s.credit}, {"charged", s.charged}, {"waits", s.waits},
                                     {"sole", s.sole}, {"active", s.active}};
        vms.push_back(std::move(j));
    }
    vms_lk.unlock();
    nlohmann::json sock = {{"available", sockets_ != nullptr},
                           {"shadow_sockets", sockets_ ? sockets_->shadow_sockets.load() : 0},
                           {"steered_flows", sockets_ ? sockets_->steered_flows.load() : 0},
                           {"handovers", sockets_ ? sockets_->handovers.load() : 0}};
    const auto opt = credits_->options();
    nlohmann::json out = {{"vms", vms},
            {"sockets", sock},
            {"shadow_sockets", sock["shadow_sockets"]},
            {"steered_flows", sock["steered_flows"]},
            {"fairness",
             {{"mode", to_string(opt.mode)},
              {"tick_ms", cfg_.tick_ms},
              {"total_rate", opt.total_rate},
              {"total_rate_source", total_rate_source_},
              {"disk_rate", disk_credits_->options().total_rate},
              {"disk_rate_source", disk_rate_source_},
              {"early_refill", opt.early_refill && opt.mode == CreditScheduler::Mode::kWorkConserving},
              {"calibration", calibration_.to_json()}}},
            {"pool",
             {{"buffers", pool_->capacity()},
              {"buffer_bytes", size_t{cfg_.buffer_pages} * 4096},
              {"in_use", pool_->in_use()},
              {"high_water", pool_->high_water()}}}};
    for (const auto& [key, fn] : sections_) out[key] = fn();
    return out;
}

}  // namespace vpipe::engine
