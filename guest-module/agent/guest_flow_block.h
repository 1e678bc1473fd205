// GuestFlowBlock: the paper's guest packet filter. While one of the VM's connections is handed
// over to dom0 (frozen here, live in a dom0 shadow socket, then restored here), the VM's own
// stack must neither see nor answer the flow's segments: a frozen socket still ACKs incoming
// data (which would then be lost) and a disconnected one answers with RST.
//
// nftables in the agent's network namespace:
//
//   table ip vpipe_guest
//     set flows4 { ipv4_addr . inet_service . ipv4_addr . inet_service }   local . lport . remote . rport
//     chain input  (filter hook input  priority -300): ip daddr . tcp dport . ip saddr . tcp sport @flows4
//                  -> xtables NFQUEUE N (held by FlowHold, re-injected at unblock);
//                     nft `queue num N` where nft_compat is missing; `drop` without NFQUEUE
//     chain output (filter hook output priority -300): ip saddr . tcp sport . ip daddr . tcp dport @flows4 drop
//
// One set element per blocked flow; the table is created once with libnftables (replacing a
// leftover of a crashed agent) and removed by destroy(). Elements are added / deleted with one
// nfnetlink batch on a socket kept open (nft::Link, ~20 us) rather than through libnftables,
// which parses the command and re-reads the ruleset on every call (~0.5 ms of guest CPU per
// call, twice per hand-over); libnftables stays the fallback. Thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include <vpipe/abi/ring.h>

#include "flow_hold.h"
#include "nft/nft_link.h"

struct nft_ctx;

namespace vpipe::agent {

class GuestFlowBlock {
public:
    // Creates the table; incoming segments of blocked flows are held in NFQUEUE `hold_queue`
    // (-1: dropped). nullptr (logged) if nftables is unusable here.
    static std::unique_ptr<GuestFlowBlock> create(const std::string& table = "vpipe_guest",
                                                  int hold_queue = kDefaultHoldQueue);
    static constexpr int kDefaultHoldQueue = 7670;
    // Removes the table a crashed agent left (its per-flow elements are stale: their
    // connections died with it), at start, before the first socket offload creates it again.
    // 0, or -errno if nftables is unusable here; absent is 0.
    static int remove_leftover(const std::string& table = "vpipe_guest");
    ~GuestFlowBlock();  // destroy()
    GuestFlowBlock(const GuestFlowBlock&) = delete;
    GuestFlowBlock& operator=(const GuestFlowBlock&) = delete;

    // Blocks / unblocks the flow of a (frozen) connection, IPv4 only; unblock re-injects the
    // segments held meanwhile (call it once the restored socket exists). 0 or -errno
    // (-EEXIST already blocked, -ENOENT not blocked, -EAFNOSUPPORT IPv6, -EIO nft failure).
    int block(const vpipe_tcp_state& st);
    int unblock(const vpipe_tcp_state& st);
    // Number of flows blocked now.
    int blocked() const;
    // Segments held and re-injected so far (0 without a hold).
    uint64_t reinjected() const { return hold_ ? hold_->reinjected.load() : 0; }
    void destroy();

private:
    explicit GuestFlowBlock(std::string table) : table_(std::move(table)) {}
    int run(const std::string& cmd);
    int set_element(bool add, const vpipe_tcp_state& st);  // the netlink fast path; 0 / -errno
    int add_queue_rule(uint16_t queue);

    std::string table_;
    mutable std::mutex mu_;
    nft_ctx* nft_ = nullptr;
    int blocked_ = 0;
    bool live_ = false;
    std::unique_ptr<nft::Link> link_;  // the fast path; nullptr: libnftables only
    std::unique_ptr<FlowHold> hold_;  // nullptr: segments are dropped
};

// RAII: one blocked flow; unblocks on destruction unless released.
class FlowBlockGuard {
public:
    FlowBlockGuard() = default;
    FlowBlockGuard(GuestFlowBlock* b, const vpipe_tcp_state& st) : b_(b), st_(st) {}
    FlowBlockGuard(FlowBlockGuard&& o) noexcept : b_(o.b_), st_(o.st_) { o.b_ = nullptr; }
    FlowBlockGuard& operator=(FlowBlockGuard&& o) noexcept {
        if (this != &o) {
            reset();
            b_ = o.b_;
            st_ = o.st_;
            o.b_ = nullptr;
        }
        return *this;
    }
    ~FlowBlockGuard() { reset(); }
    void reset() {
        if (b_) b_->unblock(st_);
        b_ = nullptr;
    }
    explicit operator bool() const { return b_ != nullptr; }

private:
    GuestFlowBlock* b_ = nullptr;
    vpipe_tcp_state st_{};
};

}  // namespace vpipe::agent
