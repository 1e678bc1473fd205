// Set-up shared by the micro-benchmarks that need dom0's steering: the whole process moves into
// a private network namespace (unshare), where it brings lo up and creates a bridge with an
// address, the stand-in for the bridge dom0 routes a VM's subnet through. Everything vanishes
// with the namespace when the process exits; nothing is created in the host's namespace.
// Needs CAP_NET_ADMIN (root).
#pragma once

#include <arpa/inet.h>
#include <sched.h>
#include <sys/socket.h>

#include <cstdio>
#include <cstdlib>

#include "steering/steering.h"

namespace vpipe::bench {

inline constexpr const char* kBridgeAddr = "10.77.0.1";  // dom0's address on the bridge
inline constexpr const char* kVmAddr = "10.77.0.2";      // a VM behind it

// unshare(CLONE_NEWNET) + lo up + bridge vpbr0 10.77.0.1/24 up. false (with a message) if not
// possible. Must run before any other thread exists.
inline bool private_net_with_bridge() {
    if (::unshare(CLONE_NEWNET) != 0) {
        std::perror("unshare(CLONE_NEWNET)");
        return false;
    }
    // `ip` runs in a child, which inherits this (new) namespace
    if (std::system("ip link set lo up && ip link add vpbr0 type bridge && "
                    "ip addr add 10.77.0.1/24 dev vpbr0 && ip link set vpbr0 up") != 0) {
        std::fprintf(stderr, "could not create the bridge in the private namespace\n");
        return false;
    }
    return true;
}

// A flow of the VM at 10.77.0.2:local_port with a client at 192.0.2.7:remote_port.
inline steering::FlowKey vm_flow(uint16_t remote_port, uint16_t local_port = 5000) {
    steering::FlowKey k;
    k.family = AF_INET;
    ::inet_pton(AF_INET, "192.0.2.7", k.remote_addr.data());
    ::inet_pton(AF_INET, kVmAddr, k.local_addr.data());
    k.remote_port = remote_port;
    k.local_port = local_port;
    return k;
}

}  // namespace vpipe::bench
