// The lab's persisted state (/run/vpipe-lab/state.json): written incrementally during `up` so that
// `down` knows what exists even after a crash; `info --json` prints it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace vpipe::lab {

struct DiskState {
    int index = 0;
    uint32_t vdev = 0;
    std::string image;
    std::string device;  // /dev/loopN once attached
    std::string mount;   // host path where `exec` commands see it
    bool direct_io = false;
    bool mounted = false;
};

// rps_cpus of one rx queue the hypervisor neighbour model set (it goes with the namespace).
struct RpsState {
    std::string netns, dev, queue, before, mask;
};

struct VmState {
    int id = 0;
    std::string name, ip, mac, netns, vif;
    int weight = 1;
    int agent_pid = 0;
    std::string agent_socket, agent_config, agent_log, agent_state_dir, engine_channel;
    std::string cgroup;                    // primary cgroup directory
    std::vector<std::string> cgroup_dirs;  // one per hierarchy (v1) or one (v2)
    std::string cpu_max;                   // "QUOTA PERIOD" read back after `up` ("max PERIOD" = no cap)
    std::vector<RpsState> rps;             // hypervisor model: receive steering of its interfaces
    std::vector<DiskState> disks;
    // `vpipe-lab remove-vm`: its processes, namespace, veth, cgroups are gone and its disks
    // detached (the images stay until `down`); the engine released it.
    bool removed = false;
    std::string removed_at;
};

struct NeighbourState {
    int index = 0;
    int pid = 0;
    std::string cgroup;
    std::vector<std::string> cgroup_dirs;
};

struct EngineState {
    int pid = 0;
    std::string config, control_socket, log, binary;
    std::string cgroup;
    std::vector<std::string> cgroup_dirs;
};

struct LabState {
    int version = 1;
    std::string status = "creating";  // "creating" while `up` runs, then "up"
    std::string created_at;
    int creator_pid = 0;
    std::string image_dir;
    bool image_dir_created = false;
    int disk_mib = 0;
    int link_mbit = 0;
    std::string disk_cache = "host";
    int vcpu_quota = 0;  // percent of one CPU per VM cgroup, 0 = none
    std::string neighbour_model = "shares";  // "shares" | "hypervisor" (--neighbour-model)
    int slice_ms = 0;                        // hypervisor: the credit time slice; 0 with shares
    std::string guest_cpus, dom0_cpus;
    bool daemons = true;
    std::string cgroup_mode;                // "v1" or "v2"
    std::vector<std::string> netns;         // namespaces created
    std::vector<std::string> cgroup_dirs;   // every cgroup directory created, in creation order
    EngineState engine;
    std::vector<VmState> vms;
    std::vector<NeighbourState> neighbours;
};

nlohmann::json to_json(const LabState& s);
LabState state_from_json(const nlohmann::json& j);

// Loads /run/vpipe-lab/state.json; nullopt when absent; throws LabError when unreadable.
std::optional<LabState> load_state();
// Writes it atomically (creates /run/vpipe-lab).
void save_state(const LabState& s);

}  // namespace vpipe::lab
