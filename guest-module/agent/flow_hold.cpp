#include "flow_hold.h"

#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

extern "C" {
#include <libnetfilter_queue/libnetfilter_queue.h>
}

#include <spdlog/spdlog.h>

namespace vpipe::agent {
namespace {

// Only the IPv4 header (<= 60 bytes) and the TCP ports are looked at.
constexpr int kCopyRange = 64;

int send_config(mnl_socket* nl, uint16_t queue, uint8_t cmd) {
    char buf[MNL_SOCKET_BUFFER_SIZE];
    nlmsghdr* nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, queue);
    nfq_nlmsg_cfg_put_cmd(nlh, AF_INET, cmd);
    nlh->nlmsg_flags |= NLM_F_ACK;
    return mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0 ? -errno : 0;
}

// The ACK (or error) of the last config message.
int read_ack(mnl_socket* nl, unsigned portid) {
    char buf[MNL_SOCKET_BUFFER_SIZE];
    for (;;) {
        ssize_t n = mnl_socket_recvfrom(nl, buf, sizeof(buf));
        if (n < 0) return errno == EINTR ? 0 : -errno;
        int r = mnl_cb_run(buf, static_cast<size_t>(n), 0, portid, nullptr, nullptr);
        if (r <= MNL_CB_ERROR) return -errno;
        if (r == MNL_CB_STOP) return 0;
    }
}

}  // namespace

std::unique_ptr<FlowHold> FlowHold::create(uint16_t queue_num) {
    std::unique_ptr<FlowHold> h;
    try {
        h.reset(new FlowHold(queue_num));
    } catch (const std::system_error&) {
        return nullptr;  // no eventfd for the reader
    }
    h->nl_ = mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC);
    if (!h->nl_ || mnl_socket_bind(h->nl_, 0, MNL_SOCKET_AUTOPID) < 0) {
        spdlog::warn("flow hold: no netfilter netlink socket: {}", std::strerror(errno));
        return nullptr;
    }
    h->portid_ = mnl_socket_get_portid(h->nl_);
    int r = send_config(h->nl_, queue_num, NFQNL_CFG_CMD_BIND);
    if (r == 0) r = read_ack(h->nl_, h->portid_);
    if (r < 0) {
        // EBUSY: another process in this namespace owns the queue
        spdlog::warn("flow hold: cannot bind NFQUEUE {}: {}", queue_num, std::strerror(-r));
        return nullptr;
    }
    {
        char buf[MNL_SOCKET_BUFFER_SIZE];
        nlmsghdr* nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, queue_num);
        nfq_nlmsg_cfg_put_params(nlh, NFQNL_COPY_PACKET, kCopyRange);
        // GSO packets are queued whole (not segmented for us); the queue is bounded in the
        // kernel too (a full queue drops, it never fails open)
        mnl_attr_put_u32(nlh, NFQA_CFG_FLAGS, htonl(NFQA_CFG_F_GSO));
        mnl_attr_put_u32(nlh, NFQA_CFG_MASK, htonl(NFQA_CFG_F_GSO));
        nfq_nlmsg_cfg_put_qmaxlen(nlh, 8192);
        nlh->nlmsg_flags |= NLM_F_ACK;
        if (mnl_socket_sendto(h->nl_, nlh, nlh->nlmsg_len) < 0 || (r = read_ack(h->nl_, h->portid_)) < 0) {
            spdlog::warn("flow hold: cannot configure NFQUEUE {}", queue_num);
            return nullptr;
        }
    }
    int one = 1;
    mnl_socket_setsockopt(h->nl_, NETLINK_NO_ENOBUFS, &one, sizeof(one));
    int rcvbuf = 4 << 20;
    setsockopt(mnl_socket_get_fd(h->nl_), SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf));
    h->rbuf_.resize(MNL_SOCKET_BUFFER_SIZE * 4);
    h->reader_.start([p = h.get()] { p->run(); });
    return h;
}

FlowHold::~FlowHold() {
    reader_.stop();
    if (nl_) {
        send_config(nl_, queue_, NFQNL_CFG_CMD_UNBIND);
        mnl_socket_close(nl_);
    }
}

