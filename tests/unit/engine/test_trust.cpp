// The peer policy (peer_policy.h) against this machine's real addresses (getifaddrs): a shadow
// socket may not talk to dom0 itself or to another tenant's VM.
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "config.h"
#include "peer_policy.h"
#include "request.h"

using namespace vpipe::engine;

namespace {

IpAddr ip(const char* s) {
    auto a = IpAddr::parse(s);
    EXPECT_TRUE(a) << s;
    return a ? *a : IpAddr{};
}

// The addresses getifaddrs reports, read here independently of local_addresses().
std::vector<IpAddr> kernel_addresses() {
    std::vector<IpAddr> out;
    ifaddrs* list = nullptr;
    if (::getifaddrs(&list) < 0) return out;
    for (ifaddrs* i = list; i; i = i->ifa_next) {
        if (!i->ifa_addr) continue;
        char buf[INET6_ADDRSTRLEN] = {};
        if (i->ifa_addr->sa_family == AF_INET)
            ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr, buf, sizeof(buf));
        else if (i->ifa_addr->sa_family == AF_INET6)
            ::inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(i->ifa_addr)->sin6_addr, buf, sizeof(buf));
        else
            continue;
        out.push_back(ip(buf));
    }
    ::freeifaddrs(list);
    return out;
}

bool is_local(const IpAddr& a) {
    auto l = local_addresses();
    return std::find(l.begin(), l.end(), a) != l.end();
}

// An address on no interface of this machine (documentation ranges, checked).
IpAddr external() {
    for (const char* s : {"198.51.100.7", "203.0.113.9", "192.0.2.77", "100.64.1.1"})
        if (!is_local(ip(s))) return ip(s);
    ADD_FAILURE() << "every candidate external address is local";
    return ip("198.51.100.7");
}

// vm1 (tenant "blue", 10.199.0.11 + fd00:99::11), vm2 (tenant "red", 10.199.0.12),
// vm3 (tenant "blue", 10.199.0.13), vm4 (no tenant, 10.199.0.14).
void fill(PeerPolicy& p) {
    VmConfig v1;
    v1.id = 1;
    v1.name = "vm1";
    v1.tenant = "blue";
    v1.ip = "10.199.0.11";
    v1.addresses = {"fd00:99::11"};
    p.set_vm(v1);
    p.set_vm(2, "vm2", "red", {ip("10.199.0.12")});
    p.set_vm(3, "vm3", "blue", {ip("10.199.0.13")});
    p.set_vm(4, "vm4", "", {ip("10.199.0.14")});
}

}  // namespace

TEST(PeerPolicy, LoopbackIsRefused) {
    PeerPolicy p;
    fill(p);
    std::string why;
    EXPECT_EQ(p.check(1, ip("127.0.0.1"), &why), -EACCES);
    EXPECT_NE(why.find("127.0.0.1"), std::string::npos) << why;
    EXPECT_EQ(p.check(1, ip("127.1.2.3"), nullptr), -EACCES);
    EXPECT_EQ(p.check(1, ip("::1"), nullptr), -EACCES);
    EXPECT_EQ(p.check(1, ip("::ffff:127.0.0.1"), nullptr), -EACCES);  // IPv4-mapped loopback
    EXPECT_EQ(p.check(1, ip("0.0.0.0"), nullptr), -EACCES);
    EXPECT_EQ(p.check(1, ip("::"), nullptr), -EACCES);
}

TEST(PeerPolicy, EveryAddressOfDom0IsRefused) {
    PeerPolicy p;
    fill(p);
    const auto mine = kernel_addresses();
    ASSERT_FALSE(mine.empty()) << "getifaddrs reported no address (not even loopback)";
    const auto listed = local_addresses();
    for (const IpAddr& a : mine) {
        EXPECT_NE(std::find(listed.begin(), listed.end(), a.canonical()), listed.end()) << a.str();
        std::string why;
        EXPECT_EQ(p.check(1, a, &why), -EACCES) << a.str();
        EXPECT_EQ(p.check(4, a, nullptr), -EACCES) << a.str();  // whatever the tenant
    }
    // the machine's non-loopback addresses (at least one on any networked host) are among them
    const bool any_non_loopback = std::any_of(mine.begin(), mine.end(), [](const IpAddr& a) {
        return !(a == ip("127.0.0.1") || a == ip("::1"));
    });
    EXPECT_TRUE(any_non_loopback) << "no non-loopback address to check the policy against";
}

TEST(PeerPolicy, AnotherTenantsVmIsRefused) {
    PeerPolicy p;
    fill(p);
    std::string why;
    EXPECT_EQ(p.check(1, ip("10.199.0.12"), &why), -EACCES);  // blue -> red
    EXPECT_NE(why.find("vm2"), std::string::npos) << why;
    EXPECT_EQ(p.check(2, ip("10.199.0.11"), nullptr), -EACCES);  // red -> blue (its ip)
    EXPECT_EQ(p.check(2, ip("fd00:99::11"), nullptr), -EACCES);  // red -> blue (addresses)
    EXPECT_EQ(p.check(2, ip("::ffff:10.199.0.11"), nullptr), -EACCES);  // mapped form
    // a VM without a tenant shares with no one, and no one with it
    EXPECT_EQ(p.check(4, ip("10.199.0.11"), nullptr), -EACCES);
    EXPECT_EQ(p.check(1, ip("10.199.0.14"), nullptr), -EACCES);
}

