#include "nft/nft_link.h"

#include <libmnl/libmnl.h>
#include <libnftnl/batch.h>
#include <libnftnl/common.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <atomic>
#include <cerrno>
#include <chrono>

namespace vpipe::nft {
namespace {

// Sequence numbers are unique per process, so a late answer to an earlier (timed out) batch
// can never be taken for this one's.
std::atomic<uint32_t> g_seq{static_cast<uint32_t>(
    std::chrono::steady_clock::now().time_since_epoch().count())};

struct SetDeleter {
    void operator()(nftnl_set* s) const { nftnl_set_free(s); }
};

}  // namespace

Batch::Batch() : b_(nftnl_batch_alloc(MNL_SOCKET_BUFFER_SIZE, MNL_SOCKET_BUFFER_SIZE)) {
    seq_base_ = g_seq.fetch_add(1);
    nftnl_batch_begin(static_cast<char*>(nftnl_batch_buffer(b_)), seq_base_);
    nftnl_batch_update(b_);
}

Batch::~Batch() { nftnl_batch_free(b_); }

void Batch::elements(uint16_t type, uint16_t flags, uint8_t family, const std::string& table,
                     const std::string& set, std::span<const Element> elems) {
    std::unique_ptr<nftnl_set, SetDeleter> s(nftnl_set_alloc());
    nftnl_set_set_str(s.get(), NFTNL_SET_TABLE, table.c_str());
    nftnl_set_set_str(s.get(), NFTNL_SET_NAME, set.c_str());
    for (const Element& e : elems) {
        nftnl_set_elem* el = nftnl_set_elem_alloc();
        nftnl_set_elem_set(el, NFTNL_SET_ELEM_KEY, e.key.data(), static_cast<uint32_t>(e.key.size()));
        if (!e.data.empty())
            nftnl_set_elem_set(el, NFTNL_SET_ELEM_DATA, e.data.data(), static_cast<uint32_t>(e.data.size()));
        nftnl_set_elem_add(s.get(), el);  // the set owns it now
    }
    next_seq_ = g_seq.fetch_add(1);
    nlmsghdr* nlh = nftnl_nlmsg_build_hdr(static_cast<char*>(nftnl_batch_buffer(b_)), type, family,
                                          static_cast<uint16_t>(flags | NLM_F_ACK), next_seq_);
    nftnl_set_elems_nlmsg_build_payload(nlh, s.get());
    nftnl_batch_update(b_);
    ++msgs_;
}

void Batch::add_elements(uint8_t family, const std::string& table, const std::string& set,
                         std::span<const Element> elems, bool exclusive) {
    elements(NFT_MSG_NEWSETELEM, static_cast<uint16_t>(NLM_F_CREATE | (exclusive ? NLM_F_EXCL : 0)), family,
             table, set, elems);
}

void Batch::delete_elements(uint8_t family, const std::string& table, const std::string& set,
                            std::span<const Element> elems) {
    elements(NFT_MSG_DELSETELEM, 0, family, table, set, elems);
}

void Batch::add_rule(nftnl_rule* rule) {
    next_seq_ = g_seq.fetch_add(1);
    const auto family = static_cast<uint16_t>(nftnl_rule_get_u32(rule, NFTNL_RULE_FAMILY));
    nlmsghdr* nlh = nftnl_nlmsg_build_hdr(static_cast<char*>(nftnl_batch_buffer(b_)), NFT_MSG_NEWRULE,
                                          family, NLM_F_CREATE | NLM_F_APPEND | NLM_F_ACK, next_seq_);
    nftnl_rule_nlmsg_build_payload(nlh, rule);
    nftnl_rule_free(rule);
    nftnl_batch_update(b_);
    ++msgs_;
}

void Batch::close(uint32_t seq) {
    if (closed_) return;
    nftnl_batch_end(static_cast<char*>(nftnl_batch_buffer(b_)), seq);
    nftnl_batch_update(b_);
    closed_ = true;
}

std::unique_ptr<Link> Link::open() {
    std::unique_ptr<Link> l(new Link());
    l->nl_ = mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC);
    if (!l->nl_) return nullptr;
    if (mnl_socket_bind(l->nl_, 0, MNL_SOCKET_AUTOPID) < 0) return nullptr;
    l->portid_ = mnl_socket_get_portid(l->nl_);
    l->rbuf_.resize(MNL_SOCKET_BUFFER_SIZE);
    return l;
}

Link::~Link() {
    if (nl_) mnl_socket_close(nl_);
}

int Link::commit(Batch& b) {
    if (b.closed_ || b.msgs_ == 0) return b.msgs_ == 0 ? 0 : -EINVAL;
    b.close(g_seq.fetch_add(1));
    const int n = nftnl_batch_iovec_len(b.b_);
    std::vector<iovec> iov(static_cast<size_t>(n));
    nftnl_batch_iovec(b.b_, iov.data(), static_cast<uint32_t>(n));
    sockaddr_nl kernel{};
    kernel.nl_family = AF_NETLINK;
    msghdr msg{};
    msg.msg_name = &kernel;
    msg.msg_namelen = sizeof(kernel);
    msg.msg_iov = iov.data();
    msg.msg_iovlen = iov.size();
    if (::sendmsg(mnl_socket_get_fd(nl_), &msg, 0) < 0) return -errno;
    // Every message asked for an ACK; the kernel answers each one (an error for the failing one
    // and, the batch aborted, for none after it being applied). Wait for the last message's.
    const uint32_t first = b.seq_base_, last = b.next_seq_;
    int first_err = 0;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
    for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        pollfd p{mnl_socket_get_fd(nl_), POLLIN, 0};
        int pr = left.count() > 0 ? ::poll(&p, 1, static_cast<int>(left.count())) : 0;
        if (pr < 0 && errno == EINTR) continue;
        if (pr <= 0) return first_err ? first_err : -ETIMEDOUT;
        ssize_t got = ::recv(p.fd, rbuf_.data(), rbuf_.size(), MSG_DONTWAIT);
        if (got < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            return -errno;
        }
        for (auto* h = reinterpret_cast<nlmsghdr*>(rbuf_.data()); NLMSG_OK(h, static_cast<uint32_t>(got));
             h = NLMSG_NEXT(h, got)) {
            if (h->nlmsg_type != NLMSG_ERROR) continue;
            // sequence numbers wrap: compare as distances from the batch's first
            const uint32_t off = h->nlmsg_seq - first;
            if (off > last - first) continue;  // an answer to an earlier batch
            const int err = reinterpret_cast<nlmsgerr*>(NLMSG_DATA(h))->error;
            if (err && !first_err) first_err = err;
            // the last message's answer, or one about the whole batch (its BEGIN: e.g. ENOMEM)
            if (h->nlmsg_seq == last || (err && h->nlmsg_seq == first)) return first_err;
        }
    }
}

}  // namespace vpipe::nft
