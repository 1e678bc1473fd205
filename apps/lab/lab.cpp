// `up`, `down` and `info`.
#include "lab.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <regex>
#include <set>
#include <thread>
#include <tuple>

#include <spdlog/spdlog.h>

#include "cgroups.h"
#include "configs.h"
#include "disks.h"
#include "netlab.h"
#include "procs.h"
#include "state.h"
#include "util.h"

namespace vpipe::lab {

namespace {

volatile sig_atomic_t g_interrupted = 0;
void on_signal(int) { g_interrupted = 1; }

void check_interrupted() {
    if (g_interrupted) throw LabError("interrupted");
}

// Test hook: VPIPE_LAB_TEST_CRASH_AFTER=<stage> kills `up` with SIGKILL after that stage.
void crash_point(const char* stage) {
    const char* want = getenv("VPIPE_LAB_TEST_CRASH_AFTER");
    if (want && strcmp(want, stage) == 0) {
        spdlog::warn("test hook: crashing after stage '{}'", stage);
        raise(SIGKILL);
    }
}

std::string now_iso() {
    char buf[64];
    time_t t = time(nullptr);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

std::string mac_of(int id) {
    char buf[32];
    snprintf(buf, sizeof buf, "02:00:00:00:00:%02x", id);
    return buf;
}

std::string run_path(const std::string& rel) { return std::string(kRunDir) + "/" + rel; }

std::vector<int> parse_weights(const std::string& s, int vms) {
    std::vector<int> w;
    if (trim(s).empty()) return std::vector<int>(static_cast<size_t>(vms), 1);
    for (const auto& part : split(s, ',')) {
        try {
            size_t used = 0;
            int v = std::stoi(trim(part), &used);
            if (used != trim(part).size() || v < 1 || v > 10000) throw std::invalid_argument("range");
            w.push_back(v);
        } catch (const std::logic_error&) {
            throw LabError("bad --weights '" + s + "': expected positive integers like 1,1,2");
        }
    }
    if (w.size() == 1) return std::vector<int>(static_cast<size_t>(vms), w[0]);
    if (static_cast<int>(w.size()) != vms)
        throw LabError("--weights has " + std::to_string(w.size()) + " values for " + std::to_string(vms) + " VMs");
    return w;
}

std::string checked_cpus(const std::string& list, const char* what) {
    auto cpus = parse_cpu_list(list);
    auto online = online_cpus();
    for (int c : cpus)
        if (std::find(online.begin(), online.end(), c) == online.end())
            throw LabError(std::string(what) + ": CPU " + std::to_string(c) + " is not online (online: " +
                           format_cpu_list(online) + ")");
    return format_cpu_list(cpus);
}

// Anything of an earlier lab still around? Returns a description or "".
std::string remnants() {
    std::vector<std::string> found;
    if (path_exists(kStatePath)) found.push_back(kStatePath);
    for (const auto& n : list_lab_netns()) found.push_back("netns " + n);
    for (const auto& m : mounts_under(kRunDir)) found.push_back("mount " + m);
    auto cg = find_lab_cgroup_dirs();
    if (!cg.empty()) found.push_back("cgroup " + cg.back());
    std::string out;
    for (const auto& f : found) out += (out.empty() ? "" : ", ") + f;
    return out;
}

// ---------------------------------------------------------------------------------------- up

struct Upper {
    const UpOptions& opt;
    LabState st;
    bool started = false;  // true once /run/vpipe-lab was created by us

    void save() { save_state(st); }
    void record_cgroup(const std::string& dir) {
        st.cgroup_dirs.push_back(dir);
        save();
    }

    void build() {
        auto weights = parse_weights(opt.weights, opt.vms);
        std::string guest_cpus = checked_cpus(opt.guest_cpus, "--guest-cpus");
        std::string dom0_cpus;
        if (opt.dom0_cpus.empty()) {
            dom0_cpus = std::to_string(online_cpus().back());
        } else {
            dom0_cpus = checked_cpus(opt.dom0_cpus, "--dom0-cpus");
        }
        std::string vpiped, guestd;
        if (opt.daemons) {
            vpiped = find_binary("vpiped");
            guestd = find_binary("vpipe-guestd");
            if (vpiped.empty() || guestd.empty())
                throw LabError(std::string("cannot find ") + (vpiped.empty() ? "vpiped" : "vpipe-guestd") +
                               " next to " + self_exe() + " or in PATH (build it, or use --no-daemons)");
        }
        if (!opt.image_dir.empty() && opt.image_dir[0] != '/')
            throw LabError("--image-dir must be an absolute path");

        // skeleton of the state: everything `down` needs to know, saved before each creation
        st.created_at = now_iso();
        st.creator_pid = getpid();
        st.image_dir = opt.image_dir;
        st.disk_mib = opt.disk_mib;
        st.link_mbit = opt.link_mbit;
        st.disk_cache = opt.disk_cache;
        st.vcpu_quota = opt.vcpu_quota;
        const bool hypervisor = opt.neighbour_model == "hypervisor";
        st.neighbour_model = opt.neighbour_model;
        st.slice_ms = hypervisor ? opt.slice_ms : 0;
        st.guest_cpus = guest_cpus;
        st.dom0_cpus = dom0_cpus;
        st.daemons = opt.daemons;
        st.engine.config = run_path("vpiped.toml");
        st.engine.control_socket = run_path("vpiped.ctl");
        st.engine.log = run_path("vpiped.log");
        st.engine.binary = vpiped;
        for (int i = 1; i <= opt.vms; ++i) {
            VmState v;
            v.id = i;
            v.name = "vm" + std::to_string(i);
            v.ip = std::string(kSubnetPrefix) + std::to_string(10 + i);
            v.mac = mac_of(i);
            v.netns = std::string(kNetnsPrefix) + v.name;
            v.vif = "vif" + std::to_string(i) + ".0";
            v.weight = weights[static_cast<size_t>(i - 1)];
            v.agent_socket = run_path(v.name + "/agent.sock");
            v.agent_config = run_path(v.name + "/agent.toml");
            v.agent_log = run_path(v.name + "/agent.log");
            v.agent_state_dir = run_path(v.name + "/agent-state");
            v.engine_channel = run_path(v.name + "/engine.sock");
            st.vms.push_back(v);
        }
        // mkdir is the lock against a concurrent `up`: only after it succeeded may we roll back
        if (mkdir(kRunDir, 0755) != 0)
            throw LabError(std::string("cannot create ") + kRunDir + ": " + strerror(errno) +
                           (errno == EEXIST ? " (another `vpipe-lab up` running?)" : ""));
        started = true;
        save();
        // breadcrumb for `down` when state.json is lost
        write_file(std::string(kRunDir) + "/image-dir", opt.image_dir + "\n");
        crash_point("state");

        // cgroups. `up` itself runs in vpipe-lab/setup from here on, so that the children it runs
        // (mkfs, losetup, mount...) are found and killed by `down` if `up` itself is killed.
        auto cg = detect_cgroups();
        st.cgroup_mode = cg.mode;
        auto rec = [this](const std::string& d) { record_cgroup(d); };
        join_cgroups(create_lab_cgroup(cg, "setup", "", {}, rec));
        st.engine.cgroup_dirs = create_lab_cgroup(cg, "dom0", dom0_cpus, {}, rec);
        st.engine.cgroup = st.engine.cgroup_dirs.front();
        // hypervisor model: a credit scheduler runs each of the K+1 busy vCPUs on the guest's
        // physical CPU for one slice per round, so the VM gets at most one slice per K+1 slices
        CpuCap vm_cap = cap_percent(opt.vcpu_quota);
        if (hypervisor && opt.neighbours > 0)
            vm_cap = {st.slice_ms * 1000L, static_cast<long>(opt.neighbours + 1) * st.slice_ms * 1000L};
        for (auto& v : st.vms) {
            v.cgroup_dirs = create_lab_cgroup(cg, v.name, guest_cpus, vm_cap, rec);
            v.cgroup = v.cgroup_dirs.front();
            if (!cg.cpu_root.empty()) v.cpu_max = read_cpu_max(v.cgroup);
        }
        save();
        check_interrupted();
        crash_point("cgroups");

        // network
        std::vector<std::string> names{kDom0Netns, kClientNetns};
        for (const auto& v : st.vms) names.push_back(v.netns);
        for (const auto& n : names) {
            st.netns.push_back(n);
            save();
            create_netns(n);
        }
        crash_point("netns");
        setup_dom0_bridge();
        setup_client_link();
        for (const auto& v : st.vms) setup_vm_link(v);
        set_link_limit(opt.link_mbit);
        if (hypervisor) {
            // The VM's receive processing on its own CPUs, as netfront's runs on the vCPU; what it
            // sends is bridged on dom0's CPUs, as netback's work is dom0's (docs/operations.md).
            for (auto& v : st.vms) {
                for (const auto& [ns, dev, cpus] : {std::tuple{v.netns, std::string("eth0"), guest_cpus},
                                                    std::tuple{std::string(kDom0Netns), v.vif, dom0_cpus}}) {
                    for (const auto& r : set_rps(ns, dev, cpu_mask(parse_cpu_list(cpus))))
                        v.rps.push_back({r.netns, r.dev, r.queue, r.before, r.mask});
                    save();
                }
            }
        }
        check_interrupted();
        crash_point("network");

        // disks
        if (!is_dir(opt.image_dir)) {
            st.image_dir_created = true;
            save();
            mkdir_p(opt.image_dir);
        }
        write_file(opt.image_dir + "/" + kImageDirMarker,
                   std::string("vpipe-lab image directory\ncreated=") + (st.image_dir_created ? "1" : "0") + "\n");
        for (auto& v : st.vms) {
            mkdir_p(run_path(v.name));
            mkdir_p(v.agent_state_dir, 0700);
            mkdir_p(opt.image_dir + "/" + v.name);
            for (int k = 0; k < opt.disks; ++k) {
                check_interrupted();
                DiskState d;
                d.index = k;
                d.vdev = vdev_of(k);
                d.image = opt.image_dir + "/" + v.name + "/disk" + std::to_string(k) + ".img";
                d.mount = run_path(v.name + "/disk" + std::to_string(k));
                v.disks.push_back(d);
                save();
                auto& dd = v.disks.back();
                if (path_exists(dd.image))
                    throw LabError("image " + dd.image + " already exists (left by something else?); remove it first");
                create_image(dd.image, opt.disk_mib);
                auto loop = attach_loop(dd.image);
                dd.device = loop.device;
                dd.direct_io = loop.direct_io;
                save();
                mount_disk(dd.device, dd.mount);
                dd.mounted = true;
                save();
                crash_point("disk");
            }
        }
        crash_point("disks");

        // configuration files
        write_file(st.engine.config, engine_config_text(st));
        for (const auto& v : st.vms) write_file(v.agent_config, agent_config_text(v));

        // daemons: the engine first, then one agent per VM
        if (opt.daemons) {
            SpawnSpec es;
            es.binary = vpiped;
            es.args = {"--config", st.engine.config};
            es.netns = kDom0Netns;
            es.cgroup_dirs = st.engine.cgroup_dirs;
            es.log_path = st.engine.log;
            st.engine.pid = spawn_daemon(es);
            save();
            if (auto err = wait_for_socket(st.engine.control_socket, st.engine.pid, 10000); !err.empty())
                throw LabError("engine did not come up: " + err + "\n  last lines of " + st.engine.log + ":\n" +
                               tail_file(st.engine.log, 15));
            for (auto& v : st.vms) {
                check_interrupted();
                SpawnSpec as;
                as.binary = guestd;
                as.args = {"--config", v.agent_config};
                as.netns = v.netns;
                as.cgroup_dirs = v.cgroup_dirs;
                as.log_path = v.agent_log;
                as.env = {{"VPIPE_VM", v.name}};
                v.agent_pid = spawn_daemon(as);
                save();
                if (auto err = wait_for_socket(v.agent_socket, v.agent_pid, 10000); !err.empty())
                    throw LabError("agent of " + v.name + " did not come up: " + err + "\n  last lines of " +
                                   v.agent_log + ":\n" + tail_file(v.agent_log, 15));
            }
        }
        crash_point("daemons");

        // busy neighbours sharing the guest CPUs
        for (int j = 1; j <= opt.neighbours; ++j) {
            NeighbourState n;
            n.index = j;
            n.cgroup_dirs = create_lab_cgroup(cg, "neighbour" + std::to_string(j), guest_cpus, {}, rec);
            n.cgroup = n.cgroup_dirs.front();
            st.neighbours.push_back(n);
            save();
            st.neighbours.back().pid = spawn_neighbour(j, n.cgroup_dirs);
            save();
        }
        crash_point("neighbours");

        // `up` leaves vpipe-lab/setup (everything it started joined its own group)
        leave_lab_cgroups();
        for (const auto& root : cg.roots) {
            std::string dir = root + "/" + kCgroupRoot + "/setup";
            if (rmdir(dir.c_str()) == 0)
                st.cgroup_dirs.erase(std::remove(st.cgroup_dirs.begin(), st.cgroup_dirs.end(), dir), st.cgroup_dirs.end());
        }
        st.status = "up";
        save();
    }
};

void print_summary(const LabState& st) {
    std::cout << "lab is up: " << st.vms.size() << " VM(s) on bridge " << kBridge << " in " << kDom0Netns
              << " (10.199.0.254), client " << kClientNetns << " (10.199.0.1)\n";
    for (const auto& v : st.vms) {
        if (v.removed) {
            std::cout << "  " << v.name << "  removed at " << v.removed_at << " (`vpipe-lab remove-vm`); its images stay";
            for (const auto& d : v.disks) std::cout << " " << d.image;
            std::cout << "\n";
            continue;
        }
        std::cout << "  " << v.name << "  " << v.ip << "  " << v.mac << "  netns " << v.netns << "  weight "
                  << v.weight;
        if (v.agent_pid) std::cout << "  agent pid " << v.agent_pid;
        std::cout << "\n";
        for (const auto& d : v.disks)
            std::cout << "      disk" << d.index << " vdev " << d.vdev << "  " << d.device << (d.direct_io ? " (dio)" : "")
                      << "  -> " << d.mount << "\n";
    }
    if (st.engine.pid)
        std::cout << "  engine pid " << st.engine.pid << ", control " << st.engine.control_socket << ", log "
                  << st.engine.log << "\n";
    else
        std::cout << "  engine and agents not started (--no-daemons)\n";
    if (!st.neighbours.empty()) std::cout << "  " << st.neighbours.size() << " busy neighbour(s) on CPUs " << st.guest_cpus << "\n";
    if (st.neighbour_model == "hypervisor") {
        std::cout << "  neighbour model hypervisor: credit slice " << st.slice_ms << " ms, one per round of "
                  << st.neighbours.size() + 1 << " vCPU(s)\n";
        for (const auto& v : st.vms) {
            if (v.removed) continue;
            std::cout << "      " << v.name << " cpu.max " << (v.cpu_max.empty() ? "-" : v.cpu_max) << ", rps_cpus";
            for (const auto& r : v.rps) std::cout << " " << r.dev << "/" << r.queue << "=" << r.mask;
            std::cout << "\n";
        }
    } else if (!st.neighbours.empty() || st.vcpu_quota > 0) {
        std::cout << "  neighbour model shares";
        if (st.vcpu_quota > 0) std::cout << ", --vcpu-quota " << st.vcpu_quota << " %";
        std::cout << "\n";
    }
    std::cout << "  try: vpipe-lab exec vm1 -- ping -c1 10.199.0.1   |   vpipe-lab info --json\n";
}

// ---------------------------------------------------------------------------------------- down

bool image_dir_removable(const std::string& dir) {
    auto marker = read_file(dir + "/" + kImageDirMarker);
    return dir == kDefaultImageDir || (marker && marker->find("created=1") != std::string::npos);
}

// Removes the lab's images under dir (vmN/diskK.img), the vmN dirs when empty, the marker, and the
// directory itself when the lab created it. Returns leftovers.
std::vector<std::string> clean_image_dir(const std::string& dir, bool created_by_state) {
    std::vector<std::string> left;
    if (!is_dir(dir)) return left;
    bool has_marker = path_exists(dir + "/" + kImageDirMarker);
    if (!has_marker && dir != kDefaultImageDir && !created_by_state) return left;
    bool removable = created_by_state || image_dir_removable(dir);
    static const std::regex vm_re(R"(^vm[0-9]+$)"), disk_re(R"(^disk[0-9]+\.img(\.tmp)?$)");
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
        std::string name = e.path().filename().string();
        if (!std::regex_match(name, vm_re) || !e.is_directory(ec)) continue;
        for (const auto& f : std::filesystem::directory_iterator(e.path(), ec)) {
            if (std::regex_match(f.path().filename().string(), disk_re) && unlink(f.path().c_str()) != 0)
                left.push_back(f.path().string());
        }
        rmdir(e.path().c_str());
    }
    unlink((dir + "/" + kImageDirMarker).c_str());
    if (removable) rmdir(dir.c_str());  // only when empty
    return left;
}

}  // namespace

bool lab_is_up() { return path_exists(kStatePath); }

int cmd_up(const UpOptions& opt) {
    if (geteuid() != 0) {
        std::cerr << "vpipe-lab up: must be run as root (namespaces, loop devices, mounts, cgroups)\n";
        return 1;
    }
    if (opt.vms < 1 || opt.vms > 200 || opt.disks < 0 || opt.disks > 15 || opt.disk_mib < 16 ||
        opt.neighbours < 0 || opt.neighbours > 64 || opt.link_mbit < 0 || opt.vcpu_quota < 0 ||
        (opt.disk_cache != "host" && opt.disk_cache != "direct")) {
        std::cerr << "vpipe-lab up: out of range: --vms 1..200, --disks 0..15, --disk-mib >= 16, --neighbours 0..64, "
                     "--link-mbit >= 0, --vcpu-quota >= 0\n";
        return 2;
    }
    if (opt.neighbour_model != "shares" && opt.neighbour_model != "hypervisor") {
        std::cerr << "vpipe-lab up: unknown --neighbour-model '" << opt.neighbour_model
                  << "' (shares or hypervisor)\n";
        return 2;
    }
    if (opt.neighbour_model == "shares" && opt.slice_ms_given) {
        std::cerr << "vpipe-lab up: --slice-ms applies to --neighbour-model hypervisor only\n";
        return 2;
    }
    if (opt.neighbour_model == "hypervisor") {
        const int slice = opt.slice_ms;
        if (slice < 1 || slice > 1000) {
            std::cerr << "vpipe-lab up: --slice-ms must be 1..1000 (got " << slice << ")\n";
            return 2;
        }
        if ((opt.neighbours + 1) * slice > 1000) {
            std::cerr << "vpipe-lab up: (--neighbours + 1) x --slice-ms = " << (opt.neighbours + 1) * slice
                      << " ms is the VM's cpu.max period, which the kernel caps at 1000 ms\n";
            return 2;
        }
        if (opt.vcpu_quota > 0) {
            std::cerr << "vpipe-lab up: --vcpu-quota and --neighbour-model hypervisor both set the VM's cpu.max; "
                         "use one\n";
            return 2;
        }
    }
    if (auto r = remnants(); !r.empty()) {
        if (path_exists(kStatePath))
            std::cerr << "vpipe-lab up: the lab is already up (see `vpipe-lab info`); run `vpipe-lab down` first\n";
        else
            std::cerr << "vpipe-lab up: remnants of an earlier lab exist (" << r
                      << "); run `vpipe-lab down` first\n";
        return 1;
    }
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    for (int s : {SIGINT, SIGTERM, SIGHUP}) sigaction(s, &sa, nullptr);
    auto t0 = std::chrono::steady_clock::now();
    Upper up{opt, {}, false};
    try {
        up.build();
    } catch (const std::exception& e) {
        std::cerr << "vpipe-lab up: " << e.what() << "\n";
        if (!up.started) return 1;  // nothing created (and maybe someone else's lab): don't touch
        std::cerr << "vpipe-lab up: rolling back...\n";
        int rc = cmd_down(true);
        std::cerr << (rc == 0 ? "vpipe-lab up: rolled back, nothing left behind\n"
                              : "vpipe-lab up: rollback incomplete, see above; run `vpipe-lab down`\n");
        return 1;
    }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!opt.quiet) {
        print_summary(up.st);
        std::printf("  (up took %.2f s)\n", secs);
    }
    return 0;
}

