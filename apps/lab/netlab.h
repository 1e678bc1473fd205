// The lab's network: namespaces vpl-dom0 / vpl-client / vpl-vmN, the bridge xenbr0 in dom0, one
// veth per VM (vifN.0 <-> eth0) and the "physical" port peth0 <-> the client's eth0.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace vpipe::lab {

struct VmState;

void create_netns(const std::string& name);  // `ip netns add` + lo up
void delete_netns(const std::string& name);  // tolerant of absence
std::vector<std::string> list_lab_netns();   // names under /run/netns starting with vpl-
// (dev, inode) of the namespace bind mount, or {0,0} when absent.
std::pair<dev_t, ino_t> netns_id(const std::string& name);

void setup_dom0_bridge();
void setup_client_link();
void setup_vm_link(const VmState& vm);
// Shapes the client link to `mbit` Mbit/s both ways (tbf on peth0 in dom0 and on the client's eth0).
void set_link_limit(int mbit);

// The kernel's hex CPU bitmap of a CPU list, as rps_cpus takes it: "0" -> "1", "1" -> "2",
// "0-5,33" -> "2,0000003f" (32-bit words, most significant first, comma separated).
std::string cpu_mask(const std::vector<int>& cpus);
// Two masks are equal when their bits are (the kernel pads with zeros to nr_cpu_ids).
bool same_cpu_mask(const std::string& a, const std::string& b);

// Receive packet steering of one rx queue: its rps_cpus before and after `set_rps`.
struct RpsSetting {
    std::string netns, dev, queue;  // queue: "rx-0"
    std::string before, mask;
};
// Sets rps_cpus of every rx queue of `dev` in namespace `netns` to `mask` and reads it back.
// sysfs shows the devices of the namespace it was mounted in, so a child process enters the
// namespace, mounts its own sysfs in a private mount namespace and does the writing (what `ip
// netns exec` does). Throws LabError.
std::vector<RpsSetting> set_rps(const std::string& netns, const std::string& dev, const std::string& mask);

// Moves the calling thread into namespace `name` (setns on /run/netns/NAME); throws LabError.
void enter_netns(const std::string& name);

}  // namespace vpipe::lab
