// vpipe-guestd's configuration: where applications reach it, where dom0 is, which block
// devices are the VM's virtual disks (and their Xen virtual-device numbers).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace vpipe::agent {

struct AgentDisk {
    uint32_t vdev = 0;
    std::string device;  // the guest's block device for that virtual disk, e.g. /dev/xvda
};

struct AgentConfig {
    std::string vm;
    std::string listen = "/run/vpipe/agent.sock";
    std::string engine_channel;
    std::string state_dir = "/run/vpipe/agent-state";
    uint32_t desc_pages = 256;
    uint64_t chunk_bytes = 64ull << 20;  // one ring request moves at most this much
    // Paper 3.2: serve long clean cached runs of a source from the guest's page cache. It pays
    // when the guest would otherwise wait for a disk read before sending (file -> socket). For
    // file -> file the bytes must reach the disk anyway, and a guest copy would push every one
    // of them through the VM boundary, so there it is off unless asked for.
    bool cache_rule = true;
    bool cache_rule_file_to_file = false;
    std::string log_level = "info";
    std::vector<AgentDisk> disks;
};

// Throws std::runtime_error naming the file and key.
AgentConfig load_agent_config(const std::string& path);

}  // namespace vpipe::agent
