// fuzz_engine_config: vpiped's TOML configuration (dom0-engine/src/config.cpp, parse_config).
// Any text is either a config that satisfies every documented bound or a std::runtime_error
// naming the origin; no other exception, no undefined behaviour (UBSan: a huge float read as
// an integer).
#include <cstdint>
#include <set>
#include <stdexcept>
#include <string>

#include "config.h"

using namespace vpipe::engine;

namespace {
[[noreturn]] void bug(const char*) { __builtin_trap(); }
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size > 65536) return -1;
    const std::string text(reinterpret_cast<const char*>(data), size);
    EngineConfig c;
    try {
        c = parse_config(text, "fuzz.toml");
    } catch (const std::runtime_error& e) {
        if (std::string(e.what()).rfind("fuzz.toml: ", 0) != 0) bug("error without the origin");
        return 0;
    }
    if (c.tick_ms == 0 || c.tick_ms > 1000) bug("tick_ms");
    if (c.queue_depth == 0 || c.queue_depth > 1024) bug("queue_depth");
    if (c.buffer_pages == 0 || c.pool_pages < c.buffer_pages) bug("pool");
    if (c.fairness != "work-conserving" && c.fairness != "strict") bug("fairness");
    if (c.total_rate_mbps > 10'000'000 || c.disk_rate_mbps > 10'000'000) bug("rates");
    if (c.xen.defaults.weight == 0 || c.xen.defaults.weight > kMaxWeight) bug("xen weight");
    for (const auto& [name, d] : c.xen.by_name)
        if (d.weight == 0 || d.weight > kMaxWeight || d.threads == 0 || d.threads > 256) bug("xen vm");
    std::set<std::string> names;
    std::set<uint32_t> ids;
    for (const auto& vm : c.vms) {
        if (vm.weight == 0 || vm.weight > kMaxWeight || vm.threads == 0 || vm.threads > 256) bug("vm bounds");
        if (!names.insert(vm.name).second || !ids.insert(vm.id).second) bug("duplicate vm");
        std::set<uint32_t> vdevs;
        for (const auto& d : vm.disks)
            if (!vdevs.insert(d.vdev).second) bug("duplicate vdev");
    }
    return 0;
}
