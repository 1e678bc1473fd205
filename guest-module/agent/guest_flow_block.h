// GuestFlowBlock: the paper's guest packet filter. While one of the VM's connections is handed
// over to dom0 (frozen here, live in a dom0 shadow socket, then restored here), the VM's own
// stack must neither see nor answer the flow's segments: a frozen socket still ACKs incoming
// data (which would then be lost) and a disconnected one answers with RST.
//
// nftables in the agent's network namespace, through libnftables in-process (no fork+exec):
//
//   table inet vpipe_guest
//     set flows4 { ipv4_addr . inet_service . ipv4_addr . inet_service }   local . lport . remote . rport
//     chain input  (filter hook input  priority -300): ip daddr . tcp dport . ip saddr . tcp sport @flows4 drop
//     chain output (filter hook output priority -300): ip saddr . tcp sport . ip daddr . tcp dport @flows4 drop
//
// One set element per blocked flow; the table is created once (replacing a leftover of a
// crashed agent) and removed by destroy(). Thread-safe.
//
// Elements are added / deleted with one nfnetlink batch on a netlink socket kept open
// (NFT_MSG_NEWSETELEM / DELSETELEM, ~20 us) rather than through libnftables, which parses the
// command and re-reads the ruleset on every call (~0.5 ms of guest CPU per call, twice per
// hand-over). libnftables stays the fallback and creates / removes the table.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include <vpipe/abi/ring.h>

struct nft_ctx;

namespace vpipe::agent {

class GuestFlowBlock {
public:
    // Creates the table. nullptr (logged) if nftables is unusable here.
    static std::unique_ptr<GuestFlowBlock> create(const std::string& table = "vpipe_guest");
    ~GuestFlowBlock();  // destroy()
    GuestFlowBlock(const GuestFlowBlock&) = delete;
    GuestFlowBlock& operator=(const GuestFlowBlock&) = delete;

    // Blocks / unblocks the flow of a (frozen) connection, IPv4 only. 0 or -errno
    // (-EEXIST already blocked, -ENOENT not blocked, -EAFNOSUPPORT IPv6, -EIO nft failure).
    int block(const vpipe_tcp_state& st);
    int unblock(const vpipe_tcp_state& st);
    // Number of flows blocked now.
    int blocked() const;
    void destroy();

private:
    explicit GuestFlowBlock(std::string table) : table_(std::move(table)) {}
    int run(const std::string& cmd);
    int set_element(bool add, const vpipe_tcp_state& st);  // the netlink fast path; 0 / -errno

    std::string table_;
    mutable std::mutex mu_;
    nft_ctx* nft_ = nullptr;
    int blocked_ = 0;
    bool live_ = false;
    int nl_ = -1;          // NETLINK_NETFILTER socket (fast path), -1: libnftables only
    uint32_t nl_seq_ = 0;
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
