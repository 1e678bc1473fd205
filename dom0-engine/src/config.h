// vpiped's configuration: the VMs it serves and their disks and network identity. In the lab
// this file is written by vpipe-lab; on Xen the same facts come from xenstore.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace vpipe::engine {

inline constexpr uint32_t kMaxWeight = 10000;  // largest VM weight (config and set-weight)

struct DiskConfig {
    uint32_t vdev = 0;        // the guest's virtual device number (xvda = 51712)
    std::string image;        // what blkback would serve: a file or a block device
    bool writable = true;
    // Reads for file -> socket through dom0's page cache of the image ("host") instead of
    // O_DIRECT ("direct"). Only coherent when every write the VM makes to the image passes
    // through, or invalidates, that page cache: a file served by a loop device or QEMU's qdisk.
    // Never for a block device under blkback (its bios bypass dom0's page cache): refused.
    // docs/protocol.md 6, "Reading through dom0's page cache".
    bool host_cache = false;
};

struct VmConfig {
    std::string name;
    uint32_t id = 0;
    uint32_t weight = 1;
    uint32_t threads = 4;     // per-VM worker threads: one operation each at a time
    std::string channel;      // unix socket the VM's guest component connects to
    std::string ip;           // the VM's own address: flows must use this one
    // The peer policy (peer_policy.h): more addresses of this VM (IPv4 or IPv6) that other
    // tenants' shadow sockets may not reach, and its tenant: VMs that name the same non-empty
    // tenant may reach each other's addresses through the engine.
    std::vector<std::string> addresses;
    std::string tenant;
    std::string mac;
    std::string vif;
    std::string bridge;
    std::vector<DiskConfig> disks;
};

// The Xen backend ([xen]): VMs come from xenstore instead of [[vm]] entries (docs/protocol.md 5).
struct XenVmDefaults {
    uint32_t weight = 1;
    uint32_t threads = 4;
    std::string tenant;   // the peer policy's tenant ("" = shares with no other VM)
};
struct XenConfig {
    bool enabled = false;                          // [xen] enabled, or vpiped --xen
    XenVmDefaults defaults;                        // [xen] weight / threads / tenant
    std::map<std::string, XenVmDefaults> by_name;  // [xen.vm.<name>] weight / threads / tenant
    // The settings for the domain called `name`.
    XenVmDefaults for_vm(const std::string& name) const {
        auto it = by_name.find(name);
        return it == by_name.end() ? defaults : it->second;
    }
};

struct EngineConfig {
    std::string control_socket = "/run/vpipe/vpiped.ctl";
    uint32_t pool_pages = 16384;      // preallocated buffer pages shared by all VMs
    uint32_t buffer_pages = 256;      // pages per buffer (one I/O window)
    uint32_t queue_depth = 32;        // libaio requests in flight per worker
    std::string log_level = "info";
    uint32_t socket_timeout_ms = 30000;  // shadow sockets: no progress this long = -ETIMEDOUT
    // Sharing dom0 (credit scheduler, paper 3.4)
    std::string fairness = "work-conserving";   // or "strict"
    uint32_t tick_ms = 10;                      // credit refill period
    uint64_t total_rate_mbps = 0;               // 0: use the start-up calibration
    // file -> file never crosses the network: it is credited at its own rate (0: the calibrated
    // disk rate), so a shaped link (total_rate_mbps) does not cap it
    uint64_t disk_rate_mbps = 0;
    std::string metrics_listen = "127.0.0.1:9477";  // Prometheus GET /metrics; "" = off
    std::vector<VmConfig> vms;
    XenConfig xen;
};

// Parses a TOML file. Throws std::runtime_error naming the file, the key and what is wrong.
EngineConfig load_config(const std::string& path);
// Same, from text (for tests).
EngineConfig parse_config(const std::string& toml_text, const std::string& origin = "<text>");

}  // namespace vpipe::engine
