// `remove-vm`: one VM goes away while the others run, the way a hypervisor destroys a domain.
// The domain stops at once (its processes SIGKILLed, nothing of theirs runs again), its vif
// leaves the bridge, the backend learns that the domain is gone (here: the engine's control
// command `remove-vm`, where the Xen backend reacts to xenstore) and releases it, and its disks
// are detached. The images stay until `down` (to be read offline).
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <iostream>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "configs.h"
#include "disks.h"
#include "lab.h"
#include "netlab.h"
#include "procs.h"
#include "state.h"
#include "util.h"
#include "util/unix_socket.h"

namespace vpipe::lab {

namespace {

std::string now_iso() {
    char buf[64];
    time_t t = time(nullptr);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

// One request on the engine's control socket; its reply, or throws LabError.
nlohmann::json engine_call(const std::string& socket, const nlohmann::json& req) {
    UniqueFd fd = connect_unix(socket);
    if (!fd) throw LabError("cannot reach the engine at " + socket + ": " + strerror(errno));
    const std::string line = req.dump() + "\n";
    if (send_msg_fds(fd.get(), line.data(), line.size(), nullptr, 0) < 0)
        throw LabError("cannot talk to the engine at " + socket + ": " + strerror(errno));
    std::string buf;
    char chunk[4096];
    while (buf.find('\n') == std::string::npos) {
        ssize_t n = ::read(fd.get(), chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) throw LabError("the engine closed its control connection without answering");
        buf.append(chunk, static_cast<size_t>(n));
    }
    auto j = nlohmann::json::parse(buf.substr(0, buf.find('\n')), nullptr, false);
    if (j.is_discarded()) throw LabError("the engine's answer is not JSON: " + buf);
    return j;
}

}  // namespace

int cmd_remove_vm(const std::string& name) {
    if (geteuid() != 0) {
        std::cerr << "vpipe-lab remove-vm: must be run as root\n";
        return 1;
    }
    std::optional<LabState> st;
    try {
        st = load_state();
    } catch (const std::exception& e) {
        std::cerr << "vpipe-lab remove-vm: " << e.what() << "\n";
        return 1;
    }
    if (!st || st->status != "up") {
        std::cerr << "vpipe-lab remove-vm: no lab is up\n";
        return 1;
    }
    auto it = std::find_if(st->vms.begin(), st->vms.end(), [&](const VmState& v) { return v.name == name; });
    if (it == st->vms.end()) {
        std::cerr << "vpipe-lab remove-vm: no VM named '" << name << "' in the lab\n";
        return 1;
    }
    VmState& v = *it;
    if (v.removed) {
        std::cerr << "vpipe-lab remove-vm: " << name << " was removed already (" << v.removed_at << ")\n";
        return 1;
    }
    std::vector<std::string> problems;
    // From here on the VM counts as gone (a crash half-way leaves the rest to `down`).
    v.removed = true;
    v.removed_at = now_iso();
    save_state(*st);

    // 1. the domain stops: every process of the VM (its agent, the applications in its
    //    namespace or cgroup) SIGKILLed, no grace. Rounds: one may have forked meanwhile.
    const auto ns = netns_id(v.netns);
    size_t killed = 0;
    for (int round = 0; round < 5; ++round) {
        auto pids = vm_processes(ns, v.cgroup_dirs);
        if (v.agent_pid > 0 && pid_alive(v.agent_pid) && std::find(pids.begin(), pids.end(), v.agent_pid) == pids.end() &&
            pid_is_lab(v.agent_pid, {ns}))
            pids.push_back(v.agent_pid);
        if (pids.empty()) break;
        for (pid_t p : pids) 
            spdlog::debug("{}: SIGKILL {} ({})", v.name, p,
                          trim(read_file("/proc/" + std::to_string(p) + "/comm").value_or("?")));
        killed += pids.size();
        auto left = kill_now(pids);
        if (round == 4)
            for (pid_t p : left) problems.push_back("process " + std::to_string(p) + " survived SIGKILL");
    }
    v.agent_pid = 0;
    ::unlink(v.agent_socket.c_str());
    save_state(*st);

    // 2. its vif leaves the bridge (deleting one end of the veth deletes both, synchronously:
    //    the namespace's own teardown would do it later, asynchronously), then the namespace.
    if (run({"ip", "-n", kDom0Netns, "link", "show", v.vif}).status == 0) {
        auto r = run({"ip", "-n", kDom0Netns, "link", "del", v.vif});
        if (r.status != 0) problems.push_back("cannot delete " + v.vif + ": " + trim(r.output));
    }
    try {
        delete_netns(v.netns);
        st->netns.erase(std::remove(st->netns.begin(), st->netns.end(), v.netns), st->netns.end());
    } catch (const std::exception& e) {
        problems.push_back(e.what());
    }
    save_state(*st);

    // 3. the backend learns that the domain is gone: the engine releases the VM (its channel,
    //    workers, shadow sockets, steering entries, credit share) and closes its images. A
    //    restarted engine must not serve it again: its configuration loses the VM.
    const bool engine_running = st->daemons && st->engine.pid > 0 && pid_alive(st->engine.pid);
    bool released = false;
    if (engine_running) {
        try {
            auto reply = engine_call(st->engine.control_socket, {{"cmd", "remove-vm"}, {"vm", v.name}});
            if (!reply.value("ok", false))
                problems.push_back("the engine refused remove-vm: " + reply.value("error", reply.dump()));
            else if (!reply.value("released", false))
                problems.push_back("the engine's workers for " + v.name + " did not end within 60 s");
            else
                released = true;
        } catch (const std::exception& e) {
            problems.push_back(e.what());
        }
    }
    try {
        write_file(st->engine.config, engine_config_text(*st));
    } catch (const std::exception& e) {
        problems.push_back(e.what());
    }

    // 4. its disks are detached: the guest's view (the mount) goes, then the loop device. The
    //    image files stay where they are until `down`.
    for (auto& d : v.disks) {
        if (d.mounted || !mounts_under(d.mount).empty()) {
            auto left = unmount_under(d.mount);
            for (const auto& m : left) problems.push_back("still mounted: " + m);
            d.mounted = !left.empty();
        }
        if (!d.device.empty()) {
            try {
                detach_loop(d.device);
                d.device.clear();
            } catch (const std::exception& e) {
                problems.push_back(e.what());
            }
        }
        save_state(*st);
    }

    // 5. its cgroups (empty now)
    for (const auto& dir : v.cgroup_dirs) {
        if (!is_dir(dir)) continue;
        if (rmdir(dir.c_str()) != 0 && errno != ENOENT) {
            problems.push_back("cannot remove cgroup " + dir + ": " + strerror(errno));
            continue;
        }
        st->cgroup_dirs.erase(std::remove(st->cgroup_dirs.begin(), st->cgroup_dirs.end(), dir), st->cgroup_dirs.end());
    }
    save_state(*st);

    if (!problems.empty()) {
        for (const auto& p : problems) std::cerr << "vpipe-lab remove-vm: " << p << "\n";
        std::cerr << "vpipe-lab remove-vm: " << name << " is only partly removed; `vpipe-lab down` removes the rest\n";
        return 1;
    }
    std::printf("%s removed: %zu process(es) killed, %s and namespace %s deleted, %zu disk(s) detached%s\n",
                name.c_str(), killed, v.vif.c_str(), v.netns.c_str(), v.disks.size(),
                released ? ", released by the engine" : engine_running ? "" : " (no engine running)");
    return 0;
}

}  // namespace vpipe::lab
