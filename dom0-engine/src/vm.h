// One VM as the engine sees it: its disks (opened by the engine from the toolstack's
// configuration, never from a path the guest names), its workers and its counters.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>

#include <nlohmann/json.hpp>

#include "config.h"
#include "credits.h"
#include "io/disk_image.h"
#include "request.h"
#include "shadow.h"
#include "util/unique_fd.h"
#include "worker_pool.h"

namespace vpipe::engine {

struct VmCounters {
    std::atomic<uint64_t> requests{0};      // ring requests received
    std::atomic<uint64_t> rejected{0};      // failed validation (or the peer policy)
    std::atomic<uint64_t> peer_refused{0};  // of rejected: a peer the policy refuses (-EACCES)
    std::atomic<uint64_t> failed{0};        // valid, but the operation failed
    std::atomic<uint64_t> active{0};        // in progress now
    std::array<std::atomic<uint64_t>, VPIPE_OP_MAX_> ops{};    // completed, by op
    std::array<std::atomic<uint64_t>, VPIPE_OP_MAX_> bytes{};  // moved, by op
    std::atomic<uint64_t> channels{0};      // ring connections accepted so far
    std::atomic<uint64_t> shadow_sockets{0}; // connections held in dom0 now
    std::atomic<uint64_t> steered_flows{0};  // flows steered to dom0 now
    std::atomic<uint64_t> bad_pages{0};      // requests naming a descriptor page we cannot copy
    std::atomic<uint64_t> ring_overflows{0}; // channels dropped for a req_prod past the ring
    std::atomic<uint64_t> cancelled{0};      // queued operations skipped: their channel went away
    std::atomic<uint64_t> abandoned{0};      // stopped before a write batch: the guest gave them up
                                             // (VPIPE_EPF_ABANDONED) or their channel went away
    std::atomic<uint64_t> preparing{0};      // socket -> file requests readied by the guest meanwhile
    std::atomic<uint64_t> prepare_waits{0};  // receives that waited for the guest's watermark
};

class Vm {
public:
    // Opens the VM's disk images. Throws std::system_error / std::runtime_error.
    Vm(const VmConfig& cfg, const EngineConfig& engine);

    const VmConfig& config() const { return cfg_; }
    const std::string& name() const { return cfg_.name; }
    DiskImage* disk(uint32_t vdev) const;
    DiskLookup disk_lookup() const;
    const VmIdentity& identity() const { return identity_; }
    ShadowCounters shadow_counters() {
        return {&counters_.shadow_sockets, &counters_.steered_flows};
    }
    WorkerPool& workers() { return *workers_; }
    VmCounters& counters() { return counters_; }
    std::atomic<bool>& connected() { return connected_; }

    // The VM is going away (a destroyed Xen domain): operations waiting on a socket return
    // -ECANCELED at once instead of at the socket timeout, so their shadow sockets and steering
    // entries are released. cancel_fd() is readable from then on.
    void cancel();
    int cancel_fd() const { return cancel_fd_.get(); }

    // The engine's credit schedulers (nullptr: none, nothing is charged). Set before start.
    // `net` credits operations with a socket endpoint, `disk` file -> file, which never
    // crosses the network (a shaped link must not cap it).
    void set_credits(CreditScheduler* net, CreditScheduler* disk) {
        credits_ = net;
        disk_credits_ = disk;
    }
    // Charges `bytes` to this VM (waits for credit) and counts them as moved by `op`. The
    // one call every data path makes per window.
    void charge(uint8_t op, uint64_t bytes) {
        reserve(op, bytes);
        count(op, bytes);
    }
    // Only the credit part: charged ahead of a window whose bytes are counted when they land.
    void reserve(uint8_t op, uint64_t bytes) {
        CreditScheduler* s = op == VPIPE_OP_FILE_TO_FILE && disk_credits_ ? disk_credits_ : credits_;
        if (s && bytes) s->charge(cfg_.id, bytes);  // false only on shutdown
    }
    // Only the counting part.
    void count(uint8_t op, uint64_t bytes) {
        if (op < VPIPE_OP_MAX_) counters_.bytes[op].fetch_add(bytes, std::memory_order_relaxed);
    }

    nlohmann::json stats_json() const;

private:
    VmConfig cfg_;
    std::map<uint32_t, std::unique_ptr<DiskImage>> disks_;
    VmCounters counters_;
    VmIdentity identity_;
    std::atomic<bool> connected_{false};
    UniqueFd cancel_fd_;                   // eventfd, written by cancel()
    CreditScheduler* credits_ = nullptr;
    CreditScheduler* disk_credits_ = nullptr;
    std::unique_ptr<WorkerPool> workers_;  // last: joins before the disks close
};

const char* op_name(uint8_t op);

}  // namespace vpipe::engine
