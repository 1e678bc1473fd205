// steering: see steering.h.
#include "steering/steering.h"

#include <arpa/inet.h>
#include <linux/ethtool.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <nftables/libnftables.h>
#include <spawn.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>

#include <linux/netfilter.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "nft/nft_link.h"
#include "util/unique_fd.h"

extern char** environ;

namespace vpipe::steering {
namespace {

std::string addr_str(int family, const std::array<uint8_t, 16>& a) {
    char buf[INET6_ADDRSTRLEN] = {};
    inet_ntop(family, a.data(), buf, sizeof(buf));
    return buf;
}

bool valid(const FlowKey& k) {
    return (k.family == AF_INET || k.family == AF_INET6) && k.remote_port != 0 && k.local_port != 0;
}

// The element key as the sets store it: saddr . sport . daddr . dport of the client's packets,
// each port in network order padded to a 4-byte register.
std::vector<uint8_t> elem_key(const FlowKey& k) {
    const size_t alen = k.family == AF_INET ? 4 : 16;
    std::vector<uint8_t> key(2 * alen + 8, 0);
    const uint16_t rp = htons(k.remote_port), lp = htons(k.local_port);
    memcpy(key.data(), k.remote_addr.data(), alen);
    memcpy(key.data() + alen, &rp, 2);
    memcpy(key.data() + alen + 4, k.local_addr.data(), alen);
    memcpy(key.data() + 2 * alen + 4, &lp, 2);
    return key;
}

int run_argv(const std::vector<std::string>& args, bool quiet_fail) {
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    if (quiet_fail) posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    int r = posix_spawnp(&pid, argv[0], &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (r != 0) return -r;
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) return -errno;
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EIO;
}

// rtnetlink RTM_GETROUTE: the output interface dom0 uses towards `addr`
int route_oif(int family, const std::array<uint8_t, 16>& addr, int* oif) {
    UniqueFd s(socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE));
    if (!s) return -errno;
    struct {
        nlmsghdr nh;
        rtmsg rt;
        char attrs[64];
    } req{};
    const int alen = family == AF_INET ? 4 : 16;
    req.nh.nlmsg_len = NLMSG_LENGTH(sizeof(rtmsg));
    req.nh.nlmsg_type = RTM_GETROUTE;
    req.nh.nlmsg_flags = NLM_F_REQUEST;
    req.nh.nlmsg_seq = 1;
    req.rt.rtm_family = static_cast<unsigned char>(family);
    req.rt.rtm_dst_len = static_cast<unsigned char>(alen * 8);
    auto* rta = reinterpret_cast<rtattr*>(reinterpret_cast<char*>(&req) + NLMSG_ALIGN(req.nh.nlmsg_len));
    rta->rta_type = RTA_DST;
    rta->rta_len = static_cast<unsigned short>(RTA_LENGTH(alen));
    memcpy(RTA_DATA(rta), addr.data(), alen);
    req.nh.nlmsg_len = NLMSG_ALIGN(req.nh.nlmsg_len) + RTA_ALIGN(rta->rta_len);
    sockaddr_nl sa{};
    sa.nl_family = AF_NETLINK;
    if (sendto(s.get(), &req, req.nh.nlmsg_len, 0, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) < 0) return -errno;
    char buf[8192];
    ssize_t n = recv(s.get(), buf, sizeof(buf), 0);
    if (n < 0) return -errno;
    for (auto* nh = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(nh, static_cast<unsigned>(n));
         nh = NLMSG_NEXT(nh, n)) {
        if (nh->nlmsg_type == NLMSG_ERROR) {
            auto* e = static_cast<nlmsgerr*>(NLMSG_DATA(nh));
            return e->error ? e->error : -ENETUNREACH;
        }
        if (nh->nlmsg_type != RTM_NEWROUTE) continue;
        auto* rt = static_cast<rtmsg*>(NLMSG_DATA(nh));
        int len = static_cast<int>(RTM_PAYLOAD(nh));
        for (auto* a = RTM_RTA(rt); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
            if (a->rta_type == RTA_OIF) {
                *oif = *static_cast<int*>(RTA_DATA(a));
                return 0;
            }
        }
    }
    return -ENETUNREACH;
}

}  // namespace

