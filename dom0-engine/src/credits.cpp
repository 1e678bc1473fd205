#include "credits.h"

#include <algorithm>
#include <cmath>

namespace vpipe::engine {

const char* to_string(CreditScheduler::Mode m) {
    return m == CreditScheduler::Mode::kStrict ? "strict" : "work-conserving";
}

bool parse_mode(const std::string& s, CreditScheduler::Mode* out) {
    if (s == "strict") {
        *out = CreditScheduler::Mode::kStrict;
        return true;
    }
    if (s == "work-conserving") {
        *out = CreditScheduler::Mode::kWorkConserving;
        return true;
    }
    return false;
}

CreditScheduler::CreditScheduler(Options opt) : opt_(opt) {}

void CreditScheduler::add_vm(uint32_t id, uint32_t weight) {
    std::lock_guard lk(mu_);
    Vm& vm = vms_[id];
    vm.weight = std::max<uint32_t>(weight, 1);
}

void CreditScheduler::remove_vm(uint32_t id) {
    std::lock_guard lk(mu_);
    vms_.erase(id);
    cv_.notify_all();  // its waiters return false
}

bool CreditScheduler::set_weight(uint32_t id, uint32_t weight) {
    std::lock_guard lk(mu_);
    auto it = vms_.find(id);
    if (it == vms_.end() || weight == 0) return false;
    it->second.weight = weight;
    return true;
}

void CreditScheduler::set_total_rate(uint64_t bytes_per_second) {
    std::lock_guard lk(mu_);
    opt_.total_rate = std::max<uint64_t>(bytes_per_second, 1);
}

void CreditScheduler::set_mode(Mode mode) {
    std::lock_guard lk(mu_);
    opt_.mode = mode;
}

CreditScheduler::Options CreditScheduler::options() const {
    std::lock_guard lk(mu_);
    return opt_;
}

bool CreditScheduler::charge(uint32_t id, uint64_t bytes) {
    std::unique_lock lk(mu_);
    for (bool counted_wait = false;;) {
        if (stopped_) return false;
        auto it = vms_.find(id);
        if (it == vms_.end()) return false;
        Vm& vm = it->second;
        vm.quiet = 0;
        if (opt_.mode == Mode::kWorkConserving && opt_.uncap_sole_demand && sole_demand_locked(id)) {
            vm.credit = std::max<int64_t>(vm.credit - static_cast<int64_t>(bytes), std::min<int64_t>(vm.credit, 0));
            vm.charged += bytes;
            vm.sole += bytes;
            return true;
        }
        // Any positive credit admits a window (debt covers the rest), so a window larger than
        // one tick's share still moves, and pays for itself over the next ticks.
        if (vm.credit > 0) {
            vm.credit -= static_cast<int64_t>(bytes);
            vm.charged += bytes;
            return true;
        }
        if (!counted_wait) {
            vm.waits++;
            counted_wait = true;
        }
        vm.waiting++;
        if (opt_.mode == Mode::kWorkConserving && opt_.early_refill && all_demand_starved_locked()) {
            // Nobody who wants to move bytes can: spending the next period's credit now keeps
            // the capacity busy without changing the proportions.
            tick_locked();
        } else {
            cv_.wait_for(lk, opt_.period * 4);
        }
        // `vm` may be gone (remove_vm) after the wait: look it up again.
        auto again = vms_.find(id);
        if (again != vms_.end()) again->second.waiting--;
    }
}

bool CreditScheduler::try_charge(uint32_t id, uint64_t bytes) {
    std::lock_guard lk(mu_);
    auto it = vms_.find(id);
    if (stopped_ || it == vms_.end()) return false;
    Vm& vm = it->second;
    vm.quiet = 0;
    if (vm.credit <= 0) return false;
    vm.credit -= static_cast<int64_t>(bytes);
    vm.charged += bytes;
    return true;
}

bool CreditScheduler::all_demand_starved_locked() const {
    bool any = false;
    for (const auto& [id, vm] : vms_) {
        if (!recently_wanted(vm)) continue;
        any = true;
        if (vm.credit > 0 || vm.waiting == 0) return false;  // someone can still move bytes
    }
    return any;
}

bool CreditScheduler::sole_demand_locked(uint32_t id) const {
    for (const auto& [other, vm] : vms_)
        if (other != id && (recently_wanted(vm) || vm.waiting > 0)) return false;
    return true;
}

void CreditScheduler::tick() {
    std::lock_guard lk(mu_);
    tick_locked();
}

void CreditScheduler::tick_locked() {
    const double budget = static_cast<double>(opt_.total_rate) *
                          std::chrono::duration<double>(opt_.period).count();
    uint64_t weights = 0;
    for (auto& [id, vm] : vms_) {
        const bool eligible = opt_.mode == Mode::kStrict || recently_wanted(vm) || vm.waiting > 0;
        if (eligible) weights += vm.weight;
    }
    for (auto& [id, vm] : vms_) {
        const bool eligible = opt_.mode == Mode::kStrict || recently_wanted(vm) || vm.waiting > 0;
        if (eligible && weights) {
            const double share = budget * vm.weight / static_cast<double>(weights);
            const int64_t cap = static_cast<int64_t>(std::ceil(share * opt_.burst_periods));
            vm.credit = std::min<int64_t>(vm.credit + static_cast<int64_t>(std::ceil(share)), cap);
        } else if (vm.credit > 0) {
            vm.credit = 0;  // idle: no hoarding (debt, if any, is kept and paid off later)
        }
        if (vm.quiet < ~0u / 2) vm.quiet++;
    }
    cv_.notify_all();
}

void CreditScheduler::stop() {
    std::lock_guard lk(mu_);
    stopped_ = true;
    cv_.notify_all();
}

std::vector<CreditScheduler::VmShare> CreditScheduler::snapshot() const {
    std::lock_guard lk(mu_);
    std::vector<VmShare> out;
    for (const auto& [id, vm] : vms_)
        out.push_back({id, vm.weight, vm.credit, vm.charged, vm.waits, vm.sole,
                       recently_wanted(vm)});
    return out;
}

}  // namespace vpipe::engine
