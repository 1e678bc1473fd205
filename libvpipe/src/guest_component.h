// How libvpipe reaches the guest component: /dev/vpipe (kernel module) when present, else the
// agent's unix socket. Both speak vpipe/abi/ioctl.h.
#pragma once

#include <vpipe/abi/ioctl.h>

namespace vpipe::lib {

// Runs one operation. 0 or -errno. -ENOENT/-ECONNREFUSED when no guest component exists.
// `head` / `tail`: op->head_len / op->tail_len bytes for a socket destination.
int component_op(vpipe_ioc_op* op, int in_fd, int out_fd, const void* head = nullptr,
                 const void* tail = nullptr);

// Asks the guest component for its counters. 0 or -errno.
int component_stats(vpipe_ioc_stats* out);

}  // namespace vpipe::lib