FlowKey FlowKey::from_tcp_state(const vpipe_tcp_state& st) {
    FlowKey k;
    k.family = st.family == VPIPE_AF_INET ? AF_INET : st.family == VPIPE_AF_INET6 ? AF_INET6 : 0;
    memcpy(k.remote_addr.data(), st.remote_addr, 16);
    memcpy(k.local_addr.data(), st.local_addr, 16);
    if (k.family == AF_INET) {
        std::fill(k.remote_addr.begin() + 4, k.remote_addr.end(), 0);
        std::fill(k.local_addr.begin() + 4, k.local_addr.end(), 0);
    }
    k.remote_port = ntohs(st.remote_port);
    k.local_port = ntohs(st.local_port);
    return k;
}

std::string FlowKey::to_string() const {
    auto br = [this](const std::array<uint8_t, 16>& a) {
        return family == AF_INET6 ? "[" + addr_str(family, a) + "]" : addr_str(family, a);
    };
    return br(remote_addr) + ":" + std::to_string(remote_port) + " -> " + br(local_addr) + ":" +
           std::to_string(local_port);
}

Steering::Steering(std::string table, uint32_t fwmark, uint32_t route_table)
    : table_(std::move(table)), fwmark_(fwmark), route_table_(route_table) {}

Steering::~Steering() {
    destroy();
    if (nft_) nft_ctx_free(nft_);
}

int Steering::run(const std::string& cmd, std::string* out) {
    nft_ctx_buffer_output(nft_);
    nft_ctx_buffer_error(nft_);
    int r = nft_run_cmd_from_buffer(nft_, cmd.c_str());
    const char* o = nft_ctx_get_output_buffer(nft_);
    const char* e = nft_ctx_get_error_buffer(nft_);
    if (out) *out = o ? o : "";
    last_error_ = e ? e : "";
    nft_ctx_unbuffer_output(nft_);
    nft_ctx_unbuffer_error(nft_);
    if (r == 0) return 0;
    if (last_error_.find("File exists") != std::string::npos) return -EEXIST;
    if (last_error_.find("No such file or directory") != std::string::npos) return -ENOENT;
    if (last_error_.find("Operation not permitted") != std::string::npos) return -EPERM;
    return -EIO;
}

int Steering::set_rules(bool add) {
    char mark[16], tab[16];
    snprintf(mark, sizeof(mark), "0x%x", fwmark_);
    snprintf(tab, sizeof(tab), "%u", route_table_);
    const char* op = add ? "add" : "del";
    // the rule's preference: before `main` (32766); fixed so that removal is exact
    const std::string pref = "7670";
    int r = 0;
    for (const char* fam : {"-4", "-6"}) {
        bool v6 = fam[1] == '6';
        int a = run_argv({"ip", fam, "rule", op, "fwmark", mark, "lookup", tab, "pref", pref}, !add);
        int b = run_argv({"ip", fam, "route", add ? "replace" : "del", "local", "default", "dev", "lo", "table", tab},
                         !add);
        if (add && (a < 0 || b < 0)) {
            if (v6) {
                spdlog::warn("steering: no IPv6 policy routing ({} {}): IPv6 flows will not be steered", a, b);
                continue;
            }
            r = a < 0 ? a : b;
        }
    }
    return r;
}

