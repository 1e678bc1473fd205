#include "state.h"

#include "util.h"

namespace vpipe::lab {

using nlohmann::json;

namespace {

template <typename T>
T get_or(const json& j, const char* key, T def) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return def;
    try {
        return it->get<T>();
    } catch (const json::exception&) {
        return def;
    }
}

}  // namespace

json to_json(const LabState& s) {
    json j;
    j["version"] = s.version;
    j["status"] = s.status;
    j["created_at"] = s.created_at;
    j["creator_pid"] = s.creator_pid;
    j["image_dir"] = s.image_dir;
    j["image_dir_created"] = s.image_dir_created;
    j["disk_mib"] = s.disk_mib;
    j["link_mbit"] = s.link_mbit;
    j["disk_cache"] = s.disk_cache;
    j["vcpu_quota"] = s.vcpu_quota;
    j["neighbour_model"] = s.neighbour_model;
    j["slice_ms"] = s.slice_ms;
    j["guest_cpus"] = s.guest_cpus;
    j["dom0_cpus"] = s.dom0_cpus;
    j["daemons"] = s.daemons;
    j["cgroup_mode"] = s.cgroup_mode;
    j["netns"] = s.netns;
    j["cgroup_dirs"] = s.cgroup_dirs;
    j["engine"] = {{"pid", s.engine.pid},
                   {"config", s.engine.config},
                   {"control_socket", s.engine.control_socket},
                   {"log", s.engine.log},
                   {"binary", s.engine.binary},
                   {"cgroup", s.engine.cgroup},
                   {"cgroup_dirs", s.engine.cgroup_dirs}};
    j["client"] = {{"ip", std::string(kSubnetPrefix) + "1"}, {"netns", kClientNetns}, {"dev", "eth0"}};
    j["dom0"] = {{"netns", kDom0Netns},
                 {"bridge", kBridge},
                 {"ip", std::string(kSubnetPrefix) + "254"},
                 {"physical_port", "peth0"},
                 {"cpus", s.dom0_cpus},
                 {"cgroup", s.engine.cgroup}};
    json vms = json::array();
    for (const auto& v : s.vms) {
        json disks = json::array();
        for (const auto& d : v.disks)
            disks.push_back({{"index", d.index},
                             {"vdev", d.vdev},
                             {"image", d.image},
                             {"device", d.device},
                             {"mount", d.mount},
                             {"direct_io", d.direct_io},
                             {"mounted", d.mounted}});
        json rps = json::array();
        for (const auto& r : v.rps)
            rps.push_back({{"netns", r.netns}, {"dev", r.dev}, {"queue", r.queue}, {"before", r.before}, {"mask", r.mask}});
        vms.push_back({{"name", v.name},
                       {"id", v.id},
                       {"ip", v.ip},
                       {"mac", v.mac},
                       {"netns", v.netns},
                       {"vif", v.vif},
                       {"weight", v.weight},
                       {"agent_pid", v.agent_pid},
                       {"agent_socket", v.agent_socket},
                       {"agent_config", v.agent_config},
                       {"agent_log", v.agent_log},
                       {"agent_state_dir", v.agent_state_dir},
                       {"engine_channel", v.engine_channel},
                       {"cgroup", v.cgroup},
                       {"cgroup_dirs", v.cgroup_dirs},
                       {"cpu_max", v.cpu_max},
                       {"rps", rps},
                       {"disks", disks},
                       {"removed", v.removed},
                       {"removed_at", v.removed_at}});
    }
    j["vms"] = vms;
    json nb = json::array();
    for (const auto& n : s.neighbours)
        nb.push_back({{"index", n.index}, {"pid", n.pid}, {"cgroup", n.cgroup}, {"cgroup_dirs", n.cgroup_dirs}});
    j["neighbours"] = nb;
    return j;
}

