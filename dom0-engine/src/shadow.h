// Shadow sockets: a VM's TCP connection taken over by dom0's stack for one operation
// (docs/design.md, "Shadow sockets without kernel patches"), and handed back afterwards.
//
//   take over:  tcp::restore(state + carried queues, transparent, no window probe) ->
//               Steering::add_flow -> the unsent part of the send queue -> window probe (so a
//               peer stalled by the guest's block resumes at once)
//   hand back:  Steering::remove_flow (the guest still blocks the flow in its own netns, so
//               the client's frames are held there until the guest has restored the socket,
//               never answered with RST) -> freeze ->
//               close_silently -> the final state + queues go back in the descriptor
//
// ShadowSockets owns the engine's one Steering (not thread-safe: every call is serialized
// here) and counts live shadow sockets and steered flows.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "steering/steering.h"
#include "util/unique_fd.h"
#include "vpipe/abi/ring.h"

namespace vpipe::engine {

// The shadow sockets' progress timeout ([engine] socket_timeout_ms; see socket_ops.h).
void set_socket_timeout(std::chrono::milliseconds t);

class ShadowSockets {
public:
    // Creates the steering table in the calling thread's network namespace. nullptr (logged)
    // when that is impossible: socket operations are then answered -EOPNOTSUPP.
    static std::unique_ptr<ShadowSockets> create();
    ~ShadowSockets();

    int add_flow(const steering::FlowKey& k);
    int remove_flow(const steering::FlowKey& k);

    // A flow between two VMs can be offloaded at both ends at once (vpipe-proxy in vm1 relaying
    // from vpipe-httpd in vm2): then both shadows live in this stack, and what one sends to the
    // other VM's address must reach the other shadow, not the VM (whose own block drops it).
    // attach() marks both sockets with the steering fwmark (its policy route delivers locally,
    // via lo, to the peer shadow found by its 4-tuple; SO_MARK resets the cached route);
    // detach() (before the shadow is frozen and closed) unmarks the peer, which then sends to
    // the VM again (or to the VM's steered flow).
    void attach(const steering::FlowKey& k, int fd);
    void detach(const steering::FlowKey& k);

    std::atomic<uint64_t> shadow_sockets{0};   // live now
    std::atomic<uint64_t> steered_flows{0};    // live now
    std::atomic<uint64_t> handovers{0};        // taken over so far

private:
    ShadowSockets() = default;
    std::mutex mu_;
    std::unique_ptr<steering::Steering> steering_;
    uint32_t fwmark_ = 0;
    std::mutex live_mu_;
    std::vector<std::pair<steering::FlowKey, int>> live_;  // open shadows: key, fd
};

// Per-VM live counters (kept in VmCounters; see vm.h).
struct ShadowCounters {
    std::atomic<uint64_t>* shadow_sockets;
    std::atomic<uint64_t>* steered_flows;
};

// One connection held in dom0 for the duration of a request.
class Shadow {
public:
    enum class Role { kSource, kDestination };

    Shadow(ShadowSockets& sockets, ShadowCounters vmc) : sockets_(sockets), vmc_(vmc) {}
    ~Shadow();  // abort path: un-steer, close silently
    Shadow(const Shadow&) = delete;
    Shadow& operator=(const Shadow&) = delete;

    // Restores the connection the guest froze, with what it carried in (the transmitted part of
    // the send queue as in flight, the receive queue as unread), as a transparent socket bound
    // to the VM's address, steers the flow to it, then queues the send queue's unsent part (a
    // destination's head among it) and sends a window probe.
    //
    // Buffers are sized so that everything handed back fits the endpoint's room (`tcp`'s
    // carry_offset, `room` bytes): bytes past what dom0 consumes can only arrive inside the
    // receive window, and Linux keeps the right edge of the window within the receive buffer
    // of what was read, so the receive buffer (and the restored window) is capped at the
    // room's receive share; a destination's send queue may hold at most snd_limit() bytes
    // (send_limited() keeps to it). A source gets the room minus its carried send queue for
    // receiving; a destination gives the peer a small window (what it may send meanwhile, e.g.
    // a pipelined request) and keeps the rest for the send queue.
    int open(const vpipe_tcp_state& tcp, std::span<const uint8_t> sndq, std::span<const uint8_t> rcvq,
             uint32_t room, uint32_t tail_len, Role role);

    int fd() const { return fd_.get(); }
    bool open_now() const { return static_cast<bool>(fd_); }
    uint64_t bytes_acked() const;   // tcpi_bytes_acked since open() (carried send queue included)
    uint32_t snd_limit() const { return snd_limit_; }

    // Hands the connection back: remove_flow, freeze, close silently. Fills *final (queue
    // lengths and sndq_unsent included, carry_offset untouched) and the queues; *flags gets
    // VPIPE_EPF_*. A peer that closed (CLOSE_WAIT) gives VPIPE_EPF_PEER_FIN and rcv_seq before
    // the FIN; a dead connection gives VPIPE_EPF_RESET and no state.
    int hand_back(vpipe_tcp_state* final, std::vector<uint8_t>* sndq, std::vector<uint8_t>* rcvq,
                  uint32_t* flags);
    // Drops the connection silently without reading it (error paths).
    void abort();
    // Resets the connection towards the peer (RST) and drops it: nobody can take it back.
    void reset_peer();

private:
    ShadowSockets& sockets_;
    ShadowCounters vmc_;
    UniqueFd fd_;
    steering::FlowKey key_{};
    bool steered_ = false;
    bool attached_ = false;
    uint64_t acked_base_ = 0;
    uint32_t snd_limit_ = 0;
};

// Reads the full TCP_REPAIR state of `fd` like tcp::freeze(), but also in CLOSE_WAIT (the
// peer's FIN consumed: rcv_seq is then reported BEFORE the FIN and *peer_fin set). The socket
// is left in repair mode. -errno on failure.
int freeze_any(int fd, vpipe_tcp_state* st, std::vector<uint8_t>* sndq, std::vector<uint8_t>* rcvq,
               bool* peer_fin);

}  // namespace vpipe::engine
