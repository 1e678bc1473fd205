#include "config.h"

#include <toml++/toml.h>

#include <fstream>
#include <iterator>
#include <optional>
#include <stdexcept>

#include <vpipe/abi/ring.h>
#include <vpipe/abi/shm.h>

namespace vpipe::agent {

AgentConfig parse_agent_config(const std::string& text, const std::string& origin) {
    toml::table root;
    try {
        root = toml::parse(text, origin);
    } catch (const toml::parse_error& e) {
        throw std::runtime_error(origin + ": " + std::string(e.description()));
    }
    auto fail = [&](const std::string& what) { throw std::runtime_error(origin + ": " + what); };
    AgentConfig c;
    auto* a = root["agent"].as_table();
    if (!a) fail("missing [agent]");
    // A key present with the wrong type is an error, not the default (value_or would hide it).
    auto str = [&](const char* key, const std::string& fallback) {
        const toml::node* n = a->get(key);
        if (!n) return fallback;
        if (!n->is_string()) fail(std::string("[agent] ") + key + " must be a string");
        return n->as_string()->get();
    };
    auto boolean = [&](const char* key, bool fallback) {
        const toml::node* n = a->get(key);
        if (!n) return fallback;
        if (!n->is_boolean()) fail(std::string("[agent] ") + key + " must be true or false");
        return n->as_boolean()->get();
    };
    // Integers only: toml++'s value<int64_t>() casts a float node, undefined behaviour when it
    // is out of int64_t's range (1e300).
    auto integer = [&](const toml::table& t, const char* key, const std::string& where,
                       std::optional<int64_t> fallback) -> std::optional<int64_t> {
        const toml::node* n = t.get(key);
        if (!n) return fallback;
        if (!n->is_integer()) fail(where + key + " must be an integer");
        return n->as_integer()->get();
    };
    c.vm = str("vm", std::string());
    c.listen = str("listen", c.listen);
    c.engine_channel = str("engine_channel", std::string());
    c.state_dir = str("state_dir", c.state_dir);
    c.log_level = str("log_level", c.log_level);
    c.cache_rule_file_to_file = boolean("cache_rule_file_to_file", c.cache_rule_file_to_file);
    c.cache_rule_file_to_socket = boolean("cache_rule_file_to_socket", c.cache_rule_file_to_socket);
    c.prepare_ahead = boolean("prepare_ahead", c.prepare_ahead);
    const int64_t pages = *integer(*a, "area_pages", "[agent] ", int64_t{c.area_pages});
    const int64_t chunk = *integer(*a, "chunk_mib", "[agent] ", int64_t{c.chunk_mib});
    const int64_t room_kib = *integer(*a, "room_kib", "[agent] ", int64_t{c.room_max >> 10});
    const int64_t timeout_ms = *integer(*a, "request_timeout_ms", "[agent] ", int64_t{c.request_timeout_ms});
    if (c.engine_channel.empty()) fail("[agent] engine_channel is required");
    if (pages < 16 || pages > VPIPE_SHM_MAX_DESC_PAGES) fail("[agent] area_pages must be 16..4096");
    if (chunk < 1 || chunk > 1024) fail("[agent] chunk_mib must be 1..1024");
    if (room_kib < 16 || room_kib > 16384) fail("[agent] room_kib must be 16..16384");
    if (timeout_ms < 100 || timeout_ms > 3600000) fail("[agent] request_timeout_ms must be 100..3600000");
    c.area_pages = static_cast<uint32_t>(pages);
    c.chunk_mib = static_cast<uint32_t>(chunk);
    c.room_max = static_cast<uint32_t>(room_kib) << 10;
    c.request_timeout_ms = static_cast<uint32_t>(timeout_ms);
    // a socket -> socket request takes two rooms: they must fit the area
    if (uint64_t{c.room_max} * 2 + (64u << 10) > uint64_t{c.area_pages} * VPIPE_PAGE_SIZE)
        fail("[agent] room_kib too large for area_pages (two rooms must fit the area)");
    if (const toml::node* dn = root.get("disk")) {
        const toml::array* disks = dn->as_array();
        if (!disks) fail("[[disk]] must be an array of tables");
        for (auto& d : *disks) {
            auto* t = d.as_table();
            if (!t) fail("[[disk]] entries must be tables");
            AgentDisk ad;
            const toml::node* vn = t->get("vdev");
            const toml::node* dev = t->get("device");
            if (!vn || !vn->is_integer() || !dev || !dev->is_string())
                fail("[[disk]] needs vdev (a positive integer) and device (a path)");
            const int64_t vdev = vn->as_integer()->get();
            if (vdev <= 0 || vdev > UINT32_MAX)
                fail("[[disk]] needs vdev (a positive integer) and device (a path)");
            ad.vdev = static_cast<uint32_t>(vdev);
            ad.device = dev->as_string()->get();
            c.disks.push_back(std::move(ad));
        }
    }
    return c;
}

AgentConfig load_agent_config(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error(path + ": cannot open");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return parse_agent_config(text, path);
}

}  // namespace vpipe::agent