LabState state_from_json(const json& j) {
    LabState s;
    s.version = get_or(j, "version", 1);
    s.status = get_or<std::string>(j, "status", "creating");
    s.created_at = get_or<std::string>(j, "created_at", "");
    s.creator_pid = get_or(j, "creator_pid", 0);
    s.image_dir = get_or<std::string>(j, "image_dir", "");
    s.image_dir_created = get_or(j, "image_dir_created", false);
    s.disk_mib = get_or(j, "disk_mib", 0);
    s.link_mbit = get_or(j, "link_mbit", 0);
    s.disk_cache = get_or(j, "disk_cache", std::string("host"));
    s.vcpu_quota = get_or(j, "vcpu_quota", 0);
    s.neighbour_model = get_or<std::string>(j, "neighbour_model", "shares");
    s.slice_ms = get_or(j, "slice_ms", 0);
    s.guest_cpus = get_or<std::string>(j, "guest_cpus", "");
    s.dom0_cpus = get_or<std::string>(j, "dom0_cpus", "");
    s.daemons = get_or(j, "daemons", true);
    s.cgroup_mode = get_or<std::string>(j, "cgroup_mode", "");
    s.netns = get_or(j, "netns", std::vector<std::string>{});
    s.cgroup_dirs = get_or(j, "cgroup_dirs", std::vector<std::string>{});
    if (auto it = j.find("engine"); it != j.end() && it->is_object()) {
        const auto& e = *it;
        s.engine.pid = get_or(e, "pid", 0);
        s.engine.config = get_or<std::string>(e, "config", "");
        s.engine.control_socket = get_or<std::string>(e, "control_socket", "");
        s.engine.log = get_or<std::string>(e, "log", "");
        s.engine.binary = get_or<std::string>(e, "binary", "");
        s.engine.cgroup = get_or<std::string>(e, "cgroup", "");
        s.engine.cgroup_dirs = get_or(e, "cgroup_dirs", std::vector<std::string>{});
    }
    if (auto it = j.find("vms"); it != j.end() && it->is_array()) {
        for (const auto& vj : *it) {
            VmState v;
            v.id = get_or(vj, "id", 0);
            v.name = get_or<std::string>(vj, "name", "");
            v.ip = get_or<std::string>(vj, "ip", "");
            v.mac = get_or<std::string>(vj, "mac", "");
            v.netns = get_or<std::string>(vj, "netns", "");
            v.vif = get_or<std::string>(vj, "vif", "");
            v.weight = get_or(vj, "weight", 1);
            v.agent_pid = get_or(vj, "agent_pid", 0);
            v.agent_socket = get_or<std::string>(vj, "agent_socket", "");
            v.agent_config = get_or<std::string>(vj, "agent_config", "");
            v.agent_log = get_or<std::string>(vj, "agent_log", "");
            v.agent_state_dir = get_or<std::string>(vj, "agent_state_dir", "");
            v.engine_channel = get_or<std::string>(vj, "engine_channel", "");
            v.cgroup = get_or<std::string>(vj, "cgroup", "");
            v.cgroup_dirs = get_or(vj, "cgroup_dirs", std::vector<std::string>{});
            v.cpu_max = get_or<std::string>(vj, "cpu_max", "");
            if (auto rit = vj.find("rps"); rit != vj.end() && rit->is_array()) {
                for (const auto& rj : *rit)
                    v.rps.push_back({get_or<std::string>(rj, "netns", ""), get_or<std::string>(rj, "dev", ""),
                                     get_or<std::string>(rj, "queue", ""), get_or<std::string>(rj, "before", ""),
                                     get_or<std::string>(rj, "mask", "")});
            }
            v.removed = get_or(vj, "removed", false);
            v.removed_at = get_or<std::string>(vj, "removed_at", "");
            if (auto dit = vj.find("disks"); dit != vj.end() && dit->is_array()) {
                for (const auto& dj : *dit) {
                    DiskState d;
                    d.index = get_or(dj, "index", 0);
                    d.vdev = get_or<uint32_t>(dj, "vdev", 0);
                    d.image = get_or<std::string>(dj, "image", "");
                    d.device = get_or<std::string>(dj, "device", "");
                    d.mount = get_or<std::string>(dj, "mount", "");
                    d.direct_io = get_or(dj, "direct_io", false);
                    d.mounted = get_or(dj, "mounted", false);
                    v.disks.push_back(d);
                }
            }
            s.vms.push_back(v);
        }
    }
    if (auto it = j.find("neighbours"); it != j.end() && it->is_array()) {
        for (const auto& nj : *it) {
            NeighbourState n;
            n.index = get_or(nj, "index", 0);
            n.pid = get_or(nj, "pid", 0);
            n.cgroup = get_or<std::string>(nj, "cgroup", "");
            n.cgroup_dirs = get_or(nj, "cgroup_dirs", std::vector<std::string>{});
            s.neighbours.push_back(n);
        }
    }
    return s;
}

std::optional<LabState> load_state() {
    auto text = read_file(kStatePath);
    if (!text) return std::nullopt;
    try {
        return state_from_json(json::parse(*text));
    } catch (const json::exception& e) {
        throw LabError(std::string("corrupt ") + kStatePath + ": " + e.what() +
                       " (run `vpipe-lab down` to clean up by scanning)");
    }
}

void save_state(const LabState& s) {
    mkdir_p(kRunDir);
    write_file_atomic(kStatePath, to_json(s).dump(2) + "\n");
}

}  // namespace vpipe::lab
