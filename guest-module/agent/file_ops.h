// File operations of the guest component: the file rules of DESIGN.md ("Files: rules that keep
// data safe") applied around the ring requests.
#pragma once

#include <vpipe/abi/ioctl.h>

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

// file -> file. `in_fd`/`out_fd` are the application's open files (passed to us). Fills the
// result fields of `op`. Returns 0 (op->moved may be short at EOF) or -errno:
//   EBADF  a descriptor's access mode does not allow the direction
//   EINVAL not regular files, O_APPEND destination, overlapping ranges of one file
//   ENXIO  a file is not on one of this VM's virtual disks (caller may fall back)
//   EHOSTDOWN no engine (caller may fall back); others from the filesystem or dom0.
int file_to_file(AgentContext& ctx, int in_fd, int out_fd, vpipe_ioc_op* op);

}  // namespace vpipe::agent
