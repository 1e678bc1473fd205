// Processes of the lab: the engine and agents (daemonized binaries), busy-loop neighbours, and the
// scan that finds every process still inside the lab's cgroups or namespaces.
#pragma once

#include <sys/types.h>

#include <string>
#include <utility>
#include <vector>

namespace vpipe::lab {

struct SpawnSpec {
    std::string binary;
    std::vector<std::string> args;  // without argv[0]
    std::string netns;              // "" = stay in the caller's
    std::vector<std::string> cgroup_dirs;
    std::string log_path;  // stdout+stderr (appended)
    std::vector<std::pair<std::string, std::string>> env;
};

// fork, setsid, fork again; the grandchild enters netns + cgroups, redirects output and execs.
// Returns its pid; throws LabError when setup or exec failed.
pid_t spawn_daemon(const SpawnSpec& spec);
// A busy-looping process (nice 0) in `cgroup_dirs`, detached like a daemon.
pid_t spawn_neighbour(int index, const std::vector<std::string>& cgroup_dirs);

// Alive and not a zombie.
bool pid_alive(pid_t pid);
// Waits until `path` is a socket; fails early when `pid` dies. Returns "" or an error text.
std::string wait_for_socket(const std::string& path, pid_t pid, int timeout_ms);

// True when the pid looks like one of ours (lab cgroup, lab netns, or a lab binary).
bool pid_is_lab(pid_t pid, const std::vector<std::pair<dev_t, ino_t>>& netns_ids);
// All processes inside the lab's cgroups or the given namespaces (never us or our ancestors).
std::vector<pid_t> scan_lab_processes(const std::vector<std::pair<dev_t, ino_t>>& netns_ids);
// The processes of one VM: inside network namespace `netns_id` or one of `cgroup_dirs` (never us
// or our ancestors).
std::vector<pid_t> vm_processes(std::pair<dev_t, ino_t> netns_id, const std::vector<std::string>& cgroup_dirs);
// A destroyed domain: SIGSTOP to all of them (waiting up to 2 s until they are stopped), then
// SIGKILL, so that none runs another instruction after the first one died; waits up to 5 s
// for them to vanish. Returns the pids still alive.
std::vector<pid_t> kill_now(const std::vector<pid_t>& pids);
// SIGTERM, wait up to grace_ms, SIGKILL, wait for them to vanish. Returns the pids still alive.
std::vector<pid_t> kill_processes(const std::vector<pid_t>& pids, int grace_ms);

}  // namespace vpipe::lab
