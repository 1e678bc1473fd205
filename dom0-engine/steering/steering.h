// steering: while a VM's TCP connection is offloaded to a shadow socket in dom0, make the
// flow's frames arriving on dom0's Linux bridge go to dom0's own IP stack instead of the VM.
//
// How (nftables: the table through libnftables once, per flow one map element -- never a rule --
// as one nfnetlink batch on a socket kept open, nft::Link, ~20 us instead of ~0.5 ms):
//
//   table bridge <table>                                   (bridge family, prerouting -300)
//     set  hold4 / hold6   { saddr . sport . daddr . dport }             -> drop
//     map  flows4 / flows6 { saddr . sport . daddr . dport : ether_addr }
//       ether daddr set <tuple> map @flowsN  meta pkttype set host  meta mark set <fwmark>
//
//   The frame from the client to the VM is re-addressed to the MAC of the bridge the VM sits on
//   (a "local" FDB entry), so the bridge passes it up to dom0's stack on the bridge device --
//   the nft form of ebtables' redirect target. (`meta broute set 1` would need nftables >= 1.0.8
//   and CONFIG_NFT_BRIDGE_META; Debian 12 has neither, and broute delivers on the *port*
//   device, which strict rp_filter rejects.) The packet is then addressed to the VM's IP,
//   which is not local in dom0: the fwmark selects `ip rule fwmark <fwmark> lookup <table>`
//   whose only route is `local default dev lo`, so it is delivered locally and the kernel finds
//   the established shadow socket (bound to the VM's address with IP_TRANSPARENT) by its
//   4-tuple. The shadow socket's own packets leave through dom0's routing (the bridge's subnet
//   route) with the VM's source address; nothing needs steering on the way out.
//
//   "hold" drops the client's frames of a flow instead: used while a socket of the flow is
//   frozen (a socket in repair mode still accepts and ACKs segments, which would then be lost).
//
// Not handled here: conntrack/NAT in dom0 (a mid-stream flow is picked up loosely by
// conntrack, if active), firewall INPUT policies in dom0 that would drop the flow.
//
// The object works in the network namespace of the thread that calls create(); call all its
// methods from a thread in that namespace. Not thread-safe: one caller at a time.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "nft/nft_link.h"
#include "vpipe/abi/ring.h"

struct nft_ctx;

namespace vpipe::steering {

// One offloaded connection, seen from the VM: local = the VM's address and port, remote = the
// client's. Ports in host byte order (unlike struct vpipe_tcp_state).
struct FlowKey {
    int family = 0;                        // AF_INET or AF_INET6
    std::array<uint8_t, 16> remote_addr{}; // IPv4 in the first 4 bytes
    uint16_t remote_port = 0;
    std::array<uint8_t, 16> local_addr{};
    uint16_t local_port = 0;

    // from a frozen connection's state (network byte order there)
    static FlowKey from_tcp_state(const vpipe_tcp_state& st);
    std::string to_string() const;  // "10.198.0.3:40000 -> 10.198.0.2:5000"
    friend bool operator==(const FlowKey&, const FlowKey&) = default;
};

class Steering {
public:
    // Creates (replacing a leftover of the same name) the nftables table and the policy
    // routing (`ip rule fwmark <fwmark> lookup <route_table>` + `local default dev lo table
    // <route_table>`, IPv4 and IPv6). Returns nullptr on failure (logged), leaving nothing.
    static std::unique_ptr<Steering> create(const std::string& table = "vpipe", uint32_t fwmark = 0x7670,
                                            uint32_t route_table = 7670);
    ~Steering();  // calls destroy()
    Steering(const Steering&) = delete;
    Steering& operator=(const Steering&) = delete;

    // Steers the flow to dom0's stack (one element; removes a hold of the same flow in the same
    // transaction). Install it only once the shadow socket exists, or dom0 answers with RST.
    // The MAC the frames are re-addressed to is the one of the bridge dom0 routes the VM's
    // address through. -EEXIST if already steered, -ENETUNREACH if that route is not via a
    // bridge, -EINVAL for a malformed key, -EIO for an nft failure.
    int add_flow(const FlowKey& key);
    // Drops the client's frames of the flow (and stops steering it) in one transaction.
    int hold_flow(const FlowKey& key);
    // Stops steering / holding the flow: its frames go to the VM again. -ENOENT if neither.
    int remove_flow(const FlowKey& key);
    // The steered flows (not the held ones).
    int flows(std::vector<FlowKey>* out);
    // Removes the table, the ip rules and the route table contents. Idempotent.
    void destroy();

    const std::string& table() const { return table_; }
    uint32_t fwmark() const { return fwmark_; }
    uint32_t route_table() const { return route_table_; }
    // the last nft error text (for logs and tests)
    const std::string& last_error() const { return last_error_; }

private:
    Steering(std::string table, uint32_t fwmark, uint32_t route_table);
    int run(const std::string& cmd, std::string* out = nullptr);
    int bridge_mac_for(const FlowKey& key, std::array<uint8_t, 6>* mac);
    int set_rules(bool add);
    int commit(nft::Batch& b);

    std::string table_;
    uint32_t fwmark_;
    uint32_t route_table_;
    nft_ctx* nft_ = nullptr;               // creation, listing
    std::unique_ptr<nft::Link> link_;      // per-flow elements
    struct MacCacheEntry {
        int family;
        std::array<uint8_t, 16> addr;
        std::array<uint8_t, 6> mac;
        std::chrono::steady_clock::time_point when;
    };
    std::vector<MacCacheEntry> mac_cache_;
    enum class FlowState { kSteered, kHeld };
    struct KeyLess {
        bool operator()(const FlowKey& a, const FlowKey& b) const {
            return std::tie(a.family, a.remote_addr, a.remote_port, a.local_addr, a.local_port) <
                   std::tie(b.family, b.remote_addr, b.remote_port, b.local_addr, b.local_port);
        }
    };
    std::map<FlowKey, FlowState, KeyLess> state_;
    bool live_ = false;
    std::string last_error_;
};

}  // namespace vpipe::steering
