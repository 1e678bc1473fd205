// One application call (VPIPE_IOC_OP) in the agent: the guest core (guest-module/core) runs
// the operation; this file gives it the agent's OS steps (core_ops.cpp).
#pragma once

#include <atomic>
#include <cstdint>

#include <vpipe/abi/ioctl.h>

#include "context.h"

namespace vpipe::agent {

// in_fd / out_fd: the application's descriptors (passed to us). head / tail: op->head_len /
// op->tail_len bytes. Fills the result fields of `op`. *new_in / *new_out: restored sockets
// (descriptors of the agent's the caller sends back and closes) or -1.
// 0 (op->moved may be short) or -errno, the errors of docs/protocol.md section 1.
// `cancel` (asynchronous operations): when it turns true the core stops at its next safe point
// (the checks it makes for a dying caller in the kernel) and the operation ends short or -EINTR.
// `gone`: the caller's connection closed -- the same stop, and the wait for a request already
// with dom0 becomes a killed caller's (bounded by request_timeout_ms, EngineLink::wait).
int run_operation(AgentContext& ctx, int in_fd, int out_fd, vpipe_ioc_op* op, const uint8_t* head,
                  const uint8_t* tail, int* new_in, int* new_out,
                  const std::atomic<bool>* cancel = nullptr, const std::atomic<bool>* gone = nullptr);

// Flows blocked in the VM's netns right now (tests, stats).
int blocked_flows();

}  // namespace vpipe::agent
