// The three socket operations in dom0: file->socket, socket->file, socket->socket, each with
// its connection(s) taken over by shadow sockets for the request and handed back at the end.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>

#include "io/block_io.h"
#include "io/file_copy.h"
#include "io/page_pool.h"
#include "request.h"
#include "shadow.h"
#include "vm.h"

namespace vpipe::engine {

// Writes `n` bytes at `offset` of the request's descriptor stream (into the guest's pages).
using DescWriter = std::function<int(uint64_t offset, const void* data, size_t n)>;
// Reads the aligned 64-bit word at `offset` of the request's area as the guest has it NOW (the
// preparing watermark: never the private copy the request was parsed from).
using DescWordReader = std::function<int(uint64_t offset, uint64_t* value)>;

// No progress on a socket for this long ends the request with -ETIMEDOUT: [engine]
// socket_timeout_ms (default 30000), set at start-up with set_socket_timeout() (shadow.h);
// VPIPE_SOCKET_TIMEOUT_MS in the engine's environment overrides both (tests).
std::chrono::milliseconds socket_timeout();

// Runs a validated socket request. Always writes each socket endpoint's result (flags, and a
// final state + carried queues when VPIPE_EPF_VALID) before returning. 0 or a negative status;
// *moved as documented in docs/protocol.md ("Socket endpoints").
int execute_socket_request(Vm& vm, BlockIo& io, PagePool& pool, ShadowSockets* sockets,
                           const ParsedRequest& req, const DescWriter& write, uint64_t* moved,
                           const DescWordReader& read_word = {}, const WriteGate& may_write = {});

}  // namespace vpipe::engine
