// fuzz_agent_config: vpipe-guestd's TOML configuration (guest-module/agent/config.cpp,
// parse_agent_config). Any text is either a config inside its documented bounds or a
// std::runtime_error naming the origin; no other exception, no undefined behaviour.
#include <cstdint>
#include <stdexcept>
#include <string>

#include <vpipe/abi/ring.h>
#include <vpipe/abi/shm.h>

#include "config.h"

using namespace vpipe::agent;

namespace {
[[noreturn]] void bug(const char*) { __builtin_trap(); }
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size > 65536) return -1;
    const std::string text(reinterpret_cast<const char*>(data), size);
    AgentConfig c;
    try {
        c = parse_agent_config(text, "fuzz.toml");
    } catch (const std::runtime_error& e) {
        if (std::string(e.what()).rfind("fuzz.toml: ", 0) != 0) bug("error without the origin");
        return 0;
    }
    if (c.engine_channel.empty()) bug("engine_channel");
    if (c.area_pages < 16 || c.area_pages > VPIPE_SHM_MAX_DESC_PAGES) bug("area_pages");
    if (c.chunk_mib < 1 || c.chunk_mib > 1024) bug("chunk_mib");
    if (c.room_max < (16u << 10) || c.room_max > (16384u << 10)) bug("room");
    if (uint64_t{c.room_max} * 2 + (64u << 10) > uint64_t{c.area_pages} * VPIPE_PAGE_SIZE) bug("rooms");
    for (const auto& d : c.disks)
        if (d.vdev == 0) bug("vdev");
    return 0;
}
