#include "guest_flow_block.h"

#include <arpa/inet.h>
#include <nftables/libnftables.h>

#include <cerrno>
#include <cstring>

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

}  // namespace

std::unique_ptr<GuestFlowBlock> GuestFlowBlock::create(const std::string& table) {
    std::unique_ptr<GuestFlowBlock> b(new GuestFlowBlock(table));
    b->nft_ = nft_ctx_new(NFT_CTX_DEFAULT);
    if (!b->nft_) {
        spdlog::warn("guest flow block: no nftables context");
        return nullptr;
    }
    const std::string& t = b->table_;
    // a leftover of a crashed agent goes first (its elements are stale)
    b->run("delete table inet " + t);
    const std::string cmd =
        "add table inet " + t + "\n"
        "add set inet " + t + " flows4 { type ipv4_addr . inet_service . ipv4_addr . inet_service; }\n"
        "add chain inet " + t + " input { type filter hook input priority -300; policy accept; }\n"
        "add chain inet " + t + " output { type filter hook output priority -300; policy accept; }\n"
        "add rule inet " + t + " input ip daddr . tcp dport . ip saddr . tcp sport @flows4 drop\n"
        "add rule inet " + t + " output ip saddr . tcp sport . ip daddr . tcp dport @flows4 drop\n";
    if (b->run(cmd) < 0) {
        spdlog::warn("guest flow block: cannot create table inet {}", t);
        return nullptr;
    }
    b->live_ = true;
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
    int r = run("add element inet " + table_ + " flows4 { " + element(st) + " }");
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
    int r = run("delete element inet " + table_ + " flows4 { " + element(st) + " }");
    if (r == 0 && blocked_ > 0) --blocked_;
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
    run("delete table inet " + table_);
    live_ = false;
}

}  // namespace vpipe::agent
