// Who a shadow socket may talk to. The engine takes a guest's connection over in dom0's own
// network stack: without this policy a guest could hand dom0 a connection "to" one of dom0's own
// addresses (its services, listening on them or on loopback) or to another tenant's VM, and have
// dom0 send its bytes there. The ring validator (common/protocol/check.c) already limits the
// local end to the VM's own address and the remote end to unicast; this adds what only dom0
// knows: its own addresses (read from the kernel at each check, getifaddrs) and the other VMs'.
//
// A remote address is refused (-EACCES) when it is
//   - in 127.0.0.0/8, ::1, or one of the IPv4-mapped forms of these,
//   - configured on any of dom0's interfaces (the network namespace vpiped runs in),
//   - an address of another VM the engine serves, unless both VMs name the same, non-empty
//     tenant ([[vm]] tenant; a VM without a tenant shares with no one).
// The check runs in the ring service, after validation and before the request reaches a worker:
// nothing in dom0 changes, the guest restores its socket from its own frozen state.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "config.h"
#include "request.h"

namespace vpipe::engine {

// An IPv4 or IPv6 address; IPv4 in the first 4 bytes (rest zero), as in vpipe_tcp_state.
struct IpAddr {
    bool v6 = false;
    std::array<uint8_t, 16> bytes{};
    static std::optional<IpAddr> parse(const std::string& text);  // "10.0.0.1", "fe80::1"
    std::string str() const;
    // An IPv4-mapped IPv6 address (::ffff:a.b.c.d) as the IPv4 address it maps; others as is.
    IpAddr canonical() const;
    bool operator==(const IpAddr& o) const { return v6 == o.v6 && bytes == o.bytes; }
    bool operator<(const IpAddr& o) const { return v6 != o.v6 ? !v6 : bytes < o.bytes; }
};

// Every address configured on this network namespace's interfaces (getifaddrs), canonical.
// Throws std::system_error when the kernel cannot be asked.
std::vector<IpAddr> local_addresses();

// The addresses the policy counts as a VM's: `ip` and every entry of `addresses`.
std::vector<IpAddr> vm_addresses(const VmConfig& vm);

class PeerPolicy {
public:
    // Registers (or replaces) VM `id`: its tenant ("" = none) and addresses.
    void set_vm(uint32_t id, const std::string& name, const std::string& tenant,
                std::vector<IpAddr> addresses);
    void set_vm(const VmConfig& vm) { set_vm(vm.id, vm.name, vm.tenant, vm_addresses(vm)); }
    void remove_vm(uint32_t id);

    // 0 when VM `vm_id` may have dom0 talk to `remote`; -EACCES (and *why, if given) when not.
    // An address that cannot be checked (getifaddrs fails) is refused as well.
    int check(uint32_t vm_id, const IpAddr& remote, std::string* why = nullptr) const;
    // Every socket endpoint's remote address of a validated request (both ends of
    // socket -> socket); 0 for a request without socket endpoints.
    int check_request(uint32_t vm_id, const ParsedRequest& req, std::string* why = nullptr) const;

private:
    struct Entry {
        std::string name, tenant;
        std::vector<IpAddr> addresses;
    };
    mutable std::mutex mu_;
    std::map<uint32_t, Entry> vms_;
};

}  // namespace vpipe::engine
