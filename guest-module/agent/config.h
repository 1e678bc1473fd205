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
    // pages shared with dom0 for the life of the channel; every request's area comes from them
    uint32_t area_pages = 4096;
    // file -> file: MiB per ring request and per stage of destination preparation
    uint32_t chunk_mib = 64;
    // largest carry room of a socket endpoint: what dom0 may hand back (a destination's
    // unacknowledged bytes, a source's received-not-consumed ones) and so its window
    uint32_t room_max = 2u << 20;
    // Paper 3.2: serve long clean cached runs of a source from the guest's page cache. For
    // file -> file the bytes must reach the disk anyway, and a guest copy pushes every one of
    // them through the VM boundary, so it is off unless asked for.
    bool cache_rule_file_to_file = false;
    // file -> socket: a range wholly in the guest's page cache (clean) is sent by the caller's
    // own sendfile: no hand-over, no disk read in dom0. On by default.
    bool cache_rule_file_to_socket = true;
    // socket -> file: hand over as soon as the destination's blocks are allocated and zero-fill
    // them while dom0 receives (VPIPE_REQF_PREPARING), instead of before the hand-over
    bool prepare_ahead = true;
    // the engine must answer within this (guest-module/core/watch.h, vpipe.ko's parameter of the
    // same name): after half of it without any answer a NOP is posted; no answer at all, no
    // file -> file answer, or no answer to a gone caller's request for this long declares the
    // engine unresponsive (channel dropped and reconnected, operations in flight fail)
    uint32_t request_timeout_ms = 60000;
    std::string log_level = "info";
    std::vector<AgentDisk> disks;
};

// Throws std::runtime_error naming the file and key.
AgentConfig load_agent_config(const std::string& path);
// Same, from text; errors name `origin` (tests, tests/fuzz/fuzz_agent_config).
AgentConfig parse_agent_config(const std::string& toml_text, const std::string& origin = "<text>");

}  // namespace vpipe::agent
