#include "guest_flow_block.h"

#include <arpa/inet.h>
#include <libnftnl/expr.h>
#include <libnftnl/rule.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/xt_NFQUEUE.h>
#include <netinet/in.h>
#include <nftables/libnftables.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "nft/nft_link.h"

#include <spdlog/spdlog.h>

namespace vpipe::agent {
namespace {

std::string element(const vpipe_tcp_state& st) {
    char l[INET_ADDRSTRLEN] = {}, r[INET_ADDRSTRLEN] = {};
    inet_ntop(AF_INET, st.local_addr, l, sizeof(l));
    inet_ntop(AF_INET, st.remote_addr, r, sizeof(r));
    return std::string(l) + " . " + std::to_string(ntohs(st.local_port)) + " . " + r + " . " +
           std::to_string(ntohs(st.remote_port));
}

// the set's key: local . lport . remote . rport, each field in a 4-byte register
FlowHold::Key set_key(const vpipe_tcp_state& st) {
    FlowHold::Key key{};
    std::memcpy(key.data(), st.local_addr, 4);
    std::memcpy(key.data() + 4, &st.local_port, 2);
    std::memcpy(key.data() + 8, st.remote_addr, 4);
    std::memcpy(key.data() + 12, &st.remote_port, 2);
    return key;
}

}  // namespace

int GuestFlowBlock::set_element(bool add, const vpipe_tcp_state& st) {
    if (!link_) return -EOPNOTSUPP;
    const FlowHold::Key k = set_key(st);
    const nft::Element e{std::vector<uint8_t>(k.begin(), k.end()), {}};
    nft::Batch b;
    if (add)
        b.add_elements(NFPROTO_IPV4, table_, "flows4", {&e, 1});
    else
        b.delete_elements(NFPROTO_IPV4, table_, "flows4", {&e, 1});
    return link_->commit(b);
}

// input: ip daddr . tcp dport . ip saddr . tcp sport @flows4 -> xtables NFQUEUE (no bypass).
// nft's own `queue` statement is a kernel option of its own (CONFIG_NFT_QUEUE), missing from
// some kernels (this project's lab host among them); the xtables target through nft_compat is
// what iptables-nft uses and exists wherever iptables does. Text cannot express it.
int GuestFlowBlock::add_queue_rule(uint16_t queue) {
    if (!link_) return -EOPNOTSUPP;
    nftnl_rule* r = nftnl_rule_alloc();
    nftnl_rule_set_u32(r, NFTNL_RULE_FAMILY, NFPROTO_IPV4);
    nftnl_rule_set_str(r, NFTNL_RULE_TABLE, table_.c_str());
    nftnl_rule_set_str(r, NFTNL_RULE_CHAIN, "input");
    auto add = [&](const char* name, auto&& set) {
        nftnl_expr* e = nftnl_expr_alloc(name);
        set(e);
        nftnl_rule_add_expr(r, e);
    };
    add("meta", [](nftnl_expr* e) {
        nftnl_expr_set_u32(e, NFTNL_EXPR_META_KEY, NFT_META_L4PROTO);
        nftnl_expr_set_u32(e, NFTNL_EXPR_META_DREG, NFT_REG_1);
    });
    add("cmp", [](nftnl_expr* e) {
        const uint8_t tcp = IPPROTO_TCP;
        nftnl_expr_set_u32(e, NFTNL_EXPR_CMP_SREG, NFT_REG_1);
        nftnl_expr_set_u32(e, NFTNL_EXPR_CMP_OP, NFT_CMP_EQ);
        nftnl_expr_set(e, NFTNL_EXPR_CMP_DATA, &tcp, 1);
    });
    // the set's key, one field per 32-bit register (a 2-byte port load zero-pads its register)
    struct Field { uint32_t base, offset, len, reg; };
    const Field key[] = {
        {NFT_PAYLOAD_NETWORK_HEADER, 16, 4, NFT_REG32_00},    // ip daddr (the VM)
        {NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, NFT_REG32_01},   // tcp dport
        {NFT_PAYLOAD_NETWORK_HEADER, 12, 4, NFT_REG32_02},    // ip saddr (the peer)
        {NFT_PAYLOAD_TRANSPORT_HEADER, 0, 2, NFT_REG32_03},   // tcp sport
    };
    for (const Field& f : key)
        add("payload", [&](nftnl_expr* e) {
            nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_BASE, f.base);
            nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_OFFSET, f.offset);
            nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_LEN, f.len);
            nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_DREG, f.reg);
        });
    add("lookup", [](nftnl_expr* e) {
        nftnl_expr_set_u32(e, NFTNL_EXPR_LOOKUP_SREG, NFT_REG32_00);
        nftnl_expr_set_str(e, NFTNL_EXPR_LOOKUP_SET, "flows4");
    });
    add("target", [&](nftnl_expr* e) {
        xt_NFQ_info_v3 info{};
        info.queuenum = queue;
        info.queues_total = 1;
        info.flags = 0;  // no bypass: without a listener the kernel drops, as the block must
        nftnl_expr_set_str(e, NFTNL_EXPR_TG_NAME, "NFQUEUE");
        nftnl_expr_set_u32(e, NFTNL_EXPR_TG_REV, 3);
        // libnftnl keeps the pointer (and frees it with the expression)
        void* copy = std::malloc(sizeof(info));
        std::memcpy(copy, &info, sizeof(info));
        nftnl_expr_set(e, NFTNL_EXPR_TG_INFO, copy, sizeof(info));
    });
    nft::Batch b;
    b.add_rule(r);
    return link_->commit(b);
}

