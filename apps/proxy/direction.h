// One direction of a relayed connection: client -> backend (up) or backend -> client (down).
#pragma once

#include <cstdint>
#include <string>

#include "common/vpipe_io.h"

namespace vpipe::proxy {

struct Direction {
    int in = -1, out = -1;
    bool use_vpipe = false;
    uint64_t bytes = 0;     // bytes written to `out`
    std::string error;      // empty: ended by EOF
    apps::VpipeTally vp;    // the vPipe calls of this direction
};

// Relays d->in to d->out until EOF (then half-closes `out`) or an error (then shuts both sockets
// down, which ends the other direction too), in its own thread: rw, splice or vPipe in chunks.
void run_direction(Direction* d);

}  // namespace vpipe::proxy
