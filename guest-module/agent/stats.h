// The agent's counters (reported through VPIPE_IOC_STATS).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>

#include <vpipe/abi/ioctl.h>

namespace vpipe::agent {

struct AgentStats {
    std::array<std::atomic<uint64_t>, 5> ops{};
    std::atomic<uint64_t> ops_failed{0};
    std::atomic<uint64_t> bytes_offloaded{0};
    std::atomic<uint64_t> bytes_guest_cache{0};
    std::atomic<uint64_t> bytes_zero_filled{0};
    std::atomic<uint64_t> bytes_write_zeroes{0};
    std::atomic<uint64_t> ring_requests{0};
    std::atomic<uint64_t> extents_mapped{0};

    // engine_timeouts: EngineLink's count of the engine declared unresponsive
    void fill(vpipe_ioc_stats* out, bool engine_connected, uint64_t engine_timeouts = 0) const {
        *out = {};
        for (size_t i = 0; i < ops.size(); ++i) out->ops[i] = ops[i];
        out->ops_failed = ops_failed;
        out->bytes_offloaded = bytes_offloaded;
        out->bytes_guest_cache = bytes_guest_cache;
        out->bytes_zero_filled = bytes_zero_filled;
        out->bytes_write_zeroes = bytes_write_zeroes;
        out->ring_requests = ring_requests;
        out->extents_mapped = extents_mapped;
        out->engine_connected = engine_connected ? 1 : 0;
        out->engine_timeouts = engine_timeouts;
    }
};

}  // namespace vpipe::agent
