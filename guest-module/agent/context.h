// What every request of the agent works with: its configuration, the VM's disks, the ring to
// dom0 and the counters.
#pragma once

#include "config.h"
#include "engine_link.h"
#include "files/disk_table.h"
#include "stats.h"

namespace vpipe::agent {

struct AgentContext {
    const AgentConfig& cfg;
    const DiskTable& disks;
    EngineLink& link;
    AgentStats& stats;
};

}  // namespace vpipe::agent
