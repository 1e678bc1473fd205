#include "config.h"

#include <arpa/inet.h>

#include <toml++/toml.h>

#include <fstream>
#include <iterator>
#include <limits>
#include <set>
#include <stdexcept>

namespace vpipe::engine {
namespace {

[[noreturn]] void fail(const std::string& origin, const std::string& what) {
    throw std::runtime_error(origin + ": " + what);
}

template <typename T>
T get_or(const toml::table& t, const char* key, T fallback, const std::string& origin,
         const std::string& where) {
    const toml::node* n = t.get(key);
    if (!n) return fallback;
    if constexpr (std::is_same_v<T, std::string>) {
        if (auto v = n->value<std::string>()) return *v;
        fail(origin, where + key + " must be a string");
    } else if constexpr (std::is_same_v<T, bool>) {
        if (auto v = n->value<bool>()) return *v;
        fail(origin, where + key + " must be true or false");
    } else {
        // Integers only: toml++'s value<int64_t>() converts a float node with a cast that is
        // undefined behaviour when the float is out of int64_t's range (1e300), and "4.0" for a
        // page count is a mistake worth naming anyway.
        if (!n->is_integer()) fail(origin, where + key + " must be an integer");
        const int64_t v = n->as_integer()->get();
        if (v < 0 || static_cast<uint64_t>(v) > std::numeric_limits<T>::max())
            fail(origin, where + key + " must be a non-negative integer in range");
        return static_cast<T>(v);
    }
}

template <typename T>
T require(const toml::table& t, const char* key, const std::string& origin,
          const std::string& where) {
    if (!t.contains(key)) fail(origin, where + key + " is required");
    return get_or<T>(t, key, T{}, origin, where);
}

}  // namespace

EngineConfig parse_config(const std::string& text, const std::string& origin) {
    toml::table root;
    try {
        root = toml::parse(text, origin);
    } catch (const toml::parse_error& e) {
        fail(origin, std::string("syntax: ") + std::string(e.description()));
    }
    EngineConfig cfg;
    if (auto* eng = root["engine"].as_table()) {
        const std::string w = "[engine] ";
        cfg.control_socket = get_or(*eng, "control_socket", cfg.control_socket, origin, w);
        cfg.pool_pages = get_or(*eng, "pool_pages", cfg.pool_pages, origin, w);
        cfg.buffer_pages = get_or(*eng, "buffer_pages", cfg.buffer_pages, origin, w);
        cfg.queue_depth = get_or(*eng, "queue_depth", cfg.queue_depth, origin, w);
        cfg.log_level = get_or(*eng, "log_level", cfg.log_level, origin, w);
        cfg.socket_timeout_ms = get_or(*eng, "socket_timeout_ms", cfg.socket_timeout_ms, origin, w);
        cfg.fairness = get_or(*eng, "fairness", cfg.fairness, origin, w);
        cfg.tick_ms = get_or(*eng, "tick_ms", cfg.tick_ms, origin, w);
        cfg.total_rate_mbps = get_or(*eng, "total_rate_mbps", cfg.total_rate_mbps, origin, w);
        cfg.disk_rate_mbps = get_or(*eng, "disk_rate_mbps", cfg.disk_rate_mbps, origin, w);
        cfg.metrics_listen = get_or(*eng, "metrics_listen", cfg.metrics_listen, origin, w);
    }
    if (cfg.fairness != "work-conserving" && cfg.fairness != "strict")
        fail(origin, "[engine] fairness must be \"work-conserving\" or \"strict\"");
    if (cfg.tick_ms == 0 || cfg.tick_ms > 1000) fail(origin, "[engine] tick_ms must be 1..1000");
    if (cfg.total_rate_mbps > 10'000'000)
        fail(origin, "[engine] total_rate_mbps must be at most 10000000 (0 = calibrate)");
    if (cfg.disk_rate_mbps > 10'000'000)
        fail(origin, "[engine] disk_rate_mbps must be at most 10000000 (0 = calibrate)");
    if (!cfg.metrics_listen.empty()) {
        const auto colon = cfg.metrics_listen.rfind(':');
        bool ok = colon != std::string::npos && colon > 0 && colon + 1 < cfg.metrics_listen.size() &&
                  cfg.metrics_listen.size() - colon - 1 <= 5;
        if (ok) {
            for (char c : cfg.metrics_listen.substr(colon + 1)) ok &= c >= '0' && c <= '9';
            ok &= ok && std::stoul(cfg.metrics_listen.substr(colon + 1)) <= 65535;
        }
        if (!ok) fail(origin, "[engine] metrics_listen must be \"IPV4:PORT\" or \"\" (off)");
    }
    if (cfg.buffer_pages == 0 || cfg.pool_pages < cfg.buffer_pages)
        fail(origin, "[engine] pool_pages must hold at least one buffer of buffer_pages");
    if (cfg.queue_depth == 0 || cfg.queue_depth > 1024)
        fail(origin, "[engine] queue_depth must be 1..1024");

    if (auto* xen = root["xen"].as_table()) {
        const std::string w = "[xen] ";
        for (const auto& [k, v] : *xen) {
            const std::string key(k.str());
            if (key != "enabled" && key != "weight" && key != "threads" && key != "tenant" && key != "vm")
                fail(origin, w + "unknown key " + key);
        }
        cfg.xen.enabled = get_or(*xen, "enabled", false, origin, w);
        auto vm_settings = [&](const toml::table& t, XenVmDefaults base, const std::string& where) {
            base.weight = get_or(t, "weight", base.weight, origin, where);
            base.threads = get_or(t, "threads", base.threads, origin, where);
            base.tenant = get_or(t, "tenant", base.tenant, origin, where);
            if (base.weight == 0 || base.weight > kMaxWeight) fail(origin, where + "weight must be 1..10000");
            if (base.threads == 0 || base.threads > 256) fail(origin, where + "threads must be 1..256");
            return base;
        };
        cfg.xen.defaults = vm_settings(*xen, cfg.xen.defaults, w);
        if (const toml::node* vms = xen->get("vm")) {
            const toml::table* t = vms->as_table();
            if (!t) fail(origin, "[xen.vm] must be a table of [xen.vm.<name>] tables");
            for (const auto& [name, node] : *t) {
                const std::string where = "[xen.vm." + std::string(name.str()) + "] ";
                const toml::table* vt = node.as_table();
                if (!vt) fail(origin, where + "must be a table");
                for (const auto& [k, v] : *vt)
                    if (k.str() != "weight" && k.str() != "threads" && k.str() != "tenant")
                        fail(origin, where + "unknown key " + std::string(k.str()));
                cfg.xen.by_name[std::string(name.str())] = vm_settings(*vt, cfg.xen.defaults, where);
            }
        }
    }

    std::set<std::string> names, channels;
    std::set<uint32_t> ids;
    if (auto* vms = root["vm"].as_array()) {
        for (size_t i = 0; i < vms->size(); ++i) {
            auto* t = (*vms)[i].as_table();
            if (!t) fail(origin, "[[vm]] entries must be tables");
            const std::string w = "[[vm]] #" + std::to_string(i + 1) + " ";
            VmConfig vm;
            vm.name = require<std::string>(*t, "name", origin, w);
            vm.id = require<uint32_t>(*t, "id", origin, w);
            vm.weight = get_or(*t, "weight", vm.weight, origin, w);
            vm.threads = get_or(*t, "threads", vm.threads, origin, w);
            vm.channel = require<std::string>(*t, "channel", origin, w);
            vm.ip = get_or(*t, "ip", std::string(), origin, w);
            vm.mac = get_or(*t, "mac", std::string(), origin, w);
            vm.vif = get_or(*t, "vif", std::string(), origin, w);
            vm.bridge = get_or(*t, "bridge", std::string(), origin, w);
            vm.tenant = get_or(*t, "tenant", std::string(), origin, w);
            if (const toml::node* n = t->get("addresses")) {
                const toml::array* a = n->as_array();
                if (!a) fail(origin, w + "addresses must be a list of IP addresses");
                for (const auto& e : *a) {
                    auto v = e.value<std::string>();
                    unsigned char buf[16];
                    if (!v || (::inet_pton(AF_INET, v->c_str(), buf) != 1 &&
                               ::inet_pton(AF_INET6, v->c_str(), buf) != 1))
                        fail(origin, w + "addresses must be a list of IP addresses (\"10.0.0.2\", \"fd00::2\")");
                    vm.addresses.push_back(*v);
                }
            }
            if (vm.weight == 0 || vm.weight > kMaxWeight) fail(origin, w + "weight must be 1..10000");
            if (vm.threads == 0 || vm.threads > 256) fail(origin, w + "threads must be 1..256");
            if (!names.insert(vm.name).second) fail(origin, w + "duplicate name " + vm.name);
            if (!ids.insert(vm.id).second) fail(origin, w + "duplicate id");
            if (!channels.insert(vm.channel).second) fail(origin, w + "duplicate channel");
            std::set<uint32_t> vdevs;
            if (auto* disks = t->get_as<toml::array>("disk")) {
                for (auto& d : *disks) {
                    auto* dt = d.as_table();
                    if (!dt) fail(origin, w + "disk entries must be tables");
                    DiskConfig dc;
                    dc.vdev = require<uint32_t>(*dt, "vdev", origin, w + "disk ");
                    dc.image = require<std::string>(*dt, "image", origin, w + "disk ");
                    dc.writable = get_or(*dt, "writable", true, origin, w + "disk ");
                    const std::string cache = get_or(*dt, "cache", std::string("direct"), origin, w + "disk ");
                    if (cache != "direct" && cache != "host")
                        fail(origin, w + "disk cache must be \"direct\" or \"host\"");
                    dc.host_cache = cache == "host";
                    if (!vdevs.insert(dc.vdev).second)
                        fail(origin, w + "duplicate vdev " + std::to_string(dc.vdev));
                    vm.disks.push_back(std::move(dc));
                }
            }
            cfg.vms.push_back(std::move(vm));
        }
    }
    return cfg;
}

EngineConfig load_config(const std::string& path) {
    toml::table root;
    std::ifstream in(path);
    if (!in) throw std::runtime_error(path + ": cannot open");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return parse_config(text, path);
}

}  // namespace vpipe::engine
