// The lab's subcommands: up / down / info / exec / demo / restart-* / remove-vm (main.cpp only parses the command line).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace vpipe::lab {

struct UpOptions {
    int vms = 1;
    int disks = 1;
    int disk_mib = 1024;
    std::string weights;  // "1,1,2"; "" = all 1
    int link_mbit = 0;
    std::string disk_cache = "host";  // how vpiped reads the images for file -> socket: host | direct
    std::string guest_cpus = "0";
    std::string dom0_cpus;  // "" = the last online CPU
    int neighbours = 0;
    int vcpu_quota = 0;
    // How busy neighbours delay a VM: "shares" (equal cgroup shares of the guest CPUs) or
    // "hypervisor" (Xen's credit scheduler: cpu.max of one slice per round of neighbours + 1
    // vCPUs, and the VM's receive processing steered onto the guest CPUs).
    std::string neighbour_model = "shares";
    int slice_ms = 30;  // hypervisor: the credit time slice
    bool slice_ms_given = false;  // --slice-ms on the command line (refused with shares)
    std::string image_dir = "/var/lib/vpipe-lab";
    bool daemons = true;
    bool quiet = false;
};

// Each returns the process exit status.
int cmd_up(const UpOptions& opt);
int cmd_down(bool quiet);
int cmd_info(bool json);
// Stops the engine with `signal` (SIGKILL: as if it crashed) and starts it again, same config.
int cmd_restart_engine(int signal);
// request_timeout_ms: 0 keeps the configuration's, else vpipe-guestd --request-timeout-ms
int cmd_restart_agent(const std::string& vm, int signal, uint32_t request_timeout_ms = 0);
// Tears one VM down while the others run, as a hypervisor destroys a domain (remove.cpp).
int cmd_remove_vm(const std::string& vm);
enum class ExecTarget { Vm, Client, Dom0 };
// Replaces the process with cmd on success; returns 125 (lab error) / 126 / 127 (exec error).
int cmd_exec(ExecTarget target, const std::string& vm, const std::vector<std::string>& cmd);
int cmd_demo();

bool lab_is_up();

}  // namespace vpipe::lab
