// Carrying out a validated request on a worker thread.
#pragma once

#include <cstdint>

#include "io/block_io.h"
#include "io/file_copy.h"
#include "io/page_pool.h"
#include "request.h"
#include "socket_ops.h"
#include "vm.h"

namespace vpipe::engine {

// Moves the request's bytes. Returns 0 or a negative status (vpipe/abi/ring.h); *moved is the
// number of bytes durably at the destination, also on failure.
// Socket operations need the engine's ShadowSockets (nullptr: -EOPNOTSUPP) and a way to write
// their results back into the request's descriptor pages. `may_write` is asked before every
// batch of writes into a destination file (file -> file, socket -> file): its error stops the
// request there (the guest abandoned it).
int execute_request(Vm& vm, BlockIo& io, PagePool& pool, const ParsedRequest& req,
                    uint64_t* moved, ShadowSockets* sockets = nullptr,
                    const DescWriter& write_back = {}, const DescWordReader& read_word = {},
                    const WriteGate& may_write = {});

}  // namespace vpipe::engine
