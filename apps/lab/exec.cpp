// `vpipe-lab exec|client|dom0 -- CMD`: enter the namespace (and cgroup), then execvp.
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iostream>

#include "cgroups.h"
#include "lab.h"
#include "netlab.h"
#include "state.h"
#include "util.h"

namespace vpipe::lab {

int cmd_exec(ExecTarget target, const std::string& vm_name, const std::vector<std::string>& cmd) {
    if (cmd.empty()) {
        std::cerr << "vpipe-lab: no command given (use: -- CMD [ARGS...])\n";
        return 125;
    }
    try {
        if (geteuid() != 0) throw LabError("must be run as root (entering a namespace needs CAP_SYS_ADMIN)");
        auto st = load_state();
        if (!st) throw LabError("the lab is not up (run `vpipe-lab up` first)");
        std::string netns;
        std::vector<std::string> cgroups;
        switch (target) {
            case ExecTarget::Vm: {
                const VmState* vm = nullptr;
                for (const auto& v : st->vms)
                    if (v.name == vm_name) vm = &v;
                if (!vm) {
                    std::string names;
                    for (const auto& v : st->vms) names += (names.empty() ? "" : ", ") + v.name;
                    throw LabError("no VM named '" + vm_name + "' in the lab (VMs: " + names + ")");
                }
                if (vm->removed) throw LabError(vm_name + " was removed (" + vm->removed_at + ")");
                netns = vm->netns;
                cgroups = vm->cgroup_dirs;
                setenv("VPIPE_AGENT_SOCKET", vm->agent_socket.c_str(), 1);
                setenv("VPIPE_VM", vm->name.c_str(), 1);
                if (!vm->disks.empty()) setenv("VPIPE_DISK", vm->disks.front().mount.c_str(), 1);
                break;
            }
            case ExecTarget::Client:
                netns = kClientNetns;
                break;
            case ExecTarget::Dom0:
                netns = kDom0Netns;
                cgroups = st->engine.cgroup_dirs;
                setenv("VPIPE_CONTROL_SOCKET", st->engine.control_socket.c_str(), 1);
                break;
        }
        enter_netns(netns);
        if (!cgroups.empty()) join_cgroups(cgroups);
    } catch (const std::exception& e) {
        std::cerr << "vpipe-lab: " << e.what() << "\n";
        return 125;
    }
    std::vector<char*> argv;
    for (const auto& a : cmd) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execvp(argv[0], argv.data());
    int err = errno;
    std::cerr << "vpipe-lab: cannot execute " << cmd[0] << ": " << strerror(err) << "\n";
    return err == ENOENT ? 127 : 126;
}

}  // namespace vpipe::lab
