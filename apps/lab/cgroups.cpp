#include "cgroups.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>
#include <sstream>

#include <spdlog/spdlog.h>

#include "util.h"

namespace vpipe::lab {

namespace {

bool has_token(const std::string& opts, const std::string& tok) {
    for (const auto& t : split(opts, ','))
        if (t == tok) return true;
    return false;
}

// Copies a cpuset file from the parent directory when the child's is empty (v1 needs both
// cpuset.cpus and cpuset.mems set before a task may join).
void inherit_cpuset(const std::string& dir, const std::string& file) {
    auto mine = read_file(dir + "/" + file);
    if (mine && !trim(*mine).empty()) return;
    auto parent = read_file(dirname_of(dir) + "/" + file);
    if (parent && !trim(*parent).empty()) write_sysfs(dir + "/" + file, trim(*parent));
}

void enable_v2_controllers(const std::string& dir) {
    auto avail = read_file(dir + "/cgroup.controllers").value_or("");
    for (const char* c : {"cpu", "cpuset"}) {
        // cgroup.controllers is space separated
        std::istringstream in(avail);
        std::string w;
        bool found = false;
        while (in >> w) found = found || (w == c);
        if (!found) {
            spdlog::warn("cgroup v2 controller '{}' is not available in {}", c, dir);
            continue;
        }
        try {
            write_sysfs(dir + "/cgroup.subtree_control", std::string("+") + c);
        } catch (const LabError& e) {
            spdlog::warn("{}", e.what());
        }
    }
}

bool mkdir_recorded(const std::string& dir, const std::function<void(const std::string&)>& record) {
    if (is_dir(dir)) return false;
    record(dir);
    if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
        throw LabError("cannot create cgroup " + dir + ": " + strerror(errno));
    return true;
}

}  // namespace

CgroupSystem detect_cgroups() {
    CgroupSystem cg;
    auto mounts = read_mounts();
    std::string v2root;
    for (const auto& m : mounts)
        if (m.fstype == "cgroup2" && m.mount_point == "/sys/fs/cgroup") v2root = m.mount_point;
    if (!v2root.empty()) {
        cg.mode = "v2";
        cg.roots = {v2root};
        auto ctl = read_file(v2root + "/cgroup.controllers").value_or("");
        std::istringstream in(ctl);
        std::string w;
        while (in >> w) {
            if (w == "cpu") cg.cpu_root = v2root;
            if (w == "cpuset") cg.cpuset_root = v2root;
        }
        return cg;
    }
    cg.mode = "v1";
    for (const char* ctrl : {"cpu", "cpuacct", "cpuset"}) {
        for (const auto& m : mounts) {
            if (m.fstype != "cgroup" || !has_token(m.super_options, ctrl)) continue;
            if (std::find(cg.roots.begin(), cg.roots.end(), m.mount_point) == cg.roots.end())
                cg.roots.push_back(m.mount_point);
            if (std::string(ctrl) == "cpu") cg.cpu_root = m.mount_point;
            if (std::string(ctrl) == "cpuset") cg.cpuset_root = m.mount_point;
            break;
        }
    }
    if (cg.roots.empty()) throw LabError("no usable cgroup hierarchy (neither cgroup v2 nor v1 cpu/cpuset mounted)");
    // primary (cpu) first
    std::stable_partition(cg.roots.begin(), cg.roots.end(), [&](const std::string& r) { return r == cg.cpu_root; });
    return cg;
}

CpuCap cap_percent(int pct) {
    CpuCap c;
    c.quota_us = static_cast<long>(pct) * c.period_us / 100;
    return c;
}

std::vector<std::string> create_lab_cgroup(const CgroupSystem& cg, const std::string& name, const std::string& cpus,
                                           CpuCap cap, const std::function<void(const std::string&)>& record) {
    std::vector<std::string> dirs;
    if (cap.quota_us > 0 && cg.cpu_root.empty())
        throw LabError("a CPU cap (--vcpu-quota, --neighbour-model hypervisor) needs the cpu cgroup controller, "
                       "which is not available");
    for (const auto& root : cg.roots) {
        std::string parent = root + "/" + kCgroupRoot;
        std::string dir = parent + "/" + name;
        if (cg.mode == "v2") enable_v2_controllers(root);
        bool new_parent = mkdir_recorded(parent, record);
        if (cg.mode == "v2" && new_parent) enable_v2_controllers(parent);
        if (root == cg.cpuset_root && cg.mode == "v1") {
            inherit_cpuset(parent, "cpuset.cpus");
            inherit_cpuset(parent, "cpuset.mems");
        }
        mkdir_recorded(dir, record);
        dirs.push_back(dir);
        if (root == cg.cpuset_root) {
            if (!cpus.empty()) write_sysfs(dir + "/cpuset.cpus", cpus);
            if (cg.mode == "v1") {
                inherit_cpuset(dir, "cpuset.cpus");
                inherit_cpuset(dir, "cpuset.mems");
            }
        }
        if (root == cg.cpu_root && cap.quota_us > 0) {
            if (cg.mode == "v2") {
                write_sysfs(dir + "/cpu.max", std::to_string(cap.quota_us) + " " + std::to_string(cap.period_us));
            } else {
                write_sysfs(dir + "/cpu.cfs_period_us", std::to_string(cap.period_us));
                write_sysfs(dir + "/cpu.cfs_quota_us", std::to_string(cap.quota_us));
            }
        }
    }
    if (!cpus.empty() && cg.cpuset_root.empty())
        spdlog::warn("cpuset controller unavailable: CPU list '{}' for {} not enforced", cpus, name);
    return dirs;
}

std::string read_cpu_max(const std::string& dir) {
    if (auto v2 = read_file(dir + "/cpu.max")) return trim(*v2);
    auto quota = read_file(dir + "/cpu.cfs_quota_us"), period = read_file(dir + "/cpu.cfs_period_us");
    if (!quota || !period) return "";
    std::string q = trim(*quota);
    return (q == "-1" ? std::string("max") : q) + " " + trim(*period);
}

void join_cgroups(const std::vector<std::string>& dirs, pid_t pid) {
    std::string p = std::to_string(pid == 0 ? getpid() : pid);
    for (const auto& d : dirs) write_sysfs(d + "/cgroup.procs", p);
}

std::vector<std::string> find_lab_cgroup_dirs() {
    std::vector<std::string> out;
    std::set<std::string> seen;
    for (const auto& m : read_mounts()) {
        if (m.fstype != "cgroup" && m.fstype != "cgroup2") continue;
        std::string top = m.mount_point + "/" + kCgroupRoot;
        if (!is_dir(top) || !seen.insert(top).second) continue;
        // collect subtree, deepest first (children listed before their parent)
        std::vector<std::string> stack{top}, order;
        while (!stack.empty()) {
            std::string d = stack.back();
            stack.pop_back();
            order.push_back(d);
            std::error_code ec;
            for (const auto& e : std::filesystem::directory_iterator(d, ec))
                if (e.is_directory(ec) && !e.is_symlink(ec)) stack.push_back(e.path().string());
        }
        std::sort(order.begin(), order.end(), [](const std::string& a, const std::string& b) {
            return std::count(a.begin(), a.end(), '/') > std::count(b.begin(), b.end(), '/');
        });
        out.insert(out.end(), order.begin(), order.end());
    }
    return out;
}

void leave_lab_cgroups() {
    pid_t me = getpid();
    for (const auto& d : find_lab_cgroup_dirs()) {
        auto pids = cgroup_pids(d);
        if (std::find(pids.begin(), pids.end(), me) == pids.end()) continue;
        std::string root = d.substr(0, d.find(std::string("/") + kCgroupRoot));
        try {
            write_sysfs(root + "/cgroup.procs", std::to_string(me));
        } catch (const LabError& e) {
            spdlog::warn("{}", e.what());
        }
    }
}

std::vector<pid_t> cgroup_pids(const std::string& dir) {
    std::vector<pid_t> out;
    auto text = read_file(dir + "/cgroup.procs");
    if (!text) return out;
    std::istringstream in(*text);
    pid_t p;
    while (in >> p) out.push_back(p);
    return out;
}

bool pid_in_lab_cgroup(pid_t pid) {
    auto text = read_file("/proc/" + std::to_string(pid) + "/cgroup");
    if (!text) return false;
    std::string needle = std::string("/") + kCgroupRoot;
    for (const auto& line : split(*text, '\n')) {
        auto pos = line.find(':', line.find(':') + 1);
        if (pos == std::string::npos) continue;
        std::string path = line.substr(pos + 1);
        if (path == needle || path.rfind(needle + "/", 0) == 0) return true;
    }
    return false;
}

}  // namespace vpipe::lab
