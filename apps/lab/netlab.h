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

// Moves the calling thread into namespace `name` (setns on /run/netns/NAME); throws LabError.
void enter_netns(const std::string& name);

}  // namespace vpipe::lab