// VPIPE_LAB_KEEP_LOGS=DIR: before /run/vpipe-lab goes, its logs (the engine's, each agent's:
// every *.log below it) are copied to DIR/<UTC time>-<pid>/, keeping their relative paths, so
// that a test that failed (lab tests take the lab down in their teardown) can still be read.
// Returns that directory, or "" (not asked, or nothing copied; a failure is only reported).
static std::string keep_logs() {
    namespace fs = std::filesystem;
    const char* dir = std::getenv("VPIPE_LAB_KEEP_LOGS");
    if (!dir || !*dir) return "";
    char stamp[32];
    const std::time_t now = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&now, &tm);
    std::strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm);
    const fs::path to = fs::path(dir) / (std::string(stamp) + "-" + std::to_string(::getpid()));
    std::error_code ec;
    size_t copied = 0;
    for (auto it = fs::recursive_directory_iterator(kRunDir, fs::directory_options::skip_permission_denied, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
        if (!it->is_regular_file(ec) || it->path().extension() != ".log") continue;
        const fs::path dst = to / fs::relative(it->path(), kRunDir, ec);
        fs::create_directories(dst.parent_path(), ec);
        if (!ec && fs::copy_file(it->path(), dst, fs::copy_options::overwrite_existing, ec)) ++copied;
        if (ec) std::cerr << "vpipe-lab down: cannot keep " << it->path().string() << ": " << ec.message() << "\n";
        ec.clear();
    }
    return copied ? to.string() : "";
}

