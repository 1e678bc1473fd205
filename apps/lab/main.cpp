// vpipe-lab: builds and tears down the lab (VMs modelled with namespaces, loop disks, cgroups) and
// runs commands inside it. Command-line parsing and help texts only; the work is in lab.cpp & co.
#include <csignal>
#include <unistd.h>

#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "lab.h"
#include "util.h"
#include "util/log.h"

namespace {

using namespace vpipe::lab;

// Man-page-like help: NAME / SYNOPSIS / DESCRIPTION come from the description, OPTIONS from CLI11,
// EXIT STATUS / EXAMPLES from the footer.
class ManFormatter : public CLI::Formatter {
public:
    ManFormatter() {
        label("Positionals", "ARGUMENTS");
        label("Subcommands", "COMMANDS");
        column_width(34);
    }
    std::string make_usage(const CLI::App*, std::string) const override { return ""; }
    std::string make_description(const CLI::App* app) const override { return app->get_description(); }
    std::string make_subcommand(const CLI::App* sub) const override {
        // one line per command: the part after " - " on the NAME line
        std::string d = sub->get_description(), summary;
        auto pos = d.find("NAME\n");
        if (pos != std::string::npos) {
            auto eol = d.find('\n', pos + 5);
            std::string line = d.substr(pos + 5, eol - pos - 5);
            auto dash = line.find(" - ");
            summary = dash == std::string::npos ? vpipe::lab::trim(line) : line.substr(dash + 3);
        }
        std::stringstream out;
        CLI::detail::format_help(out, sub->get_name(), summary, column_width_);
        return out.str();
    }
};

const char* kExitCommon =
    "EXIT STATUS\n"
    "    0  success\n"
    "    1  failure (the reason is printed on stderr)\n"
    "    2  bad command line (also: an out-of-range or contradictory option of up)\n";

std::string man(const std::string& name, const std::string& synopsis, const std::string& description) {
    return "NAME\n    " + name + "\n\nSYNOPSIS\n    " + synopsis + "\n\nDESCRIPTION\n" + description + "\n";
}

}  // namespace

