#include "peer_policy.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>

#include <vpipe/abi/ring.h>

namespace vpipe::engine {
namespace {

bool is_mapped_v4(const std::array<uint8_t, 16>& b) {
    static constexpr uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return std::memcmp(b.data(), prefix, 12) == 0;
}

// Addresses that reach this host whatever its interfaces say: loopback and "unspecified".
bool always_local(const IpAddr& a) {
    if (!a.v6) return a.bytes[0] == 127 || (a.bytes[0] == 0 && a.bytes[1] == 0 && a.bytes[2] == 0 && a.bytes[3] == 0);
    std::array<uint8_t, 16> loop{};
    loop[15] = 1;
    return a.bytes == loop || a.bytes == std::array<uint8_t, 16>{};
}

IpAddr from_state(const vpipe_tcp_state& t) {
    IpAddr a;
    a.v6 = t.family == VPIPE_AF_INET6;
    std::memcpy(a.bytes.data(), t.remote_addr, a.v6 ? 16 : 4);
    return a.canonical();
}

}  // namespace

std::optional<IpAddr> IpAddr::parse(const std::string& text) {
    IpAddr a;
    if (::inet_pton(AF_INET, text.c_str(), a.bytes.data()) == 1) return a;
    a.v6 = true;
    if (::inet_pton(AF_INET6, text.c_str(), a.bytes.data()) == 1) return a.canonical();
    return std::nullopt;
}

std::string IpAddr::str() const {
    char buf[INET6_ADDRSTRLEN] = {};
    ::inet_ntop(v6 ? AF_INET6 : AF_INET, bytes.data(), buf, sizeof(buf));
    return buf;
}

IpAddr IpAddr::canonical() const {
    if (!v6 || !is_mapped_v4(bytes)) return *this;
    IpAddr a;
    std::memcpy(a.bytes.data(), bytes.data() + 12, 4);
    return a;
}

std::vector<IpAddr> local_addresses() {
    ifaddrs* list = nullptr;
    if (::getifaddrs(&list) < 0) throw std::system_error(errno, std::generic_category(), "getifaddrs");
    std::vector<IpAddr> out;
    for (ifaddrs* i = list; i; i = i->ifa_next) {
        if (!i->ifa_addr) continue;
        IpAddr a;
        if (i->ifa_addr->sa_family == AF_INET) {
            const auto* s = reinterpret_cast<const sockaddr_in*>(i->ifa_addr);
            std::memcpy(a.bytes.data(), &s->sin_addr, 4);
        } else if (i->ifa_addr->sa_family == AF_INET6) {
            const auto* s = reinterpret_cast<const sockaddr_in6*>(i->ifa_addr);
            a.v6 = true;
            std::memcpy(a.bytes.data(), &s->sin6_addr, 16);
        } else {
            continue;
        }
        out.push_back(a.canonical());
    }
    ::freeifaddrs(list);
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
}

std::vector<IpAddr> vm_addresses(const VmConfig& vm) {
    std::vector<IpAddr> out;
    if (auto a = IpAddr::parse(vm.ip)) out.push_back(*a);
    for (const auto& s : vm.addresses)
        if (auto a = IpAddr::parse(s)) out.push_back(*a);  // validated by the config parser
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
}

void PeerPolicy::set_vm(uint32_t id, const std::string& name, const std::string& tenant,
                        std::vector<IpAddr> addresses) {
    for (auto& a : addresses) a = a.canonical();
    std::lock_guard lk(mu_);
    vms_[id] = Entry{name, tenant, std::move(addresses)};
}

void PeerPolicy::remove_vm(uint32_t id) {
    std::lock_guard lk(mu_);
    vms_.erase(id);
}

int PeerPolicy::check(uint32_t vm_id, const IpAddr& remote_in, std::string* why) const {
    const IpAddr remote = remote_in.canonical();
    if (always_local(remote)) {
        if (why) *why = remote.str() + " is dom0's loopback";
        return -EACCES;
    }
    std::vector<IpAddr> mine;
    try {
        mine = local_addresses();
    } catch (const std::system_error& e) {
        if (why) *why = std::string("dom0's addresses cannot be read: ") + e.what();
        return -EACCES;
    }
    if (std::binary_search(mine.begin(), mine.end(), remote)) {
        if (why) *why = remote.str() + " is an address of dom0";
        return -EACCES;
    }
    std::lock_guard lk(mu_);
    auto self = vms_.find(vm_id);
    const std::string tenant = self == vms_.end() ? std::string() : self->second.tenant;
    for (const auto& [id, e] : vms_) {
        if (id == vm_id) continue;
        if (std::find(e.addresses.begin(), e.addresses.end(), remote) == e.addresses.end()) continue;
        if (!tenant.empty() && e.tenant == tenant) continue;
        if (why)
            *why = remote.str() + " is an address of VM " + e.name + " (tenant \"" + e.tenant +
                   "\", not \"" + tenant + "\")";
        return -EACCES;
    }
    return 0;
}

int PeerPolicy::check_request(uint32_t vm_id, const ParsedRequest& req, std::string* why) const {
    const bool src = req.op == VPIPE_OP_SOCKET_TO_FILE || req.op == VPIPE_OP_SOCKET_TO_SOCKET;
    const bool dst = req.op == VPIPE_OP_FILE_TO_SOCKET || req.op == VPIPE_OP_SOCKET_TO_SOCKET;
    if (src)
        if (int r = check(vm_id, from_state(req.src_sock.tcp), why); r < 0) return r;
    if (dst)
        if (int r = check(vm_id, from_state(req.dst_sock.tcp), why); r < 0) return r;
    return 0;
}

}  // namespace vpipe::engine