int cmd_down(bool quiet) {
    if (geteuid() != 0) {
        std::cerr << "vpipe-lab down: must be run as root\n";
        return 1;
    }
    auto t0 = std::chrono::steady_clock::now();
    std::optional<LabState> st;
    try {
        st = load_state();
    } catch (const std::exception& e) {
        spdlog::warn("{}; cleaning up by scanning only", e.what());
    }
    bool anything = st.has_value();
    std::vector<std::string> problems;
    leave_lab_cgroups();  // e.g. a failed `up` rolling back from inside vpipe-lab/setup
    std::set<std::string> image_dirs{kDefaultImageDir};
    if (st && !st->image_dir.empty()) image_dirs.insert(st->image_dir);
    if (auto crumb = read_file(std::string(kRunDir) + "/image-dir"); crumb && !trim(*crumb).empty())
        image_dirs.insert(trim(*crumb));

    // 1. processes: recorded pids first (graceful), then everything found in lab cgroups/netns
    std::set<std::string> ns_names;
    for (const auto& n : list_lab_netns()) ns_names.insert(n);
    if (st)
        for (const auto& n : st->netns) ns_names.insert(n);
    std::vector<std::pair<dev_t, ino_t>> ns_ids;
    for (const auto& n : ns_names)
        if (auto id = netns_id(n); id.second != 0) ns_ids.push_back(id);
    if (st) {
        std::vector<pid_t> recorded;
        for (const auto& v : st->vms) recorded.push_back(v.agent_pid);
        recorded.push_back(st->engine.pid);  // agents first, then the engine
        for (const auto& n : st->neighbours) recorded.push_back(n.pid);
        std::vector<pid_t> ours;
        for (pid_t p : recorded)
            if (p > 0 && pid_is_lab(p, ns_ids)) ours.push_back(p);
        if (!ours.empty()) anything = true;
        kill_processes(ours, 3000);
    }
    for (int round = 0; round < 3; ++round) {
        auto found = scan_lab_processes(ns_ids);
        if (found.empty()) break;
        anything = true;
        spdlog::debug("killing {} process(es) found in the lab", found.size());
        auto left = kill_processes(found, round == 0 ? 1000 : 200);
        if (round == 2)
            for (pid_t p : left) problems.push_back("process " + std::to_string(p) + " survived SIGKILL");
    }

    // 2. mounts
    if (!mounts_under(kRunDir).empty()) anything = true;
    for (const auto& m : unmount_under(kRunDir)) problems.push_back("still mounted: " + m);

    // 3. loop devices backed by lab images
    std::vector<std::string> images;
    if (st)
        for (const auto& v : st->vms)
            for (const auto& d : v.disks) images.push_back(d.image);
    for (const auto& l : find_lab_loops(images)) {
        anything = true;
        image_dirs.insert(dirname_of(dirname_of(l.back_file)));
        try {
            detach_loop(l.device);
        } catch (const std::exception& e) {
            problems.push_back(e.what());
        }
    }

    // 4. network namespaces (their links, bridge, qdiscs go with them)
    for (const auto& n : ns_names) {
        anything = true;
        try {
            delete_netns(n);
        } catch (const std::exception& e) {
            problems.push_back(e.what());
        }
    }

    // 5. cgroups, deepest first
    std::vector<std::string> cg = find_lab_cgroup_dirs();
    if (st)
        for (auto it = st->cgroup_dirs.rbegin(); it != st->cgroup_dirs.rend(); ++it)
            if (std::find(cg.begin(), cg.end(), *it) == cg.end()) cg.push_back(*it);
    std::stable_sort(cg.begin(), cg.end(), [](const std::string& a, const std::string& b) {
        return std::count(a.begin(), a.end(), '/') > std::count(b.begin(), b.end(), '/');
    });
    for (const auto& d : cg) {
        if (!is_dir(d)) continue;
        anything = true;
        bool ok = false;
        for (int attempt = 0; attempt < 50 && !ok; ++attempt) {
            kill_processes(cgroup_pids(d), 200);
            ok = rmdir(d.c_str()) == 0 || errno == ENOENT;
            if (!ok) std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        if (!ok) problems.push_back("cannot remove cgroup " + d + ": " + strerror(errno));
    }

    // 6. images
    for (const auto& d : image_dirs) {
        if (is_dir(d) && path_exists(d + "/" + kImageDirMarker)) anything = true;
        bool created = st && st->image_dir == d && st->image_dir_created;
        for (const auto& f : clean_image_dir(d, created)) problems.push_back("cannot remove image " + f);
    }

    // 7. /run/vpipe-lab (never crosses a mount that survived)
    if (path_exists(kRunDir)) {
        anything = true;
        if (auto kept = keep_logs(); !kept.empty() && !quiet) std::cerr << "vpipe-lab down: logs kept in " << kept << "\n";
        if (!mounts_under(kRunDir).empty()) {
            problems.push_back(std::string("not removing ") + kRunDir + ": something is still mounted below it");
        } else if (!remove_tree(kRunDir)) {
            problems.push_back(std::string("cannot remove ") + kRunDir);
        }
    }

    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!problems.empty()) {
        for (const auto& p : problems) std::cerr << "vpipe-lab down: " << p << "\n";
        std::cerr << "vpipe-lab down: incomplete; fix the above and run it again\n";
        return 1;
    }
    if (!quiet) {
        if (anything)
            std::printf("lab is down (took %.2f s)\n", secs);
        else
            std::printf("nothing to do: no lab found\n");
    }
    return 0;
}