int main(int argc, char** argv) {
    // Everything after the first "--" is the command for exec/client/dom0.
    std::vector<std::string> cmd;
    int cli_argc = argc;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--") == 0) {
            cli_argc = i;
            for (int k = i + 1; k < argc; ++k) cmd.emplace_back(argv[k]);
            break;
        }
    }

    CLI::App app(man("vpipe-lab - build the vPipe lab: VMs modelled with real kernel objects",
                     "vpipe-lab [--verbose] COMMAND [OPTIONS] [-- CMD...]",
                     "    Without a hypervisor a \"VM\" is a network namespace (vpl-vmN) with a veth vifN.0 on\n"
                     "    the bridge xenbr0 in the dom0 namespace (vpl-dom0), next to the \"physical\" port peth0\n"
                     "    towards a client namespace (vpl-client); its disks are ext4 images on loop devices\n"
                     "    mounted under /run/vpipe-lab/vmN/diskK; its CPU is a cgroup vpipe-lab/vmN. The engine\n"
                     "    vpiped runs in dom0, one guest agent vpipe-guestd per VM. State: /run/vpipe-lab/state.json.\n"
                     "    Needs root. Run `vpipe-lab COMMAND --help` for each command.\n"),
                 "vpipe-lab");
    auto fmt = std::make_shared<ManFormatter>();
    app.formatter(fmt);
    app.option_defaults()->group("OPTIONS");
    app.set_help_flag("-h,--help", "print this help and exit");
    app.footer(std::string(kExitCommon) +
               "    exec/client/dom0 exit with CMD's status; 125 when the lab could not be entered,\n"
               "    126/127 when CMD could not be executed / found.\n\n"
               "EXAMPLES\n"
               "    vpipe-lab up --vms 3 --weights 1,1,2 --disks 2\n"
               "    vpipe-lab exec vm1 -- ping -c1 10.199.0.1\n"
               "    vpipe-lab info --json\n"
               "    vpipe-lab down\n");
    app.require_subcommand(1);
    bool verbose = false;
    std::string log_level = "warn";
    app.add_flag("-v,--verbose", verbose, "log every step and command (debug level)");
    app.add_option("--log-level", log_level, "spdlog level: trace, debug, info, warn, error")->capture_default_str();

    // ---- up
    UpOptions up;
    bool no_daemons = false;
    auto* up_cmd = app.add_subcommand(
        "up", man("vpipe-lab up - create the lab and start the engine and the guest agents",
                  "vpipe-lab up [--vms N] [--disks K] [--disk-mib M] [--weights W,...] [--link-mbit M]\n"
                  "                 [--disk-cache host|direct] [--guest-cpus LIST] [--dom0-cpus LIST] [--neighbours K] [--vcpu-quota PCT]\n"
                  "                 [--neighbour-model shares|hypervisor [--slice-ms MS]] [--image-dir DIR]",
                  "    Creates namespaces vpl-dom0, vpl-client, vpl-vm1..N; the bridge xenbr0 (10.199.0.254/24)\n"
                  "    in dom0 with one veth per VM (vifN.0 <-> eth0, 10.199.0.(10+N), MAC 02:00:00:00:00:NN)\n"
                  "    and peth0 <-> the client's eth0 (10.199.0.1); K sparse ext4 images per VM in\n"
                  "    DIR/vmN/diskK.img on loop devices (direct I/O when possible) mounted at\n"
                  "    /run/vpipe-lab/vmN/diskK (mode 1777; vdev 51712 + 16*K like Xen's xvda, xvdb...);\n"
                  "    cgroups vpipe-lab/{dom0,vmN,neighbourJ} (v1 cpu+cpuacct+cpuset, or v2); writes\n"
                  "    /run/vpipe-lab/vpiped.toml and vmN/agent.toml; starts vpiped in dom0 and one vpipe-guestd\n"
                  "    per VM (found next to vpipe-lab, else in PATH) and waits for their sockets (10 s).\n"
                  "    Fails if a lab (or a remnant of one) exists; on any failure everything created is\n"
                  "    removed again. Progress is recorded in /run/vpipe-lab/state.json as it goes.\n"
                  "\n"
                  "    Busy neighbours (--neighbours K) are busy-looping processes in cgroups\n"
                  "    vpipe-lab/neighbourJ on the guest CPUs. How they delay a VM, --neighbour-model:\n"
                  "      shares      (default) the VM's cgroup and each neighbour's get equal CPU shares; the\n"
                  "                  VM's kernel work outside its cgroup (softirq of its traffic on the\n"
                  "                  other CPU, loop-device workers, writeback) is not slowed by them.\n"
                  "      hypervisor  like Xen's credit scheduler with K busy vCPUs on the VM's physical CPU:\n"
                  "                  the VM's cgroup gets cpu.max = one slice (--slice-ms, 30) per period of\n"
                  "                  (K+1) slices (v1: cpu.cfs_quota_us / cpu.cfs_period_us; no cap when\n"
                  "                  K = 0), and Receive Packet Steering moves the receive processing of\n"
                  "                  the VM's eth0 onto the guest CPUs (rps_cpus; its host end vifN.0 onto\n"
                  "                  the dom0 CPUs, netback's side). Loop-device workers and writeback\n"
                  "                  still run in kworkers no cgroup caps; softirq time is charged to the\n"
                  "                  task it interrupts. `info` shows the model, the slice, each VM's\n"
                  "                  cpu.max and rps_cpus; they go with the VM's cgroup and namespaces.\n"));
    up_cmd->add_option("--vms", up.vms, "number of VMs (1..200)")->capture_default_str();
    up_cmd->add_option("--disks", up.disks, "disks per VM (0..15)")->capture_default_str();
    up_cmd->add_option("--disk-mib", up.disk_mib, "size of each disk image in MiB (sparse)")->capture_default_str();
    up_cmd->add_option("--weights", up.weights, "engine weight per VM, e.g. 1,1,2 (default all 1)");
    up_cmd->add_option("--link-mbit", up.link_mbit,
                       "rate of the client link in Mbit/s, tbf on peth0 and the client's eth0 (0 = unlimited)")
        ->capture_default_str();
    up_cmd->add_option("--disk-cache", up.disk_cache,
                       "how vpiped reads the images for file -> socket: host (through dom0's page cache; "
                       "coherent, the images are on loop devices) or direct (O_DIRECT)")
        ->check(CLI::IsMember({"host", "direct"}))
        ->capture_default_str();
    up_cmd->add_option("--guest-cpus", up.guest_cpus, "cpuset of the VMs and neighbours")->capture_default_str();
    up_cmd->add_option("--dom0-cpus", up.dom0_cpus, "cpuset of dom0 (the engine); default: the last CPU");
    up_cmd->add_option("--neighbours", up.neighbours, "busy-looping neighbour \"VMs\" on the guest CPUs")
        ->capture_default_str();
    up_cmd->add_option("--vcpu-quota", up.vcpu_quota, "CPU quota per VM cgroup in percent of one CPU (0 = none)")
        ->capture_default_str();
    up_cmd->add_option("--neighbour-model", up.neighbour_model,
                       "how neighbours delay a VM: shares (equal cgroup shares) or hypervisor (credit slices "
                       "via cpu.max, receive steering onto the guest CPUs); see DESCRIPTION")
        ->capture_default_str();
    up_cmd->add_option("--slice-ms", up.slice_ms,
                       "hypervisor model: the credit time slice in ms, 1..1000; the VM's cpu.max period is "
                       "(neighbours + 1) x slice, at most 1000 ms")
        ->capture_default_str();
    up_cmd->add_option("--image-dir", up.image_dir, "where the disk images live")->capture_default_str();
    up_cmd->add_flag("--no-daemons", no_daemons, "don't start vpiped / vpipe-guestd (tests)")->group("");
    up_cmd->footer(std::string(kExitCommon) +
                   "\nEXAMPLES\n"
                   "    vpipe-lab up\n"
                   "    vpipe-lab up --vms 3 --weights 1,1,2 --disks 2 --disk-mib 4096\n"
                   "    vpipe-lab up --vms 2 --guest-cpus 0 --dom0-cpus 1 --neighbours 2 --vcpu-quota 50 --link-mbit 1000\n"
                   "    vpipe-lab up --vms 1 --guest-cpus 0 --dom0-cpus 1 --neighbours 2 --neighbour-model hypervisor\n");

    // ---- down
    auto* down_cmd = app.add_subcommand(
        "down", man("vpipe-lab down - remove everything the lab created",
                    "vpipe-lab down",
                    "    Kills the engine, agents and neighbours (by recorded pid, then every process found in a\n"
                    "    lab cgroup or vpl-* namespace), unmounts /run/vpipe-lab/*, detaches loop devices backed\n"
                    "    by lab images, deletes the vpl-* namespaces (with the bridge, veths, qdiscs), removes the\n"
                    "    vpipe-lab cgroups, the images and /run/vpipe-lab. Works without state.json (after a\n"
                    "    crash or a half-failed up) by scanning. Idempotent.\n"
                    "\nENVIRONMENT\n"
                    "    VPIPE_LAB_KEEP_LOGS=DIR  first copy every *.log of /run/vpipe-lab (vpiped.log,\n"
                    "                             vmN/agent.log) to DIR/<UTC time>-<pid>/: the lab tests take\n"
                    "                             the lab down when they end, so this keeps a failed run's logs\n"));
    down_cmd->footer(std::string("EXIT STATUS\n"
                                 "    0  everything is gone (also when there was nothing)\n"
                                 "    1  something could not be removed (listed on stderr); run it again\n") +
                     "\nEXAMPLES\n    vpipe-lab down\n"
                     "    VPIPE_LAB_KEEP_LOGS=/tmp/lab-logs build/bin/test_socket_offload --gtest_repeat=20\n");

    // ---- info
    bool info_json = false;
    auto* info_cmd = app.add_subcommand(
        "info", man("vpipe-lab info - describe the running lab",
                    "vpipe-lab info [--json]",
                    "    Prints the VMs, their addresses, disks and daemons. With --json prints the state:\n"
                    "    {\"engine\":{pid,config,control_socket,log}, \"client\":{ip,netns},\n"
                    "     \"dom0\":{netns,bridge,ip}, \"vms\":[{name,ip,mac,netns,vif,weight,agent_pid,\n"
                    "     agent_socket,agent_config,agent_log,cgroup,disks:[{vdev,image,device,mount}]}], ...}\n"
                    "    Pids are 0 when the daemons were not started.\n"));
    info_cmd->add_flag("--json", info_json, "machine-readable output");
    info_cmd->footer(std::string("EXIT STATUS\n    0  the lab is up\n    1  it is not (or its state is unreadable)\n") +
                     "\nEXAMPLES\n    vpipe-lab info\n    vpipe-lab info --json | jq -r '.vms[0].disks[0].mount'\n");

    // ---- restart-engine
    bool restart_kill = false;
    auto* restart_cmd = app.add_subcommand(
        "restart-engine", man("vpipe-lab restart-engine - stop the lab's engine and start it again",
                              "vpipe-lab restart-engine [--kill]",
                              "    Stops vpiped with SIGTERM (with --kill: SIGKILL, as if it crashed: nothing of its\n"
                              "    own clean-up runs) and starts it again with the same configuration, in dom0's\n"
                              "    namespace and cgroup. The agents reconnect by themselves. For fault tests: what\n"
                              "    the old engine left (steering elements, shadow sockets' flows) the new one must\n"
                              "    remove.\n"));
    restart_cmd->add_flag("--kill", restart_kill, "SIGKILL instead of SIGTERM");
    restart_cmd->footer(std::string("EXIT STATUS\n    0  the new engine is up\n    1  no lab, or it did not come up "
                                    "(the last lines of its log on stderr)\n") +
                        "\nEXAMPLES\n    vpipe-lab restart-engine --kill\n");

    // ---- restart-agent
    bool agent_kill = false;
    std::string agent_vm;
    uint32_t agent_timeout_ms = 0;
    auto* agent_cmd = app.add_subcommand(
        "restart-agent", man("vpipe-lab restart-agent - stop a VM's agent (vpipe-guestd) and start it again",
                             "vpipe-lab restart-agent VM [--kill] [--request-timeout-ms MS]",
                             "    Stops the VM's vpipe-guestd with SIGTERM (with --kill: SIGKILL, as if it crashed)\n"
                             "    and starts it again with the same configuration, in the VM's namespace and\n"
                             "    cgroup. For fault tests: what the old agent left (flow-block elements, held\n"
                             "    flows, file holds) the new one and the engine must remove. --request-timeout-ms\n"
                             "    starts the new agent with that bound on the engine's answers (vpipe-guestd\n"
                             "    --request-timeout-ms; for engine-hang tests); without it, the configuration's.\n"));
    agent_cmd->add_option("VM", agent_vm, "the VM (vm1, ...)")->required();
    agent_cmd->add_flag("--kill", agent_kill, "SIGKILL instead of SIGTERM");
    agent_cmd->add_option("--request-timeout-ms", agent_timeout_ms, "the new agent's request_timeout_ms")
        ->check(CLI::Range(100u, 3600000u));
    agent_cmd->footer(std::string("EXIT STATUS\n    0  the new agent is up\n    1  no lab, no such VM, or it did not "
                                  "come up\n") +
                      "\nEXAMPLES\n    vpipe-lab restart-agent vm1 --kill\n"
                      "    vpipe-lab restart-agent vm1 --request-timeout-ms 2000\n");

    // ---- remove-vm
    std::string remove_vm;
    auto* remove_cmd = app.add_subcommand(
        "remove-vm", man("vpipe-lab remove-vm - destroy one VM while the others run",
                         "vpipe-lab remove-vm VM",
                         "    Tears VM down the way a hypervisor destroys a domain: every process in its\n"
                         "    namespace or cgroup (its vpipe-guestd, the applications) is SIGKILLed at once, its\n"
                         "    vif (vifN.0) leaves the bridge and its namespace vpl-VM is deleted; the engine is told\n"
                         "    the VM is gone (its control command remove-vm, as the Xen backend learns it from\n"
                         "    xenstore) and releases it: the channel, queued and running operations (shadow\n"
                         "    sockets reset, steering entries removed), its credit share; the command waits until\n"
                         "    the engine's workers for it ended and its images are closed (60 s at most). Then its\n"
                         "    disks are unmounted and their loop devices detached, its cgroups removed. The images\n"
                         "    stay in the image directory (to be read offline, e.g. mount -o ro,loop) until `down`.\n"
                         "    The engine's configuration loses the VM (restart-engine does not serve it again);\n"
                         "    `info` shows it as removed; exec and restart-agent refuse it. Unlike a destroyed\n"
                         "    domain, the unmount writes back the filesystem's dirty pages (the guest's page\n"
                         "    cache is not lost).\n"));
    remove_cmd->add_option("VM", remove_vm, "the VM (vm1, ...)")->required();
    remove_cmd->footer(std::string("EXIT STATUS\n    0  the VM is gone and the engine released it\n"
                                   "    1  no lab, no such VM, removed already, or a part could not be removed (listed on\n"
                                   "       stderr; `vpipe-lab down` removes the rest)\n") +
                       "\nEXAMPLES\n    vpipe-lab remove-vm vm2\n"
                       "    mount -o ro,loop $(vpipe-lab info --json | jq -r '.vms[1].disks[0].image') /mnt\n");

    // ---- exec / client / dom0
    std::string exec_vm;
    std::vector<std::string> extra;
    const std::string exec_exit =
        "EXIT STATUS\n"
        "    CMD's exit status; 125 when the lab could not be entered (not up, unknown VM, not root);\n"
        "    126 when CMD could not be executed, 127 when it was not found.\n";
    auto* exec_cmd = app.add_subcommand(
        "exec", man("vpipe-lab exec - run a command inside a VM",
                    "vpipe-lab exec VM -- CMD [ARGS...]",
                    "    Runs CMD in VM's network namespace (vpl-VM) and cgroup, with VPIPE_AGENT_SOCKET set to\n"
                    "    that VM's agent socket, VPIPE_VM=VM and VPIPE_DISK=its first disk's mount. The mount\n"
                    "    namespace is the host's: the VM's disks are at /run/vpipe-lab/VM/diskK. stdin, stdout\n"
                    "    and stderr are inherited; the command replaces vpipe-lab (no extra process).\n"));
    exec_cmd->add_option("vm", exec_vm, "VM name (vm1, vm2, ...)")->required();
    exec_cmd->add_option("cmd", extra, "the command (put it after --)");
    exec_cmd->footer(exec_exit + "\nEXAMPLES\n    vpipe-lab exec vm1 -- ping -c1 10.199.0.1\n"
                                 "    vpipe-lab exec vm2 -- sh -c 'echo hi > /run/vpipe-lab/vm2/disk0/x'\n");
    auto* client_cmd = app.add_subcommand(
        "client", man("vpipe-lab client - run a command on the remote client host",
                      "vpipe-lab client -- CMD [ARGS...]",
                      "    Runs CMD in the client's network namespace (vpl-client, 10.199.0.1), the far end of\n"
                      "    dom0's physical port. stdin, stdout and stderr are inherited.\n"));
    client_cmd->add_option("cmd", extra, "the command (put it after --)");
    client_cmd->footer(exec_exit + "\nEXAMPLES\n    vpipe-lab client -- ping -c1 10.199.0.11\n"
                                   "    vpipe-lab client -- curl http://10.199.0.11:8080/file\n");
    auto* dom0_cmd = app.add_subcommand(
        "dom0", man("vpipe-lab dom0 - run a command in dom0",
                    "vpipe-lab dom0 -- CMD [ARGS...]",
                    "    Runs CMD in dom0's network namespace (vpl-dom0) and cgroup (vpipe-lab/dom0, the dom0\n"
                    "    CPUs), with VPIPE_CONTROL_SOCKET set to the engine's control socket.\n"));
    dom0_cmd->add_option("cmd", extra, "the command (put it after --)");
    dom0_cmd->footer(exec_exit + "\nEXAMPLES\n    vpipe-lab dom0 -- nft list ruleset\n"
                                 "    vpipe-lab dom0 -- bridge link show\n");

    // ---- demo
    auto* demo_cmd = app.add_subcommand(
        "demo", man("vpipe-lab demo - a short tour: copy a file in vm1 with cp-vpipe and with cp",
                    "vpipe-lab demo",
                    "    Brings the lab up if needed (1 VM, 1 GiB disk), writes 256 MiB of random data in vm1,\n"
                    "    copies it with cp-vpipe (skipped if not built) and with cp, prints both times and the\n"
                    "    SHA-256 sums, and the engine's `vpipectl stats`; takes the lab down again if it\n"
                    "    brought it up.\n"));
    demo_cmd->footer(std::string(kExitCommon) + "\nEXAMPLES\n    vpipe-lab demo\n");

    for (auto* s : {up_cmd, down_cmd, info_cmd, restart_cmd, agent_cmd, remove_cmd, exec_cmd, client_cmd, dom0_cmd,
                    demo_cmd}) {
        s->formatter(fmt);
        s->group("COMMANDS");
        s->set_help_flag();
        s->set_help_flag("-h,--help", "print this help and exit");
    }

    try {
        app.parse(cli_argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? 0 : 2;
    }
    if (!cmd.empty() && !(exec_cmd->parsed() || client_cmd->parsed() || dom0_cmd->parsed())) {
        std::cerr << "vpipe-lab: `-- CMD` is only accepted by exec, client and dom0\n";
        return 2;
    }
    if (verbose) log_level = "debug";
    vpipe::init_logging("vpipe-lab", log_level);
    set_verbose(verbose);

    std::vector<std::string> full = extra;
    full.insert(full.end(), cmd.begin(), cmd.end());
    try {
        if (up_cmd->parsed()) {
            up.daemons = !no_daemons;
            up.slice_ms_given = up_cmd->count("--slice-ms") > 0;
            return cmd_up(up);
        }
        if (down_cmd->parsed()) return cmd_down(false);
        if (info_cmd->parsed()) return cmd_info(info_json);
        if (restart_cmd->parsed()) return cmd_restart_engine(restart_kill ? SIGKILL : SIGTERM);
        if (agent_cmd->parsed()) return cmd_restart_agent(agent_vm, agent_kill ? SIGKILL : SIGTERM, agent_timeout_ms);
        if (remove_cmd->parsed()) return cmd_remove_vm(remove_vm);
        if (exec_cmd->parsed()) return cmd_exec(ExecTarget::Vm, exec_vm, full);
        if (client_cmd->parsed()) return cmd_exec(ExecTarget::Client, "", full);
        if (dom0_cmd->parsed()) return cmd_exec(ExecTarget::Dom0, "", full);
        if (demo_cmd->parsed()) return cmd_demo();
    } catch (const std::exception& e) {
        std::cerr << "vpipe-lab: " << e.what() << "\n";
        return 1;
    }
    return 2;
}
