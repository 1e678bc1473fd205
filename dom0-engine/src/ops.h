// Carrying out a validated request on a worker thread.
#pragma once

#include <cstdint>

#include "io/block_io.h"
#include "io/page_pool.h"
#include "request.h"
#include "socket_ops.h"
#include "vm.h"

namespace vpipe::engine {

// Moves the request's bytes. Returns 0 or a negative status (vpipe/abi/ring.h); *moved is the
// number of bytes durably at the destination, also on failure.
// Socket operations need the engine's ShadowSockets (nullptr: -EOPNOTSUPP) and a way to write
// their results back into the request's descriptor pages.
int execute_request(Vm& vm, BlockIo& io, PagePool& pool, const ParsedRequest& req,
                    uint64_t* moved, ShadowSockets* sockets = nullptr,
                    const DescWriter& write_back = {}, const DescWordReader& read_word = {});

}  // namespace vpipe::engine
