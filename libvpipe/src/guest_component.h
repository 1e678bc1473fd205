// How libvpipe reaches the guest component: /dev/vpipe (kernel module) when present, else the
// agent's unix socket. Both speak vpipe/abi/ioctl.h.
#pragma once

#include <functional>

#include <vpipe/abi/ioctl.h>

namespace vpipe::lib {

// Runs one operation. 0 or -errno. -ENOENT/-ECONNREFUSED when no guest component exists.
// `head` / `tail`: op->head_len / op->tail_len bytes for a socket destination.
int component_op(vpipe_ioc_op* op, int in_fd, int out_fd, const void* head = nullptr,
                 const void* tail = nullptr);

// /dev/vpipe is there (the kernel module is the component).
bool module_present();

// Asks the guest component for its counters. 0 or -errno.
int component_stats(vpipe_ioc_stats* out);

// ---- asynchronous operations over the agent (one connection per queue) ----

// What a completion brought: the record and the restored sockets attached to it.
struct AgentCompletion {
    vpipe_ioc_completion c{};
    int fds[2] = {-1, -1};
    size_t nfds = 0;
};
using CompletionSink = std::function<void(AgentCompletion&)>;

// A new connection to the agent: fd, or -errno (-ENOENT / -ECONNREFUSED: no agent).
int agent_connect_queue();
// VPIPE_AGENT_SUBMIT: 0 accepted, > 0 the agent refused (*refusal = -errno), -errno transport.
// Completions that arrive before the accept go to `sink`.
int agent_submit(int conn, uint64_t tag, const vpipe_ioc_op& op, int in_fd, int out_fd, const void* head,
                 const void* tail, const CompletionSink& sink, int* refusal);
// VPIPE_AGENT_CANCEL: 0 and *result (0 or -ENOENT), or -errno transport.
int agent_cancel(int conn, uint64_t tag, const CompletionSink& sink, int* result);
// Reads the messages already waiting (never blocks for the first): completions go to `sink`.
// The number read, or -errno (the connection is broken).
int agent_drain(int conn, const CompletionSink& sink);
// ---- asynchronous operations over the kernel module (one open of /dev/vpipe per queue) ----
// A new open of /dev/vpipe (non-blocking: its read() never waits): fd, or -errno.
int module_open_queue();
// VPIPE_IOC_SUBMIT: 0 accepted, or -errno (the module refused; nothing was touched).
int module_submit(int qfd, uint64_t tag, const vpipe_ioc_op& op, int in_fd, int out_fd, const void* head,
                  const void* tail);
// VPIPE_IOC_CANCEL: 0, or -ENOENT (not in flight: its completion is waiting), -errno.
int module_cancel(int qfd, uint64_t tag);
// Reads the completions waiting (never blocks): each goes to `sink` as an agent's would, the
// descriptors the module installed for restored sockets as its fds. The number read, or -errno.
int module_drain(int qfd, const CompletionSink& sink);

// Puts restored sockets (indexes into fds) on the caller's descriptors; closes the rest.
int install_restored(const vpipe_ioc_op& op, int in_fd, int out_fd, int* fds, size_t nfds);

}  // namespace vpipe::lib
