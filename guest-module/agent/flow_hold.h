// FlowHold: the client's segments of a handed-over connection are held, not dropped, while the
// guest blocks the flow, and re-injected once the guest has restored the socket.
//
// Why: the hand-back has a window (dom0 removed its steering, the guest has not restored the
// socket yet) in which the client's next segments reach the VM. Dropping them costs the client
// a retransmission timeout (>= 200 ms on Linux) for every keep-alive request that arrives in
// that window -- measured: every other 4 KiB GET stalled 200 ms. Held, they reach the restored
// socket microseconds later.
//
// How: the block's input rule sends the flow's segments to an NFQUEUE (nftables `queue num N`,
// no bypass: with no listener the kernel drops them, as before). One thread reads the queue
// with libmnl + libnetfilter_queue (copying only the headers) and keeps the packet ids of held
// flows; release() issues their NF_ACCEPT verdicts in arrival order, and the kernel re-injects
// the segments where they left the input hook. A segment of a flow that is not held (it raced
// with release()) is accepted at once. Per flow at most kMaxHeldPerFlow segments are held; the
// rest are dropped (counted) and the client retransmits them.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "util/poll_thread.h"

struct mnl_socket;

namespace vpipe::agent {

class FlowHold {
public:
    // local addr(4) . local port(2, network order) . pad(2) . remote addr(4) . remote port . pad:
    // the layout of the nft set's key
    using Key = std::array<uint8_t, 16>;
    static constexpr size_t kMaxHeldPerFlow = 1024;

    // Binds queue `queue_num` in the calling thread's network namespace and starts the reader.
    // nullptr (logged) when NFQUEUE is unavailable or the queue is taken.
    static std::unique_ptr<FlowHold> create(uint16_t queue_num);
    ~FlowHold();  // stops the reader; segments still queued are dropped by the kernel
    FlowHold(const FlowHold&) = delete;
    FlowHold& operator=(const FlowHold&) = delete;

    uint16_t queue_num() const { return queue_; }
    // Starts holding the flow's segments (call before the block's element exists).
    void hold(const Key& k);
    // Re-injects the flow's held segments, in arrival order, and stops holding it. Call after
    // the block's element is gone (then no new segment of the flow can be queued). Returns the
    // number re-injected, or -errno if the verdicts could not be sent (the segments are lost
    // then; the client retransmits).
    int release(const Key& k);

    std::atomic<uint64_t> reinjected{0};
    std::atomic<uint64_t> dropped{0};  // over the per-flow cap

private:
    explicit FlowHold(uint16_t q) : queue_(q) {}
    void run();
    void pump();  // reads every queued message now pending (mu_ held)
    void on_packet(uint32_t id, const uint8_t* ip, size_t len);
    int verdicts(const std::vector<uint32_t>& ids, int verdict);

    uint16_t queue_;
    mnl_socket* nl_ = nullptr;
    unsigned portid_ = 0;
    std::mutex mu_;
    std::map<Key, std::vector<uint32_t>> held_;
    std::vector<uint8_t> rbuf_;
    PollThread reader_;  // woken only to stop
};

}  // namespace vpipe::agent