TEST(PeerPolicy, SameTenantAndExternalPeersAreAllowed) {
    PeerPolicy p;
    fill(p);
    EXPECT_EQ(p.check(1, ip("10.199.0.13"), nullptr), 0);  // blue -> blue
    EXPECT_EQ(p.check(3, ip("fd00:99::11"), nullptr), 0);
    const IpAddr out = external();
    for (uint32_t vm : {1u, 2u, 3u, 4u}) EXPECT_EQ(p.check(vm, out, nullptr), 0) << vm;
    EXPECT_EQ(p.check(1, ip("10.199.0.1"), nullptr), 0);  // the lab's client: nobody's
}

TEST(PeerPolicy, RemovedVmsAddressIsNoLongerAVm) {
    PeerPolicy p;
    fill(p);
    EXPECT_EQ(p.check(1, ip("10.199.0.12"), nullptr), -EACCES);
    p.remove_vm(2);
    EXPECT_EQ(p.check(1, ip("10.199.0.12"), nullptr), 0);
}

// The request-level check: every socket endpoint of a validated request, both ends of
// socket -> socket; requests without a socket endpoint are not the policy's.
TEST(PeerPolicy, ChecksEverySocketEndpointOfARequest) {
    PeerPolicy p;
    fill(p);
    auto with_peers = [](uint8_t op, const char* src, const char* dst) {
        ParsedRequest r;
        r.op = op;
        for (auto [ep, addr] : {std::pair{&r.src_sock, src}, std::pair{&r.dst_sock, dst}}) {
            ep->tcp.family = VPIPE_AF_INET;
            EXPECT_EQ(::inet_pton(AF_INET, addr, ep->tcp.remote_addr), 1);
        }
        return r;
    };
    const std::string out = external().str();
    ParsedRequest r;
    r = with_peers(VPIPE_OP_SOCKET_TO_SOCKET, out.c_str(), out.c_str());
    EXPECT_EQ(p.check_request(1, r), 0);
    r = with_peers(VPIPE_OP_SOCKET_TO_SOCKET, out.c_str(), "127.0.0.1");
    EXPECT_EQ(p.check_request(1, r), -EACCES);  // the destination end
    r = with_peers(VPIPE_OP_SOCKET_TO_SOCKET, "10.199.0.12", out.c_str());
    EXPECT_EQ(p.check_request(1, r), -EACCES);  // the source end
    r = with_peers(VPIPE_OP_FILE_TO_SOCKET, "127.0.0.1", "10.199.0.13");
    EXPECT_EQ(p.check_request(1, r), 0);        // file -> socket: only the destination counts
    r = with_peers(VPIPE_OP_FILE_TO_SOCKET, out.c_str(), "10.199.0.12");
    EXPECT_EQ(p.check_request(1, r), -EACCES);
    r = with_peers(VPIPE_OP_SOCKET_TO_FILE, "10.199.0.12", out.c_str());
    EXPECT_EQ(p.check_request(1, r), -EACCES);
    r = with_peers(VPIPE_OP_SOCKET_TO_FILE, out.c_str(), "127.0.0.1");
    EXPECT_EQ(p.check_request(1, r), 0);        // socket -> file: only the source counts
    r = with_peers(VPIPE_OP_FILE_TO_FILE, "127.0.0.1", "127.0.0.1");
    EXPECT_EQ(p.check_request(1, r), 0);
    // IPv6 endpoint (refused earlier by the validator, but the policy reads it right)
    r = ParsedRequest{};
    r.op = VPIPE_OP_FILE_TO_SOCKET;
    r.dst_sock.tcp.family = VPIPE_AF_INET6;
    ASSERT_EQ(::inet_pton(AF_INET6, "::1", r.dst_sock.tcp.remote_addr), 1);
    EXPECT_EQ(p.check_request(1, r), -EACCES);
}

TEST(PeerPolicyConfig, TenantAndAddresses) {
    auto cfg = parse_config(R"(
[[vm]]
name = "a"
id = 1
channel = "/run/a.sock"
ip = "10.0.0.2"
tenant = "acme"
addresses = ["10.0.0.3", "fd00::3"]
[xen]
tenant = "xt"
[xen.vm.web]
tenant = "web"
)");
    ASSERT_EQ(cfg.vms.size(), 1u);
    EXPECT_EQ(cfg.vms[0].tenant, "acme");
    EXPECT_EQ(cfg.vms[0].addresses, (std::vector<std::string>{"10.0.0.3", "fd00::3"}));
    EXPECT_EQ(vm_addresses(cfg.vms[0]).size(), 3u);
    EXPECT_EQ(cfg.xen.for_vm("other").tenant, "xt");
    EXPECT_EQ(cfg.xen.for_vm("web").tenant, "web");
}

TEST(PeerPolicyConfig, BadAddressesAreRefused) {
    const std::string head = "[[vm]]\nname = \"a\"\nid = 1\nchannel = \"/run/a.sock\"\n";
    for (const char* bad : {"addresses = [\"10.0.0.300\"]", "addresses = \"10.0.0.3\"",
                            "addresses = [3]", "tenant = 7"}) {
        try {
            parse_config(head + bad + "\n");
            ADD_FAILURE() << bad << " accepted";
        } catch (const std::runtime_error& e) {
            const std::string what = e.what();
            EXPECT_NE(what.find(std::string(bad).substr(0, 6)), std::string::npos) << what;
        }
    }
}