void FlowHold::run() {
    pollfd p[2] = {{mnl_socket_get_fd(nl_), POLLIN, 0}, {reader_.wake_fd(), POLLIN, 0}};
    for (;;) {
        if (::poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            spdlog::error("flow hold: poll: {}", std::strerror(errno));
            return;
        }
        if (p[1].revents) return;
        std::lock_guard lk(mu_);
        pump();
    }
}

void FlowHold::pump() {
    for (;;) {
        ssize_t n = ::recv(mnl_socket_get_fd(nl_), rbuf_.data(), rbuf_.size(), MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) continue;
            return;  // EAGAIN: nothing more pending
        }
        mnl_cb_run(
            rbuf_.data(), static_cast<size_t>(n), 0, portid_,
            [](const nlmsghdr* nlh, void* self) {
                nlattr* attr[NFQA_MAX + 1] = {};
                if (nfq_nlmsg_parse(nlh, attr) < 0 || !attr[NFQA_PACKET_HDR] || !attr[NFQA_PAYLOAD])
                    return MNL_CB_OK;  // not a packet (or malformed): nothing to answer
                auto* ph = static_cast<nfqnl_msg_packet_hdr*>(mnl_attr_get_payload(attr[NFQA_PACKET_HDR]));
                static_cast<FlowHold*>(self)->on_packet(
                    ntohl(ph->packet_id), static_cast<const uint8_t*>(mnl_attr_get_payload(attr[NFQA_PAYLOAD])),
                    mnl_attr_get_payload_len(attr[NFQA_PAYLOAD]));
                return MNL_CB_OK;
            },
            this);
    }
}

void FlowHold::on_packet(uint32_t id, const uint8_t* pkt, size_t len) {
    Key k{};
    bool parsed = false;
    if (len >= sizeof(iphdr)) {
        iphdr ip;
        std::memcpy(&ip, pkt, sizeof(ip));
        const size_t ihl = ip.ihl * 4u;
        if (ip.version == 4 && ip.protocol == IPPROTO_TCP && ihl >= sizeof(iphdr) && len >= ihl + 4) {
            std::memcpy(k.data(), &ip.daddr, 4);      // local: the VM's side
            std::memcpy(k.data() + 4, pkt + ihl + 2, 2);
            std::memcpy(k.data() + 8, &ip.saddr, 4);  // remote: the client
            std::memcpy(k.data() + 12, pkt + ihl, 2);
            parsed = true;
        }
    }
    auto it = parsed ? held_.find(k) : held_.end();
    if (it == held_.end()) {
        // released meanwhile (or not ours): on its way
        verdicts({id}, NF_ACCEPT);
        return;
    }
    if (it->second.size() >= kMaxHeldPerFlow) {
        dropped++;
        verdicts({id}, NF_DROP);
        return;
    }
    it->second.push_back(id);
}

int FlowHold::verdicts(const std::vector<uint32_t>& ids, int verdict) {
    // several verdict messages per datagram
    std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE);
    size_t at = 0;
    int err = 0;
    auto flush = [&] {
        if (at && mnl_socket_sendto(nl_, buf.data(), at) < 0) err = -errno;
        at = 0;
    };
    for (uint32_t id : ids) {
        if (at + 64 > buf.size()) flush();
        nlmsghdr* nlh = nfq_nlmsg_put(buf.data() + at, NFQNL_MSG_VERDICT, queue_);
        nfq_nlmsg_verdict_put(nlh, static_cast<int>(id), verdict);
        at += NLMSG_ALIGN(nlh->nlmsg_len);
    }
    flush();
    return err;
}

void FlowHold::hold(const Key& k) {
    std::lock_guard lk(mu_);
    held_.try_emplace(k);
}

int FlowHold::release(const Key& k) {
    std::lock_guard lk(mu_);
    // segments queued before the element went away may still sit in the socket: read them
    pump();
    auto it = held_.find(k);
    if (it == held_.end()) return 0;
    std::vector<uint32_t> ids = std::move(it->second);
    held_.erase(it);
    if (int r = verdicts(ids, NF_ACCEPT); r < 0) {
        spdlog::warn("flow hold: re-injecting {} segments failed: {}", ids.size(), std::strerror(-r));
        return r;
    }
    reinjected += ids.size();
    return static_cast<int>(ids.size());
}

}  // namespace vpipe::agent
