// Lab cgroups under "vpipe-lab/" on cgroup v2 (unified) or v1 (cpu, cpuacct, cpuset hierarchies;
// hybrid hosts count as v1 because the controllers live there).
#pragma once

#include <sys/types.h>

#include <functional>
#include <string>
#include <vector>

namespace vpipe::lab {

struct CgroupSystem {
    std::string mode;                // "v2" or "v1"
    std::vector<std::string> roots;  // hierarchy mount points the lab uses
    std::string cpu_root;            // where cpu quota lives ("" if unavailable)
    std::string cpuset_root;         // where cpuset lives ("" if unavailable)
};

CgroupSystem detect_cgroups();

// CFS bandwidth of a cgroup: at most quota_us of CPU time per period_us (v2 cpu.max, v1
// cpu.cfs_quota_us / cpu.cfs_period_us); quota_us 0 = no cap.
struct CpuCap {
    long quota_us = 0;
    long period_us = 100000;
};
// --vcpu-quota PCT: PCT % of one CPU over a 100 ms period.
CpuCap cap_percent(int pct);

// Creates "vpipe-lab/<name>" in every hierarchy (and "vpipe-lab" itself when missing).
// `record` is called with each directory before it is created (for the persisted state).
// cpus: cpuset list ("" = don't restrict). Returns the directories, the primary (cpu) one first.
std::vector<std::string> create_lab_cgroup(const CgroupSystem& cg, const std::string& name, const std::string& cpus,
                                           CpuCap cap, const std::function<void(const std::string&)>& record);

// The cap as the kernel reports it, "QUOTA PERIOD" ("max PERIOD" when uncapped; v1's quota -1
// reads as "max"); "" when the directory has no cpu controller.
std::string read_cpu_max(const std::string& dir);

// Moves `pid` (0 = the caller) into each directory; throws LabError.
void join_cgroups(const std::vector<std::string>& dirs, pid_t pid = 0);

// Moves the caller out of any lab cgroup (to the root of that hierarchy).
void leave_lab_cgroups();

// Every "vpipe-lab" subtree directory on any cgroup mount of this host, deepest first.
std::vector<std::string> find_lab_cgroup_dirs();
// Pids listed in <dir>/cgroup.procs.
std::vector<pid_t> cgroup_pids(const std::string& dir);
// True when /proc/<pid>/cgroup places it inside a "vpipe-lab" group.
bool pid_in_lab_cgroup(pid_t pid);

}  // namespace vpipe::lab
