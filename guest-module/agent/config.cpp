#include "config.h"

#include <toml++/toml.h>

#include <stdexcept>

#include <vpipe/abi/ring.h>
#include <vpipe/abi/shm.h>

namespace vpipe::agent {

AgentConfig load_agent_config(const std::string& path) {
    toml::table root;
    try {
        root = toml::parse_file(path);
    } catch (const toml::parse_error& e) {
        throw std::runtime_error(path + ": " + std::string(e.description()));
    }
    auto fail = [&](const std::string& what) { throw std::runtime_error(path + ": " + what); };
    AgentConfig c;
    auto* a = root["agent"].as_table();
    if (!a) fail("missing [agent]");
    c.vm = (*a)["vm"].value_or(std::string());
    c.listen = (*a)["listen"].value_or(c.listen);
    c.engine_channel = (*a)["engine_channel"].value_or(std::string());
    c.state_dir = (*a)["state_dir"].value_or(c.state_dir);
    c.log_level = (*a)["log_level"].value_or(c.log_level);
    c.cache_rule_file_to_file = (*a)["cache_rule_file_to_file"].value_or(c.cache_rule_file_to_file);
    c.cache_rule_file_to_socket = (*a)["cache_rule_file_to_socket"].value_or(c.cache_rule_file_to_socket);
    c.prepare_ahead = (*a)["prepare_ahead"].value_or(c.prepare_ahead);
    int64_t pages = (*a)["area_pages"].value_or(int64_t{c.area_pages});
    int64_t chunk = (*a)["chunk_mib"].value_or(int64_t{c.chunk_mib});
    int64_t room_kib = (*a)["room_kib"].value_or(int64_t{c.room_max >> 10});
    if (c.engine_channel.empty()) fail("[agent] engine_channel is required");
    if (pages < 16 || pages > VPIPE_SHM_MAX_DESC_PAGES) fail("[agent] area_pages must be 16..4096");
    if (chunk < 1 || chunk > 1024) fail("[agent] chunk_mib must be 1..1024");
    if (room_kib < 16 || room_kib > 16384) fail("[agent] room_kib must be 16..16384");
    c.area_pages = static_cast<uint32_t>(pages);
    c.chunk_mib = static_cast<uint32_t>(chunk);
    c.room_max = static_cast<uint32_t>(room_kib) << 10;
    // a socket -> socket request takes two rooms: they must fit the area
    if (uint64_t{c.room_max} * 2 + (64u << 10) > uint64_t{c.area_pages} * VPIPE_PAGE_SIZE)
        fail("[agent] room_kib too large for area_pages (two rooms must fit the area)");
    if (auto* disks = root["disk"].as_array()) {
        for (auto& d : *disks) {
            auto* t = d.as_table();
            if (!t) fail("[[disk]] entries must be tables");
            AgentDisk ad;
            auto vdev = (*t)["vdev"].value<int64_t>();
            auto dev = (*t)["device"].value<std::string>();
            if (!vdev || *vdev <= 0 || *vdev > UINT32_MAX || !dev)
                fail("[[disk]] needs vdev (a positive integer) and device (a path)");
            ad.vdev = static_cast<uint32_t>(*vdev);
            ad.device = *dev;
            c.disks.push_back(std::move(ad));
        }
    }
    return c;
}

}  // namespace vpipe::agent
