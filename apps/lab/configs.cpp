#include "configs.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

#include "state.h"
#include "util.h"

namespace vpipe::lab {

namespace {

// TOML basic string with escapes.
std::string q(const std::string& s) {
    std::string out = "\"";
    for (unsigned char c : s) {
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\t': out += "\\t"; break;
            case '\r': out += "\\r"; break;
            default:
                if (c < 0x20 || c == 0x7f) {
                    char buf[8];
                    snprintf(buf, sizeof buf, "\\u%04x", c);
                    out += buf;
                } else {
                    out += static_cast<char>(c);
                }
        }
    }
    return out + "\"";
}

}  // namespace

std::string engine_config_text(const LabState& s) {
    std::ostringstream o;
    o << "# written by vpipe-lab up; the lab's engine (vpiped) configuration\n"
      << "[engine]\n"
      << "control_socket = " << q(s.engine.control_socket) << "\n"
      << "pool_pages = 16384\n"
      << "queue_depth = 32\n"
      << "log_level = \"info\"\n";
    if (s.link_mbit > 0) {
        // With --link-mbit the shaped client link, not dom0, is the bottleneck: the engine's
        // total credit rate must stay below what the link delivers, or bytes queue at the link
        // (send() blocks, the blocked VM stops asking for credit), and TCP, not the weights,
        // decides the shares. tbf counts whole frames (1514 bytes carry 1448 of payload:
        // 95.6 %) and TCP does not keep a shaped link 100 % busy: 90 % of the link.
        o << "total_rate_mbps = " << std::max<long>(1, static_cast<long>(s.link_mbit) * 90 / 100)
          << "   # --link-mbit " << s.link_mbit << " minus framing\n";
    }
    for (const auto& vm : s.vms) {
        if (vm.removed) continue;  // `remove-vm`: a restarted engine must not serve it again
        o << "\n[[vm]]\n"
          << "name = " << q(vm.name) << "\n"
          << "id = " << vm.id << "\n"
          << "weight = " << vm.weight << "\n"
          << "threads = 4\n"
          << "channel = " << q(vm.engine_channel) << "\n"
          << "ip = " << q(vm.ip) << "\n"
          // the peer policy: the lab's VMs are one tenant (they may reach each other through
          // the engine); dom0's own addresses (xenbr0's 10.199.0.254, loopback) stay refused
          << "tenant = \"lab\"\n"
          << "addresses = [" << q(vm.ip) << "]\n"
          << "mac = " << q(vm.mac) << "\n"
          << "vif = " << q(vm.vif) << "\n"
          << "bridge = " << q(kBridge) << "\n";
        for (const auto& d : vm.disks) {
            o << "[[vm.disk]]\n"
              << "vdev = " << d.vdev << "\n"
              << "image = " << q(d.image) << "\n"
              << "writable = true\n"
              // the image sits on a loop device: every write of the "VM" goes through, or (direct
              // I/O) invalidates, the image file's page cache, so dom0 may read through it
              << "cache = " << q(s.disk_cache) << "\n";
        }
    }
    return o.str();
}

std::string agent_config_text(const VmState& vm) {
    std::ostringstream o;
    o << "# written by vpipe-lab up; the guest agent (vpipe-guestd) configuration of " << vm.name << "\n"
      << "[agent]\n"
      << "vm = " << q(vm.name) << "\n"
      << "listen = " << q(vm.agent_socket) << "\n"
      << "engine_channel = " << q(vm.engine_channel) << "\n"
      << "state_dir = " << q(vm.agent_state_dir) << "\n"
      << "area_pages = 4096\n"
      << "log_level = \"info\"\n";
    for (const auto& d : vm.disks) {
        o << "\n[[disk]]\n"
          << "vdev = " << d.vdev << "\n"
          << "device = " << q(d.device) << "\n";
    }
    return o.str();
}

}  // namespace vpipe::lab