std::unique_ptr<Steering> Steering::create(const std::string& table, uint32_t fwmark, uint32_t route_table) {
    if (table.empty() || table.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789_") != std::string::npos) {
        spdlog::error("steering: bad table name '{}'", table);
        return nullptr;
    }
    if (fwmark == 0 || route_table == 0 || (route_table >= 253 && route_table <= 255)) {
        // 0 is unspec, 253..255 are default/main/local
        spdlog::error("steering: bad fwmark {:#x} / route table {}", fwmark, route_table);
        return nullptr;
    }
    std::unique_ptr<Steering> s(new Steering(table, fwmark, route_table));
    s->nft_ = nft_ctx_new(NFT_CTX_DEFAULT);
    if (!s->nft_) return nullptr;
    char mark[16];
    snprintf(mark, sizeof(mark), "0x%x", fwmark);
    const std::string t = "bridge " + table;
    const std::string key4 = "ipv4_addr . inet_service . ipv4_addr . inet_service";
    const std::string key6 = "ipv6_addr . inet_service . ipv6_addr . inet_service";
    // one transaction: replace any leftover table of that name
    std::string cmd = "add table " + t + "\n" + "delete table " + t + "\n" + "add table " + t + "\n" +
                      "add set " + t + " hold4 { type " + key4 + "; }\n" +
                      "add set " + t + " hold6 { type " + key6 + "; }\n" +
                      "add map " + t + " flows4 { type " + key4 + " : ether_addr; }\n" +
                      "add map " + t + " flows6 { type " + key6 + " : ether_addr; }\n" +
                      "add chain " + t + " steer { type filter hook prerouting priority -300; policy accept; }\n" +
                      "add rule " + t + " steer ip saddr . tcp sport . ip daddr . tcp dport @hold4 drop\n" +
                      "add rule " + t + " steer ip6 saddr . tcp sport . ip6 daddr . tcp dport @hold6 drop\n" +
                      "add rule " + t +
                      " steer ether daddr set ip saddr . tcp sport . ip daddr . tcp dport map @flows4"
                      " meta pkttype set host meta mark set " + mark + " accept\n" +
                      "add rule " + t +
                      " steer ether daddr set ip6 saddr . tcp sport . ip6 daddr . tcp dport map @flows6"
                      " meta pkttype set host meta mark set " + mark + " accept\n";
    int r = s->run(cmd);
    if (r < 0) {
        spdlog::error("steering: creating nft table {} failed: {}", t, s->last_error_);
        return nullptr;
    }
    s->link_ = nft::Link::open();
    if (!s->link_) {
        spdlog::error("steering: no netfilter netlink socket: {}", strerror(errno));
        s->run("delete table " + t);
        return nullptr;
    }
    s->live_ = true;
    s->set_rules(false);  // leftovers of an earlier run, if any
    if ((r = s->set_rules(true)) < 0) {
        spdlog::error("steering: ip rule/route for fwmark {} table {} failed ({})", mark, route_table, r);
        s->destroy();
        return nullptr;
    }
    return s;
}

void Steering::destroy() {
    if (!live_) return;
    live_ = false;
    state_.clear();
    run("delete table bridge " + table_);
    set_rules(false);
}

int Steering::bridge_mac_for(const FlowKey& key, std::array<uint8_t, 6>* mac) {
    // The route to a VM's address changes rarely; looking it up (rtnetlink, ethtool, hwaddr)
    // on every hand-over costs more than the steering change itself. Cached for a second.
    const auto now = std::chrono::steady_clock::now();
    for (const auto& c : mac_cache_)
        if (c.family == key.family && c.addr == key.local_addr && now - c.when < std::chrono::seconds(1)) {
            *mac = c.mac;
            return 0;
        }
    int oif = 0;
    int r = route_oif(key.family, key.local_addr, &oif);
    if (r < 0) return r;
    ifreq ifr{};
    if (!if_indextoname(static_cast<unsigned>(oif), ifr.ifr_name)) return -errno;
    UniqueFd s(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!s) return -errno;
    // a bridge? (its driver says so)
    ethtool_drvinfo di{};
    di.cmd = ETHTOOL_GDRVINFO;
    ifr.ifr_data = reinterpret_cast<char*>(&di);
    if (ioctl(s.get(), SIOCETHTOOL, &ifr) < 0 || strcmp(di.driver, "bridge") != 0) {
        last_error_ = std::string("route to the VM's address is via ") + ifr.ifr_name + ", not a bridge";
        return -ENETUNREACH;
    }
    if (ioctl(s.get(), SIOCGIFHWADDR, &ifr) < 0) return -errno;
    memcpy(mac->data(), ifr.ifr_hwaddr.sa_data, 6);
    std::erase_if(mac_cache_, [&](const MacCacheEntry& c) {
        return (c.family == key.family && c.addr == key.local_addr) || now - c.when >= std::chrono::seconds(1);
    });
    mac_cache_.push_back({key.family, key.local_addr, *mac, now});
    return 0;
}

// Per-flow changes: one nfnetlink batch each (nft::Link), all-or-nothing like nft's own
// transactions. Set names: hold4/6, flows4/6.
int Steering::commit(nft::Batch& b) {
    int r = link_->commit(b);
    if (r < 0) last_error_ = std::string("nft: ") + strerror(-r);
    return r;
}

