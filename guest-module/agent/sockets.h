// The agent's TCP steps of a hand-over (the ops the guest core calls, guest-module/core): check
// a socket, freeze it (flow blocked in the VM's own netns, the connection captured with its
// queues by TCP_REPAIR, the 4-tuple freed without FIN/RST), restore it from dom0's final state
// or the frozen one, and the local path for a source whose peer already closed.
#pragma once

#include <cstdint>
#include <vector>

#include "vpipe_core.h"

namespace vpipe::agent {

class GuestFlowBlock;

// The agent's part of a frozen connection (vpipe_frozen.os).
struct FrozenSocket {
    int fd = -1;                      // the agent's descriptor of the application's socket
    std::vector<uint8_t> sndq, rcvq;  // as captured (vpipe_frozen.sndq / rcvq point here)
    bool blocked = false;
    vpipe_tcp_state key{};            // the block's 4-tuple
    // SO_REUSEADDR as the application had it: repair mode overwrites it (on: "force reuse",
    // off: "no reuse"), and a restored connection without it keeps a restarted server from
    // binding its port while the connection lingers
    int reuseaddr = 0;
};

// 0 (ESTABLISHED, or CLOSE_WAIT with *peer_fin), -EINVAL not a TCP socket, -ENOTCONN
// (listening, unconnected, closing), -EOPNOTSUPP (IPv6, loopback), -E<pending error>.
int check_socket(int fd, int* peer_fin);

// Fills fz (fz->os: a new FrozenSocket). On error nothing changed.
int freeze_socket(GuestFlowBlock* fb, int fd, vpipe_frozen* fz);

// Restores (see vpipe_core_ops.sock_restore); *new_fd is a descriptor of the agent's (or -1).
// Frees fz->os.
int restore_socket(GuestFlowBlock* fb, vpipe_frozen* fz, const vpipe_restore& r, int* new_fd);

// A source whose peer closed: copies what is queued (up to length) to the destination socket,
// or to the file at out_off (made durable). *moved.
int drain_closed_source(int src, int dst, bool dst_is_file, uint64_t out_off, uint64_t length,
                        uint64_t* moved);

}  // namespace vpipe::agent