int cmd_restart_engine(int signal) {
    std::optional<LabState> st;
    try {
        st = load_state();
    } catch (const std::exception& e) {
        std::cerr << "vpipe-lab restart-engine: " << e.what() << "\n";
        return 1;
    }
    if (!st || st->status != "up" || st->engine.binary.empty()) {
        std::cerr << "vpipe-lab restart-engine: no lab is up with an engine\n";
        return 1;
    }
    // The old engine goes first, by the signal asked for (SIGKILL: a crash, nothing cleaned up;
    // the new engine must cope with what it left: steering elements, a stale control socket).
    const pid_t old = st->engine.pid;
    if (pid_alive(old)) {
        kill(old, signal);
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (pid_alive(old) && std::chrono::steady_clock::now() < deadline)
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        if (pid_alive(old)) {
            kill(old, SIGKILL);
            while (pid_alive(old)) std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    }
    ::unlink(st->engine.control_socket.c_str());  // a killed engine leaves it; the wait below needs the new one
    SpawnSpec es;
    es.binary = st->engine.binary;
    es.args = {"--config", st->engine.config};
    es.netns = kDom0Netns;
    es.cgroup_dirs = st->engine.cgroup_dirs;
    es.log_path = st->engine.log;
    try {
        st->engine.pid = spawn_daemon(es);
    } catch (const std::exception& e) {
        st->engine.pid = 0;
        save_state(*st);
        std::cerr << "vpipe-lab restart-engine: " << e.what() << "\n";
        return 1;
    }
    save_state(*st);
    if (auto err = wait_for_socket(st->engine.control_socket, st->engine.pid, 10000); !err.empty()) {
        std::cerr << "vpipe-lab restart-engine: the engine did not come up: " << err << "\n"
                  << tail_file(st->engine.log, 15);
        return 1;
    }
    std::printf("engine restarted: pid %d (the old one, %d, got signal %d)\n", st->engine.pid, old, signal);
    return 0;
}

int cmd_restart_agent(const std::string& vm, int signal, uint32_t request_timeout_ms) {
    std::optional<LabState> st;
    try {
        st = load_state();
    } catch (const std::exception& e) {
        std::cerr << "vpipe-lab restart-agent: " << e.what() << "\n";
        return 1;
    }
    if (!st || st->status != "up") {
        std::cerr << "vpipe-lab restart-agent: no lab is up\n";
        return 1;
    }
    auto it = std::find_if(st->vms.begin(), st->vms.end(), [&](const auto& v) { return v.name == vm; });
    if (it == st->vms.end() || it->agent_config.empty() || it->removed) {
        std::cerr << "vpipe-lab restart-agent: no VM " << vm << " with an agent"
                  << (it != st->vms.end() && it->removed ? " (it was removed)" : "") << "\n";
        return 1;
    }
    auto& v = *it;
    const pid_t old = v.agent_pid;
    if (old > 0 && pid_alive(old)) {
        kill(old, signal);
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (pid_alive(old) && std::chrono::steady_clock::now() < deadline)
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        if (pid_alive(old)) {
            kill(old, SIGKILL);
            while (pid_alive(old)) std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    }
    ::unlink(v.agent_socket.c_str());  // a killed agent leaves it; the wait below needs the new one
    SpawnSpec as;
    as.binary = find_binary("vpipe-guestd");
    if (as.binary.empty()) {
        std::cerr << "vpipe-lab restart-agent: cannot find vpipe-guestd next to " << self_exe() << "\n";
        return 1;
    }
    as.args = {"--config", v.agent_config};
    if (request_timeout_ms) {
        as.args.push_back("--request-timeout-ms");
        as.args.push_back(std::to_string(request_timeout_ms));
    }
    as.netns = v.netns;
    as.cgroup_dirs = v.cgroup_dirs;
    as.log_path = v.agent_log;
    as.env = {{"VPIPE_VM", v.name}};
    try {
        v.agent_pid = spawn_daemon(as);
    } catch (const std::exception& e) {
        v.agent_pid = 0;
        save_state(*st);
        std::cerr << "vpipe-lab restart-agent: " << e.what() << "\n";
        return 1;
    }
    save_state(*st);
    if (auto err = wait_for_socket(v.agent_socket, v.agent_pid, 10000); !err.empty()) {
        std::cerr << "vpipe-lab restart-agent: the agent did not come up: " << err << "\n" << tail_file(v.agent_log, 15);
        return 1;
    }
    std::printf("agent of %s restarted: pid %d (the old one, %d, got signal %d)\n", v.name.c_str(), v.agent_pid, old,
                signal);
    return 0;
}

int cmd_info(bool json) {
    std::optional<LabState> st;
    try {
        st = load_state();
    } catch (const std::exception& e) {
        std::cerr << "vpipe-lab info: " << e.what() << "\n";
        return 1;
    }
    if (!st) {
        std::cerr << "vpipe-lab info: the lab is not up\n";
        return 1;
    }
    if (json) {
        auto j = to_json(*st);
        j["engine"]["running"] = pid_alive(st->engine.pid);
        for (size_t i = 0; i < st->vms.size(); ++i) j["vms"][i]["agent_running"] = pid_alive(st->vms[i].agent_pid);
        std::cout << j.dump(2) << "\n";
        return 0;
    }
    if (st->status != "up") std::cout << "WARNING: status '" << st->status << "' (an `up` is running or crashed)\n";
    print_summary(*st);
    std::cout << "  engine config " << st->engine.config << ", cgroups (" << st->cgroup_mode << ") e.g. "
              << st->engine.cgroup << "\n";
    return 0;
}

}  // namespace vpipe::lab