// The state of each flow is kept here, so each change is one batch that succeeds: a failing
// batch costs the kernel's abort path a synchronize_rcu() (~15 ms measured).
int Steering::add_flow(const FlowKey& key) {
    if (!live_) return -ESHUTDOWN;
    if (!valid(key)) return -EINVAL;
    auto it = state_.find(key);
    if (it != state_.end() && it->second == FlowState::kSteered) return -EEXIST;
    std::array<uint8_t, 6> mac;
    int r = bridge_mac_for(key, &mac);
    if (r < 0) return r;
    const std::string v = key.family == AF_INET ? "4" : "6";
    const nft::Element hold{elem_key(key), {}};
    const nft::Element flow{elem_key(key), std::vector<uint8_t>(mac.begin(), mac.end())};
    nft::Batch b;
    if (it != state_.end()) b.delete_elements(NFPROTO_BRIDGE, table_, "hold" + v, {&hold, 1});
    b.add_elements(NFPROTO_BRIDGE, table_, "flows" + v, {&flow, 1}, /*exclusive=*/true);
    if ((r = commit(b)) == 0) state_[key] = FlowState::kSteered;
    return r;
}

int Steering::hold_flow(const FlowKey& key) {
    if (!live_) return -ESHUTDOWN;
    if (!valid(key)) return -EINVAL;
    auto it = state_.find(key);
    if (it != state_.end() && it->second == FlowState::kHeld) return 0;
    const std::string v = key.family == AF_INET ? "4" : "6";
    const nft::Element el{elem_key(key), {}};
    nft::Batch b;
    b.add_elements(NFPROTO_BRIDGE, table_, "hold" + v, {&el, 1});
    if (it != state_.end()) b.delete_elements(NFPROTO_BRIDGE, table_, "flows" + v, {&el, 1});
    int r = commit(b);
    if (r == 0) state_[key] = FlowState::kHeld;
    return r;
}

int Steering::remove_flow(const FlowKey& key) {
    if (!live_) return -ESHUTDOWN;
    if (!valid(key)) return -EINVAL;
    auto it = state_.find(key);
    if (it == state_.end()) return -ENOENT;
    const std::string v = key.family == AF_INET ? "4" : "6";
    const nft::Element el{elem_key(key), {}};
    nft::Batch b;
    b.delete_elements(NFPROTO_BRIDGE, table_, it->second == FlowState::kHeld ? "hold" + v : "flows" + v, {&el, 1});
    int r = commit(b);
    // gone either way: -ENOENT means someone removed it behind our back
    if (r == 0 || r == -ENOENT) state_.erase(it);
    return r;
}

int Steering::flows(std::vector<FlowKey>* out) {
    if (!out) return -EINVAL;
    out->clear();
    if (!live_) return -ESHUTDOWN;
    unsigned saved = nft_ctx_output_get_flags(nft_);
    nft_ctx_output_set_flags(nft_, saved | NFT_CTX_OUTPUT_JSON | NFT_CTX_OUTPUT_NUMERIC_PROTO);
    for (int fam : {AF_INET, AF_INET6}) {
        std::string js;
        int r = run("list map bridge " + table_ + (fam == AF_INET ? " flows4" : " flows6"), &js);
        if (r < 0) {
            nft_ctx_output_set_flags(nft_, saved);
            return r;
        }
        try {
            auto j = nlohmann::json::parse(js);
            for (const auto& item : j.at("nftables")) {
                if (!item.contains("map") || !item["map"].contains("elem")) continue;
                for (const auto& e : item["map"]["elem"]) {
                    const auto& c = e.at(0).at("concat");
                    FlowKey k;
                    k.family = fam;
                    if (inet_pton(fam, c.at(0).get<std::string>().c_str(), k.remote_addr.data()) != 1 ||
                        inet_pton(fam, c.at(2).get<std::string>().c_str(), k.local_addr.data()) != 1)
                        continue;
                    k.remote_port = c.at(1).get<uint16_t>();
                    k.local_port = c.at(3).get<uint16_t>();
                    out->push_back(k);
                }
            }
        } catch (const std::exception& ex) {
            last_error_ = std::string("nft json: ") + ex.what();
            nft_ctx_output_set_flags(nft_, saved);
            return -EIO;
        }
    }
    nft_ctx_output_set_flags(nft_, saved);
    return 0;
}

}  // namespace vpipe::steering
