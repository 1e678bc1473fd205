// Credit scheduler: how dom0's data-moving capacity is shared between VMs (paper 3.4).
//
// Every period (a tick) `total_rate × period` bytes of credit are handed out, in proportion to
// weight, to the VMs that are eligible; workers charge each window of bytes before moving it
// and wait while their VM has no credit. Shape after xen-netback's per-vif credit timer and
// seastar's fair_queue:
//   - strict mode: every configured VM is eligible, busy or not, so each VM is capped at
//     weight/Σweights of the total even when the others are idle (hard isolation);
//   - work-conserving mode (default): only VMs that asked for credit in the last period are
//     eligible, so the active VMs split the whole rate; and when every VM that wants to move
//     bytes is out of credit, the next tick comes early, so capacity is never left idle while
//     there is demand (a VM out of credit effectively runs at the lowest priority).
// Credit a VM does not use is capped at `burst_periods` ticks' worth: an idle VM cannot hoard
// credit and then starve the others.
//
// The model is deterministic for tests: nothing here reads a clock except wait_for_credit's
// timeout; tick() is called by the engine's timer thread (or a test).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace vpipe::engine {

class CreditScheduler {
public:
    enum class Mode { kStrict, kWorkConserving };

    struct Options {
        uint64_t total_rate = 1ull << 30;                  // bytes per second for all VMs
        std::chrono::microseconds period{10000};           // tick period
        double burst_periods = 2.0;                        // credit cap, in ticks' worth
        Mode mode = Mode::kWorkConserving;
        // Work-conserving only: when every VM that wants to move bytes is out of credit, tick
        // early. Right when total_rate is an estimate of dom0's own capacity (calibration):
        // starved demand means the estimate was low. Wrong when total_rate is a known external
        // bottleneck (a link configured by the operator): running past it only queues bytes at
        // the bottleneck, where weights are not enforced. The engine turns it off then.
        bool early_refill = true;
        // Work-conserving only: a VM stays eligible (keeps its share, and its credit grows up
        // to the burst cap) for this many ticks after it last asked for credit. 2 = the
        // current and the last period. Longer bridges short pauses of a busy VM (the hand-over
        // between two ring requests) so its share is not handed to the others meanwhile.
        unsigned active_periods = 2;
        // Work-conserving only: a VM that is the only one asking for credit is admitted at
        // once, whatever its credit. Credit exists to split a capacity between VMs; with nobody
        // to split it with, the real bottleneck (the link, the disk) paces the VM, and a
        // total_rate set a little below that bottleneck (so that the engine, not the link,
        // decides the shares under contention) would otherwise cap a lone VM at ~90 % of it.
        // Its credit is spent down to zero, never into debt, so a VM that arrives next meets
        // an equal start. Strict mode always caps (hard isolation).
        bool uncap_sole_demand = true;
    };

    struct VmShare {
        uint32_t id;
        uint32_t weight;
        int64_t credit;          // bytes it may move now (negative: debt from a large window)
        uint64_t charged;        // bytes charged since it was added
        uint64_t waits;          // times a worker had to wait for credit
        uint64_t sole;           // bytes admitted uncapped as the only VM asking (uncap_sole_demand)
        bool active;             // asked for credit within the last active_periods ticks
    };

    explicit CreditScheduler(Options opt);

    void add_vm(uint32_t id, uint32_t weight);
    void remove_vm(uint32_t id);
    // Weight 0 is refused (false). Takes effect at the next tick.
    bool set_weight(uint32_t id, uint32_t weight);
    void set_total_rate(uint64_t bytes_per_second);
    void set_mode(Mode mode);
    Options options() const;

    // Charges `bytes` to VM `id`, waiting until it has credit. A window larger than the VM's
    // whole credit is allowed to go into debt once the VM has any credit at all, so a big
    // window never deadlocks. Returns false if the VM is unknown or `stop()` was called.
    bool charge(uint32_t id, uint64_t bytes);

    // Non-blocking charge: true if charged, false if the VM has no credit now (it still counts
    // as wanting credit, so it is eligible at the next tick).
    bool try_charge(uint32_t id, uint64_t bytes);

    // Hands out one period's credit. Called every `period` by the engine's timer.
    void tick();

    // Wakes every waiter and makes charge() return false from now on (engine shutdown).
    void stop();

    std::vector<VmShare> snapshot() const;

private:
    struct Vm {
        uint32_t weight = 1;
        int64_t credit = 0;
        uint64_t charged = 0;
        uint64_t waits = 0;
        uint64_t sole = 0;
        unsigned quiet = ~0u / 2;          // ticks since it last asked for credit (0: this period)
        unsigned waiting = 0;              // workers blocked on credit now
    };

    void tick_locked();
    bool recently_wanted(const Vm& vm) const { return vm.quiet < opt_.active_periods; }
    bool all_demand_starved_locked() const;
    bool sole_demand_locked(uint32_t id) const;

    mutable std::mutex mu_;
    std::condition_variable cv_;
    Options opt_;
    std::map<uint32_t, Vm> vms_;
    bool stopped_ = false;
};

const char* to_string(CreditScheduler::Mode m);
// "strict" / "work-conserving"; false for anything else.
bool parse_mode(const std::string& s, CreditScheduler::Mode* out);

}  // namespace vpipe::engine
