#include "guest_flow_block.h"

#include <arpa/inet.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <nftables/libnftables.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

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

// A netlink message under construction (attributes nest by remembering their offsets).
class NlMsg {
public:
    size_t begin(uint16_t type, uint16_t flags, uint32_t seq, uint8_t family, uint16_t res_id) {
        size_t at = buf_.size();
        nlmsghdr h{};
        h.nlmsg_type = type;
        h.nlmsg_flags = flags;
        h.nlmsg_seq = seq;
        put(&h, sizeof(h));
        nfgenmsg g{};
        g.nfgen_family = family;
        g.version = NFNETLINK_V0;
        g.res_id = htons(res_id);
        put(&g, sizeof(g));
        return at;
    }
    void end(size_t at) { hdr(at)->nlmsg_len = static_cast<uint32_t>(buf_.size() - at); }
    void attr(uint16_t type, const void* data, size_t n) {
        nlattr a{};
        a.nla_type = type;
        a.nla_len = static_cast<uint16_t>(NLA_HDRLEN + n);
        put(&a, sizeof(a));
        put(data, n);
        buf_.resize(NLMSG_ALIGN(buf_.size()));
    }
    void str(uint16_t type, const std::string& s) { attr(type, s.c_str(), s.size() + 1); }
    size_t nest(uint16_t type) {
        size_t at = buf_.size();
        nlattr a{};
        a.nla_type = static_cast<uint16_t>(type | NLA_F_NESTED);
        put(&a, sizeof(a));
        return at;
    }
    void nest_end(size_t at) {
        reinterpret_cast<nlattr*>(buf_.data() + at)->nla_len = static_cast<uint16_t>(buf_.size() - at);
    }
    const uint8_t* data() const { return buf_.data(); }
    size_t size() const { return buf_.size(); }

private:
    nlmsghdr* hdr(size_t at) { return reinterpret_cast<nlmsghdr*>(buf_.data() + at); }
    void put(const void* p, size_t n) {
        auto* b = static_cast<const uint8_t*>(p);
        buf_.insert(buf_.end(), b, b + n);
    }
    std::vector<uint8_t> buf_;
};

}  // namespace

int GuestFlowBlock::set_element(bool add, const vpipe_tcp_state& st) {
    if (nl_ < 0) return -EOPNOTSUPP;
    // the set's key: local . lport . remote . rport, each field in a 4-byte register
    uint8_t key[16] = {};
    std::memcpy(key, st.local_addr, 4);
    std::memcpy(key + 4, &st.local_port, 2);
    std::memcpy(key + 8, st.remote_addr, 4);
    std::memcpy(key + 12, &st.remote_port, 2);
    const uint32_t seq = ++nl_seq_;
    NlMsg m;
    size_t b = m.begin(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, AF_UNSPEC, NFNL_SUBSYS_NFTABLES);
    m.end(b);
    const uint16_t type = static_cast<uint16_t>((NFNL_SUBSYS_NFTABLES << 8) | (add ? NFT_MSG_NEWSETELEM : NFT_MSG_DELSETELEM));
    size_t e = m.begin(type, static_cast<uint16_t>(NLM_F_REQUEST | NLM_F_ACK | (add ? NLM_F_CREATE : 0)), seq + 1,
                       NFPROTO_INET, 0);
    m.str(NFTA_SET_ELEM_LIST_TABLE, table_);
    m.str(NFTA_SET_ELEM_LIST_SET, "flows4");
    size_t list = m.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
    size_t el = m.nest(NFTA_LIST_ELEM);
    size_t k = m.nest(NFTA_SET_ELEM_KEY);
    m.attr(NFTA_DATA_VALUE, key, sizeof(key));
    m.nest_end(k);
    m.nest_end(el);
    m.nest_end(list);
    m.end(e);
    size_t f = m.begin(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 2, AF_UNSPEC, NFNL_SUBSYS_NFTABLES);
    m.end(f);
    nl_seq_ += 2;
    sockaddr_nl k0{};
    k0.nl_family = AF_NETLINK;
    if (::sendto(nl_, m.data(), m.size(), 0, reinterpret_cast<sockaddr*>(&k0), sizeof(k0)) < 0) return -errno;
    // the ACK (or error) of the element message
    alignas(nlmsghdr) uint8_t rb[8192];
    for (int i = 0; i < 8; ++i) {
        ssize_t n = ::recv(nl_, rb, sizeof(rb), 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        for (auto* h = reinterpret_cast<nlmsghdr*>(rb); NLMSG_OK(h, static_cast<uint32_t>(n)); h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_type != NLMSG_ERROR || h->nlmsg_seq != seq + 1) continue;
            return reinterpret_cast<nlmsgerr*>(NLMSG_DATA(h))->error;  // 0 or -errno
        }
    }
    return -EIO;
}

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
    // the fast path; without it (or if its first use fails) every call goes through libnftables
    int fd = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
    if (fd >= 0) {
        sockaddr_nl a{};
        a.nl_family = AF_NETLINK;
        timeval tv{1, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0) {
            b->nl_ = fd;
        } else {
            ::close(fd);
        }
    }
    return b;
}

GuestFlowBlock::~GuestFlowBlock() {
    destroy();
    if (nft_) nft_ctx_free(nft_);
    if (nl_ >= 0) ::close(nl_);
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
    int r = set_element(true, st);
    if (r != 0) {
        if (r != -EOPNOTSUPP) spdlog::debug("guest flow block: netlink add: {}; using libnftables", std::strerror(-r));
        r = run("add element inet " + table_ + " flows4 { " + element(st) + " }");
    }
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
    if (r != 0 && r != -ENOENT) r = run("delete element inet " + table_ + " flows4 { " + element(st) + " }");
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