int GuestFlowBlock::remove_leftover(const std::string& table) {
    nft_ctx* n = nft_ctx_new(NFT_CTX_DEFAULT);
    if (!n) return -ENOMEM;
    nft_ctx_buffer_output(n);
    nft_ctx_buffer_error(n);
    // "destroy" would need nftables 1.0.8; delete of an absent table fails, which is fine
    const std::string cmd = "delete table ip " + table;
    const bool removed = nft_run_cmd_from_buffer(n, cmd.c_str()) == 0;
    nft_ctx_free(n);
    if (removed) spdlog::info("guest flow block: removed table ip {} left by a previous agent", table);
    return 0;
}

std::unique_ptr<GuestFlowBlock> GuestFlowBlock::create(const std::string& table, int hold_queue) {
    std::unique_ptr<GuestFlowBlock> b(new GuestFlowBlock(table));
    b->nft_ = nft_ctx_new(NFT_CTX_DEFAULT);
    if (!b->nft_) {
        spdlog::warn("guest flow block: no nftables context");
        return nullptr;
    }
    const std::string& t = b->table_;
    // a leftover of a crashed agent goes first (its elements are stale)
    b->run("delete table ip " + t);
    const std::string cmd =
        "add table ip " + t + "\n"
        "add set ip " + t + " flows4 { type ipv4_addr . inet_service . ipv4_addr . inet_service; }\n"
        "add chain ip " + t + " input { type filter hook input priority -300; policy accept; }\n"
        "add chain ip " + t + " output { type filter hook output priority -300; policy accept; }\n"
        "add rule ip " + t + " output ip saddr . tcp sport . ip daddr . tcp dport @flows4 drop\n";
    if (b->run(cmd) < 0) {
        spdlog::warn("guest flow block: cannot create table ip {}", t);
        return nullptr;
    }
    b->live_ = true;
    b->link_ = nft::Link::open();  // per-flow elements; without it, libnftables
    // Incoming segments are held for re-injection (FlowHold); without a queue, dropped.
    if (hold_queue >= 0) b->hold_ = FlowHold::create(static_cast<uint16_t>(hold_queue));
    const std::string match = "add rule ip " + t + " input ip daddr . tcp dport . ip saddr . tcp sport @flows4 ";
    int r = -EOPNOTSUPP;
    if (b->hold_) {
        r = b->add_queue_rule(static_cast<uint16_t>(hold_queue));
        if (r < 0) r = b->run(match + "queue num " + std::to_string(hold_queue));
        if (r < 0) b->hold_.reset();
    }
    if (!b->hold_) {
        if (hold_queue >= 0)
            spdlog::warn("guest flow block: segments of handed-over flows are dropped, not held (the "
                         "client retransmits them after its timeout)");
        if (b->run(match + "drop") < 0) {
            b->destroy();
            return nullptr;
        }
    }
    return b;
}

GuestFlowBlock::~GuestFlowBlock() {
    destroy();
    if (nft_) nft_ctx_free(nft_);
}

int GuestFlowBlock::run(const std::string& cmd) {
    nft_ctx_buffer_output(nft_);
    nft_ctx_buffer_error(nft_);
    int r = nft_run_cmd_from_buffer(nft_, cmd.c_str());
    const char* e = nft_ctx_get_error_buffer(nft_);
    std::string err = e ? e : "";
    nft_ctx_unbuffer_output(nft_);
    nft_ctx_unbuffer_error(nft_);
    if (r != 0) {
        spdlog::debug("nft '{}': {}", cmd.substr(0, 120), err);
        if (err.find("File exists") != std::string::npos) return -EEXIST;
        if (err.find("No such file") != std::string::npos) return -ENOENT;
        return -EIO;
    }
    return 0;
}

int GuestFlowBlock::block(const vpipe_tcp_state& st) {
    if (st.family != VPIPE_AF_INET) return -EAFNOSUPPORT;
    std::lock_guard lk(mu_);
    if (!live_) return -EIO;
    if (hold_) hold_->hold(set_key(st));
    int r = set_element(true, st);
    if (r != 0) {
        if (r != -EOPNOTSUPP) spdlog::debug("guest flow block: netlink add: {}; using libnftables", std::strerror(-r));
        r = run("add element ip " + table_ + " flows4 { " + element(st) + " }");
    }
    if (r != 0 && hold_) hold_->release(set_key(st));
    if (r == 0) {
        // "add element" of an existing element succeeds silently: count only new ones
        ++blocked_;
    }
    return r;
}

int GuestFlowBlock::unblock(const vpipe_tcp_state& st) {
    if (st.family != VPIPE_AF_INET) return -EAFNOSUPPORT;
    std::lock_guard lk(mu_);
    if (!live_) return -EIO;
    int r = set_element(false, st);
    if (r != 0 && r != -ENOENT) r = run("delete element ip " + table_ + " flows4 { " + element(st) + " }");
    if (r == 0 && blocked_ > 0) --blocked_;
    // the element is gone: no new segment of the flow is queued; the held ones go on now
    if (r == 0 && hold_) hold_->release(set_key(st));
    if (r < 0) spdlog::warn("guest flow block: cannot unblock {}: {}", element(st), std::strerror(-r));
    return r;
}

int GuestFlowBlock::blocked() const {
    std::lock_guard lk(mu_);
    return blocked_;
}

void GuestFlowBlock::destroy() {
    std::lock_guard lk(mu_);
    if (!live_) return;
    run("delete table ip " + table_);
    live_ = false;
    hold_.reset();  // whatever was still held is dropped with the queue
}

}  // namespace vpipe::agent
