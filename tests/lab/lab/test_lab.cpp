// Integration test of vpipe-lab: builds small labs (no daemons), checks them, tears them down, and
// checks that nothing is left behind — also after a crash in the middle of `up`.
// Needs root; skips otherwise. Never touches a lab that was already up when it started.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "support/lab_fixture.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
namespace lt = vpipe::labtest;
using lt::kLab, lt::Res, lt::lab_netns, lt::slurp;

const std::string kRun = lt::kLabRun;

// Every command here has stdout and stderr captured together (messages are looked for in either).
// Runs argv (no shell); `env` entries are added; `uid` >= 0 drops privileges.
Res run(const std::vector<std::string>& argv, const std::vector<std::string>& env = {}, int uid = -1) {
    return lt::run(argv, {.env = env, .uid = uid, .merge_stderr = true});
}

Res lab(std::vector<std::string> args, const std::vector<std::string>& env = {}) {
    return lt::lab(std::move(args), {.env = env, .merge_stderr = true});
}

std::vector<std::string> lab_mounts() {
    std::vector<std::string> out;
    std::istringstream in(slurp("/proc/self/mountinfo"));
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream ls(line);
        std::string f[5];
        for (auto& x : f) ls >> x;
        if (f[4] == kRun || f[4].rfind(kRun + "/", 0) == 0) out.push_back(f[4]);
    }
    return out;
}

std::vector<std::string> lab_cgroups() {
    std::vector<std::string> out;
    std::error_code ec;
    if (fs::exists("/sys/fs/cgroup/vpipe-lab", ec)) out.push_back("/sys/fs/cgroup/vpipe-lab");
    for (const auto& e : fs::directory_iterator("/sys/fs/cgroup", ec))
        if (fs::exists(e.path() / "vpipe-lab", ec)) out.push_back((e.path() / "vpipe-lab").string());
    return out;
}

std::vector<std::string> lab_loops(const std::string& image_dir) {
    std::vector<std::string> out;
    auto r = run({"losetup", "-J", "-l"});
    if (r.status != 0 || r.out.find('{') == std::string::npos) return out;
    auto j = json::parse(r.out, nullptr, false);
    if (j.is_discarded()) return out;
    for (const auto& d : j.value("loopdevices", json::array())) {
        std::string bf = d.contains("back-file") && d["back-file"].is_string() ? d["back-file"].get<std::string>() : "";
        if (bf.rfind(image_dir + "/", 0) == 0) out.push_back(d.value("name", "?") + " -> " + bf);
    }
    return out;
}

std::vector<std::string> lab_processes() {
    std::vector<std::string> out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator("/proc", ec)) {
        std::string n = e.path().filename().string();
        if (n.empty() || !isdigit(n[0])) continue;
        std::string cg = slurp("/proc/" + n + "/cgroup");
        if (cg.find(":/vpipe-lab/") != std::string::npos) {
            std::string st = slurp("/proc/" + n + "/stat");
            auto rp = st.rfind(')');
            if (rp != std::string::npos && rp + 2 < st.size() && st[rp + 2] == 'Z') continue;  // being reaped
            out.push_back(n);
        }
    }
    return out;
}

std::string join(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return s;
}

// Asserts that nothing of the lab remains.
void expect_clean(const std::string& image_dir) {
    EXPECT_TRUE(lab_mounts().empty()) << "mounts left: " << join(lab_mounts());
    EXPECT_TRUE(lab_loops(image_dir).empty()) << "loops left: " << join(lab_loops(image_dir));
    EXPECT_TRUE(lab_netns().empty()) << "netns left: " << join(lab_netns());
    EXPECT_TRUE(lab_cgroups().empty()) << "cgroups left: " << join(lab_cgroups());
    EXPECT_FALSE(fs::exists(kRun)) << kRun << " left";
    // processes may take a moment to be reaped by init
    for (int i = 0; i < 50 && !lab_processes().empty(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    EXPECT_TRUE(lab_processes().empty()) << "processes left in lab cgroups: " << join(lab_processes());
    std::error_code ec;
    for (const auto& e : fs::recursive_directory_iterator(image_dir, ec))
        EXPECT_NE(e.path().extension(), ".img") << "image left: " << e.path();
}

class Lab : public ::testing::Test {
protected:
    void SetUp() override {
        const std::string skip = lt::lab_skip_reason();
        if (!skip.empty()) GTEST_SKIP() << skip;
        // Another suite's lab goes away when its suite ends (ctest gives them one resource lock);
        // one that stays is a leftover, which is what these tests exist to catch: fail, don't skip.
        for (int i = 0; i < 600 && lt::lab_present(); ++i) std::this_thread::sleep_for(std::chrono::seconds(1));
        ASSERT_FALSE(lt::lab_present()) << "a lab has been up for 10 minutes: a leftover of an earlier run? "
                                           "(`vpipe-lab info` tells whose; `vpipe-lab down` removes it)";
        owns_lab_ = true;
        char tmpl[] = "/tmp/vpipe-lab-test-XXXXXX";
        ASSERT_NE(mkdtemp(tmpl), nullptr);
        tmp_ = tmpl;
    }
    void TearDown() override {
        if (!owns_lab_) return;
        auto r = lab({"down"});
        EXPECT_EQ(r.status, 0) << r.out;
        std::error_code ec;
        fs::remove_all(tmp_, ec);
    }

    json info() {
        auto r = lab({"info", "--json"});
        EXPECT_EQ(r.status, 0) << r.out;
        return json::parse(r.out, nullptr, false);
    }

    bool owns_lab_ = false;
    std::string tmp_;
};

const std::vector<std::string> kSmallUp{"up", "--vms", "2", "--disks", "2", "--disk-mib", "64", "--no-daemons"};

TEST_F(Lab, UpInfoExecDown) {
    auto up = lab(kSmallUp);
    ASSERT_EQ(up.status, 0) << up.out;

    json j = info();
    ASSERT_FALSE(j.is_discarded());
    EXPECT_EQ(j["engine"]["pid"], 0);
    EXPECT_EQ(j["engine"]["config"], "/run/vpipe-lab/vpiped.toml");
    EXPECT_EQ(j["engine"]["control_socket"], "/run/vpipe-lab/vpiped.ctl");
    EXPECT_EQ(j["engine"]["log"], "/run/vpipe-lab/vpiped.log");
    EXPECT_EQ(j["client"]["ip"], "10.199.0.1");
    EXPECT_EQ(j["client"]["netns"], "vpl-client");
    EXPECT_EQ(j["dom0"]["netns"], "vpl-dom0");
    EXPECT_EQ(j["dom0"]["bridge"], "xenbr0");
    EXPECT_EQ(j["dom0"]["ip"], "10.199.0.254");
    ASSERT_EQ(j["vms"].size(), 2u);
    for (int i = 0; i < 2; ++i) {
        const auto& vm = j["vms"][i];
        std::string name = "vm" + std::to_string(i + 1);
        EXPECT_EQ(vm["name"], name);
        EXPECT_EQ(vm["ip"], "10.199.0.1" + std::to_string(i + 1));
        EXPECT_EQ(vm["mac"], "02:00:00:00:00:0" + std::to_string(i + 1));
        EXPECT_EQ(vm["netns"], "vpl-" + name);
        EXPECT_EQ(vm["vif"], "vif" + std::to_string(i + 1) + ".0");
        EXPECT_EQ(vm["weight"], 1);
        EXPECT_EQ(vm["agent_pid"], 0);
        EXPECT_EQ(vm["agent_socket"], "/run/vpipe-lab/" + name + "/agent.sock");
        EXPECT_EQ(vm["agent_config"], "/run/vpipe-lab/" + name + "/agent.toml");
        EXPECT_EQ(vm["agent_log"], "/run/vpipe-lab/" + name + "/agent.log");
        EXPECT_TRUE(fs::exists(vm["agent_config"].get<std::string>()));
        EXPECT_TRUE(fs::is_directory(vm["cgroup"].get<std::string>())) << vm["cgroup"];
        EXPECT_TRUE(fs::exists("/run/netns/vpl-" + name));
        ASSERT_EQ(vm["disks"].size(), 2u);
        for (int k = 0; k < 2; ++k) {
            const auto& d = vm["disks"][k];
            EXPECT_EQ(d["vdev"], 51712 + 16 * k);
            EXPECT_EQ(d["image"], "/var/lib/vpipe-lab/" + name + "/disk" + std::to_string(k) + ".img");
            EXPECT_EQ(d["mount"], "/run/vpipe-lab/" + name + "/disk" + std::to_string(k));
            EXPECT_EQ(d["device"].get<std::string>().rfind("/dev/loop", 0), 0u) << d["device"];
            EXPECT_TRUE(fs::exists(d["image"].get<std::string>()));
            auto mounts = lab_mounts();
            EXPECT_NE(std::find(mounts.begin(), mounts.end(), d["mount"].get<std::string>()), mounts.end());
            struct stat st {};
            ASSERT_EQ(stat(d["mount"].get<std::string>().c_str(), &st), 0);
            EXPECT_EQ(st.st_mode & 07777, 01777u);
        }
    }
    for (const char* ns : {"vpl-dom0", "vpl-client"}) EXPECT_TRUE(fs::exists(std::string("/run/netns/") + ns));
    std::string cfg = slurp("/run/vpipe-lab/vpiped.toml");
    EXPECT_NE(cfg.find("control_socket = \"/run/vpipe-lab/vpiped.ctl\""), std::string::npos) << cfg;
    EXPECT_NE(cfg.find("[[vm.disk]]"), std::string::npos) << cfg;
    EXPECT_NE(cfg.find("vdev = 51728"), std::string::npos) << cfg;
    // the peer policy: the lab's VMs are one tenant, each with its address
    EXPECT_NE(cfg.find("tenant = \"lab\""), std::string::npos) << cfg;
    EXPECT_NE(cfg.find("addresses = [\"10.199.0.12\"]"), std::string::npos) << cfg;
    std::string acfg = slurp("/run/vpipe-lab/vm2/agent.toml");
    EXPECT_NE(acfg.find("listen = \"/run/vpipe-lab/vm2/agent.sock\""), std::string::npos) << acfg;
    EXPECT_NE(acfg.find(j["vms"][1]["disks"][0]["device"].get<std::string>()), std::string::npos) << acfg;

    // exec: files land on the VM's mount, exit status propagates, environment and namespaces are the VM's
    std::string mnt = j["vms"][0]["disks"][0]["mount"];
    auto w = lab({"exec", "vm1", "--", "sh", "-c", "echo hi > " + mnt + "/x"});
    EXPECT_EQ(w.status, 0) << w.out;
    EXPECT_EQ(slurp(mnt + "/x"), "hi\n");
    EXPECT_NE(lab({"exec", "vm1", "--", "false"}).status, 0);
    EXPECT_EQ(lab({"exec", "vm1", "--", "sh", "-c", "exit 7"}).status, 7);
    EXPECT_EQ(lab({"exec", "vm1", "--", "no-such-command-vpipe"}).status, 127);
    EXPECT_EQ(lab({"exec", "vm9", "--", "true"}).status, 125);
    auto env = lab({"exec", "vm2", "--", "sh", "-c", "echo $VPIPE_AGENT_SOCKET $VPIPE_VM"});
    EXPECT_EQ(env.out, "/run/vpipe-lab/vm2/agent.sock vm2\n");
    auto cg = lab({"exec", "vm2", "--", "cat", "/proc/self/cgroup"});
    EXPECT_NE(cg.out.find("/vpipe-lab/vm2"), std::string::npos) << cg.out;
    auto addr = lab({"exec", "vm1", "--", "ip", "-br", "addr", "show", "eth0"});
    EXPECT_NE(addr.out.find("10.199.0.11/24"), std::string::npos) << addr.out;
    auto link = lab({"exec", "vm1", "--", "ip", "link", "show", "eth0"});
    EXPECT_NE(link.out.find("02:00:00:00:00:01"), std::string::npos) << link.out;
    auto br = lab({"dom0", "--", "ip", "-br", "link", "show", "master", "xenbr0"});
    for (const char* port : {"peth0", "vif1.0", "vif2.0"}) EXPECT_NE(br.out.find(port), std::string::npos) << br.out;
    auto cl = lab({"client", "--", "ip", "-br", "addr", "show", "eth0"});
    EXPECT_NE(cl.out.find("10.199.0.1/24"), std::string::npos) << cl.out;

    // a second up fails clearly and leaves the running lab alone
    auto again = lab(kSmallUp);
    EXPECT_NE(again.status, 0);
    EXPECT_NE(again.out.find("already up"), std::string::npos) << again.out;
    EXPECT_TRUE(fs::exists("/run/vpipe-lab/state.json"));

    auto down = lab({"down"});
    EXPECT_EQ(down.status, 0) << down.out;
    expect_clean("/var/lib/vpipe-lab");
    EXPECT_FALSE(fs::exists("/var/lib/vpipe-lab"));
    auto down2 = lab({"down"});
    EXPECT_EQ(down2.status, 0) << down2.out;
    EXPECT_NE(lab({"info"}).status, 0);
}

TEST_F(Lab, NetworkAcrossTheBridge) {
    if (!lt::have_tool("ping")) GTEST_SKIP() << "ping (iputils-ping) is not installed";
    auto up = lab({"up", "--vms", "2", "--disks", "1", "--disk-mib", "64", "--no-daemons", "--image-dir", tmp_});
    ASSERT_EQ(up.status, 0) << up.out;
    auto a = lab({"exec", "vm1", "--", "ping", "-c1", "-W2", "10.199.0.1"});
    EXPECT_EQ(a.status, 0) << a.out;
    auto b = lab({"client", "--", "ping", "-c1", "-W2", "10.199.0.12"});
    EXPECT_EQ(b.status, 0) << b.out;
    auto c = lab({"exec", "vm2", "--", "ping", "-c1", "-W2", "10.199.0.11"});
    EXPECT_EQ(c.status, 0) << c.out;
    auto d = lab({"dom0", "--", "ping", "-c1", "-W2", "10.199.0.12"});
    EXPECT_EQ(d.status, 0) << d.out;
    EXPECT_EQ(lab({"down"}).status, 0);
    expect_clean(tmp_);
}

TEST_F(Lab, CpuControls) {
    // one neighbour busy-loops on the guest CPU for the (short) life of this lab
    auto up = lab({"up", "--vms", "1", "--disks", "0", "--neighbours", "1", "--vcpu-quota", "50", "--link-mbit",
                   "100", "--weights", "3", "--no-daemons", "--image-dir", tmp_});
    ASSERT_EQ(up.status, 0) << up.out;
    json j = info();
    EXPECT_EQ(j["vms"][0]["weight"], 3);
    ASSERT_EQ(j["neighbours"].size(), 1u);
    int npid = j["neighbours"][0]["pid"];
    EXPECT_GT(npid, 0);
    EXPECT_EQ(kill(npid, 0), 0);
    EXPECT_NE(slurp("/proc/" + std::to_string(npid) + "/cgroup").find("/vpipe-lab/neighbour1"), std::string::npos);
    std::string cgdir = j["vms"][0]["cgroup"];
    if (fs::exists(cgdir + "/cpu.max")) {
        EXPECT_EQ(slurp(cgdir + "/cpu.max"), "50000 100000\n");
    } else {
        EXPECT_EQ(slurp(cgdir + "/cpu.cfs_quota_us"), "50000\n");
    }
    EXPECT_EQ(j["neighbour_model"], "shares");
    EXPECT_EQ(j["slice_ms"], 0);
    EXPECT_EQ(j["vms"][0]["cpu_max"], "50000 100000");
    EXPECT_TRUE(j["vms"][0]["rps"].empty()) << j["vms"][0]["rps"];
    auto tc = lab({"dom0", "--", "tc", "qdisc", "show", "dev", "peth0"});
    EXPECT_NE(tc.out.find("tbf"), std::string::npos) << tc.out;
    EXPECT_NE(tc.out.find("100Mbit"), std::string::npos) << tc.out;
    EXPECT_EQ(lab({"down"}).status, 0);
    expect_clean(tmp_);
    EXPECT_TRUE(kill(npid, 0) != 0 || slurp("/proc/" + std::to_string(npid) + "/cgroup").find("vpipe-lab") ==
                                           std::string::npos);
}

// A hex CPU bitmap as rps_cpus prints it, without the zero padding and commas: "00000001" -> "1".
std::string mask_bits(const std::string& m) {
    std::string hex;
    for (char c : m)
        if (isxdigit(static_cast<unsigned char>(c))) hex += static_cast<char>(tolower(c));
    auto nz = hex.find_first_not_of('0');
    return nz == std::string::npos ? "0" : hex.substr(nz);
}

// rps_cpus of every rx queue of DEV in NETNS, read through `ip netns exec` (its own sysfs mount
// of that namespace), as bits; one entry per queue.
std::vector<std::string> rps_masks(const std::string& netns, const std::string& dev) {
    auto r = run({"ip", "netns", "exec", netns, "sh", "-c", "cat /sys/class/net/" + dev + "/queues/rx-*/rps_cpus"});
    EXPECT_EQ(r.status, 0) << r.out;
    std::vector<std::string> out;
    std::istringstream in(r.out);
    std::string line;
    while (std::getline(in, line))
        if (!line.empty()) out.push_back(mask_bits(line));
    return out;
}

// The hypervisor neighbour model: the VM's cgroup gets one 30 ms credit slice per round of
// neighbours + 1 vCPUs, its eth0's receive processing moves onto the guest CPU (its vif's onto
// dom0's), the neighbours stay uncapped; `down` leaves nothing.
TEST_F(Lab, HypervisorNeighbourModel) {
    auto online = slurp("/sys/devices/system/cpu/online");
    if (online.rfind("0-", 0) != 0) GTEST_SKIP() << "needs CPUs 0 and 1 online (online: " << online << ")";
    auto up = lab({"up", "--vms", "1", "--disks", "0", "--neighbours", "2", "--neighbour-model", "hypervisor",
                   "--guest-cpus", "0", "--dom0-cpus", "1", "--no-daemons", "--image-dir", tmp_});
    ASSERT_EQ(up.status, 0) << up.out;
    json j = info();
    EXPECT_EQ(j["neighbour_model"], "hypervisor");
    EXPECT_EQ(j["slice_ms"], 30);
    ASSERT_EQ(j["neighbours"].size(), 2u);
    const std::string cgdir = j["vms"][0]["cgroup"];
    EXPECT_EQ(j["vms"][0]["cpu_max"], "30000 90000");
    if (fs::exists(cgdir + "/cpu.max")) {
        EXPECT_EQ(slurp(cgdir + "/cpu.max"), "30000 90000\n");
    } else {
        EXPECT_EQ(slurp(cgdir + "/cpu.cfs_quota_us"), "30000\n");
        EXPECT_EQ(slurp(cgdir + "/cpu.cfs_period_us"), "90000\n");
    }
    // the neighbours are busy vCPUs, not capped
    for (const auto& n : j["neighbours"]) {
        const std::string nd = n["cgroup"];
        if (fs::exists(nd + "/cpu.max"))
            EXPECT_EQ(slurp(nd + "/cpu.max").substr(0, 4), "max ") << nd;
        else
            EXPECT_EQ(slurp(nd + "/cpu.cfs_quota_us"), "-1\n") << nd;
    }
    auto vm_rps = rps_masks("vpl-vm1", "eth0");
    ASSERT_FALSE(vm_rps.empty());
    for (const auto& m : vm_rps) EXPECT_EQ(m, "1") << "vm1 eth0 rps_cpus (guest CPU 0)";
    auto vif_rps = rps_masks("vpl-dom0", "vif1.0");
    ASSERT_FALSE(vif_rps.empty());
    for (const auto& m : vif_rps) EXPECT_EQ(m, "2") << "vif1.0 rps_cpus (dom0 CPU 1)";
    // the physical port is left alone: the kernel's default for new devices
    const std::string dflt =
        fs::exists("/proc/sys/net/core/rps_default_mask") ? mask_bits(slurp("/proc/sys/net/core/rps_default_mask")) : "0";
    for (const auto& m : rps_masks("vpl-dom0", "peth0")) EXPECT_EQ(m, dflt);
    const auto& rps = j["vms"][0]["rps"];
    ASSERT_EQ(rps.size(), vm_rps.size() + vif_rps.size()) << rps;
    EXPECT_EQ(rps[0]["netns"], "vpl-vm1");
    EXPECT_EQ(rps[0]["dev"], "eth0");
    EXPECT_EQ(mask_bits(rps[0]["mask"]), "1");
    EXPECT_EQ(mask_bits(rps[0]["before"]), dflt);
    EXPECT_EQ(rps.back()["netns"], "vpl-dom0");
    EXPECT_EQ(rps.back()["dev"], "vif1.0");
    EXPECT_EQ(mask_bits(rps.back()["mask"]), "2");
    auto text = lab({"info"});
    EXPECT_EQ(text.status, 0) << text.out;
    EXPECT_NE(text.out.find("neighbour model hypervisor: credit slice 30 ms, one per round of 3 vCPU(s)"),
              std::string::npos)
        << text.out;
    EXPECT_NE(text.out.find("vm1 cpu.max 30000 90000"), std::string::npos) << text.out;
    EXPECT_EQ(lab({"down"}).status, 0);
    expect_clean(tmp_);
    EXPECT_FALSE(fs::exists(cgdir)) << cgdir;
    EXPECT_FALSE(fs::exists("/run/netns/vpl-vm1"));

    // no neighbours: nothing to share the CPU with, no cap; the receive steering stays
    up = lab({"up", "--vms", "1", "--disks", "0", "--neighbour-model", "hypervisor", "--slice-ms", "10",
              "--guest-cpus", "0", "--dom0-cpus", "1", "--no-daemons", "--image-dir", tmp_});
    ASSERT_EQ(up.status, 0) << up.out;
    j = info();
    EXPECT_EQ(j["slice_ms"], 10);
    EXPECT_EQ(j["vms"][0]["cpu_max"].get<std::string>().substr(0, 4), "max ") << j["vms"][0]["cpu_max"];
    for (const auto& m : rps_masks("vpl-vm1", "eth0")) EXPECT_EQ(m, "1");
    EXPECT_EQ(lab({"down"}).status, 0);
    expect_clean(tmp_);
}

TEST_F(Lab, NeighbourModelBadArguments) {
    struct Case {
        std::vector<std::string> args;
        std::string message;
    };
    const std::vector<Case> cases{
        {{"--neighbour-model", "hypervisor", "--slice-ms", "0"}, "--slice-ms must be 1..1000 (got 0)"},
        {{"--neighbour-model", "hypervisor", "--slice-ms", "1001"}, "--slice-ms must be 1..1000 (got 1001)"},
        {{"--neighbour-model", "hypervisor", "--slice-ms", "-5"}, "--slice-ms must be 1..1000 (got -5)"},
        {{"--neighbour-model", "xen"}, "unknown --neighbour-model 'xen' (shares or hypervisor)"},
        {{"--slice-ms", "30"}, "--slice-ms applies to --neighbour-model hypervisor only"},
        {{"--neighbour-model", "hypervisor", "--neighbours", "40"}, "= 1230 ms is the VM's cpu.max period"},
        {{"--neighbour-model", "hypervisor", "--neighbours", "1", "--vcpu-quota", "50"},
         "--vcpu-quota and --neighbour-model hypervisor both set the VM's cpu.max"},
    };
    for (const auto& c : cases) {
        std::vector<std::string> argv{"up", "--vms", "1", "--disks", "0", "--no-daemons", "--image-dir", tmp_};
        argv.insert(argv.end(), c.args.begin(), c.args.end());
        auto r = lab(argv);
        EXPECT_EQ(r.status, 2) << r.out;
        EXPECT_EQ(r.out.rfind("vpipe-lab up: ", 0), 0u) << r.out;
        EXPECT_NE(r.out.find(c.message), std::string::npos) << r.out;
        EXPECT_FALSE(fs::exists(kRun)) << "a refused `up` created " << kRun;
    }
    expect_clean(tmp_);
}

TEST_F(Lab, DownAfterStateFileLost) {
    auto up = lab({"up", "--vms", "2", "--disks", "2", "--disk-mib", "64", "--neighbours", "1", "--no-daemons",
                   "--image-dir", tmp_});
    ASSERT_EQ(up.status, 0) << up.out;
    ASSERT_TRUE(fs::remove("/run/vpipe-lab/state.json"));
    auto down = lab({"down"});
    EXPECT_EQ(down.status, 0) << down.out;
    expect_clean(tmp_);
}

class LabCrash : public Lab, public ::testing::WithParamInterface<std::string> {};

// VPIPE_LAB_KEEP_LOGS: `down` first copies the engine's and each agent's log out of
// /run/vpipe-lab (which it then removes as always); without it nothing is copied.
TEST_F(Lab, DownKeepsLogsWhenAsked) {
    auto up = lab({"up", "--vms", "2", "--disks", "1", "--disk-mib", "64", "--image-dir", tmp_});
    ASSERT_EQ(up.status, 0) << up.out;
    const std::string keep = tmp_ + "/kept";
    auto down = lab({"down"}, {"VPIPE_LAB_KEEP_LOGS=" + keep});
    EXPECT_EQ(down.status, 0) << down.out;
    expect_clean(tmp_);
    std::vector<fs::path> runs;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(keep, ec)) runs.push_back(e.path());
    ASSERT_EQ(runs.size(), 1u) << "one directory per down under " << keep;
    EXPECT_NE(down.out.find("logs kept in " + runs[0].string()), std::string::npos) << down.out;
    for (const char* log : {"vpiped.log", "vm1/agent.log", "vm2/agent.log"}) {
        const fs::path f = runs[0] / log;
        ASSERT_TRUE(fs::is_regular_file(f)) << f << " not kept";
        EXPECT_GT(fs::file_size(f), 0u) << f;
    }
    std::ifstream in(runs[0] / "vpiped.log");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_NE(text.find("engine ready"), std::string::npos) << text;

    // not asked: nothing copied, and the next `down` (nothing left) says nothing of logs
    auto again = lab({"up", "--vms", "1", "--disks", "1", "--disk-mib", "64", "--image-dir", tmp_});
    ASSERT_EQ(again.status, 0) << again.out;
    auto plain = lab({"down"});
    EXPECT_EQ(plain.status, 0) << plain.out;
    EXPECT_EQ(plain.out.find("logs kept"), std::string::npos) << plain.out;
    runs.clear();
    for (const auto& e : fs::directory_iterator(keep, ec)) runs.push_back(e.path());
    EXPECT_EQ(runs.size(), 1u);
}

TEST_P(LabCrash, DownCleansUpAfterKill9MidUp) {
    auto up = lab({"up", "--vms", "2", "--disks", "2", "--disk-mib", "64", "--neighbours", "1", "--no-daemons",
                   "--image-dir", tmp_},
                  {"VPIPE_LAB_TEST_CRASH_AFTER=" + GetParam()});
    ASSERT_EQ(up.status, 128 + SIGKILL) << up.out;
    auto down = lab({"down"});
    EXPECT_EQ(down.status, 0) << down.out;
    expect_clean(tmp_);
}

INSTANTIATE_TEST_SUITE_P(Stages, LabCrash, ::testing::Values("state", "cgroups", "netns", "network", "disk", "disks"));

class LabExternalKill : public Lab, public ::testing::WithParamInterface<std::string> {};

TEST_P(LabExternalKill, DownCleansUpAfterExternalKill9) {
    // kill -9 from outside as soon as state.json mentions the parameter, i.e. while `up` (or one of
    // its children: ip, mkfs, losetup, mount) is busy with the next step
    pid_t pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        dup2(devnull, 1);
        dup2(devnull, 2);
        execl(kLab.c_str(), kLab.c_str(), "up", "--vms", "3", "--disks", "2", "--disk-mib", "64", "--no-daemons",
              "--image-dir", tmp_.c_str(), static_cast<char*>(nullptr));
        _exit(127);
    }
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    bool reached = false;
    while (std::chrono::steady_clock::now() < deadline &&
           !(reached = slurp("/run/vpipe-lab/state.json").find(GetParam()) != std::string::npos))
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    kill(pid, SIGKILL);
    int ws = 0;
    ASSERT_EQ(waitpid(pid, &ws, 0), pid);
    // the kill must have landed mid-way: the phase was reached and `up` had not finished
    EXPECT_TRUE(reached) << "`up` never reached the phase " << GetParam();
    EXPECT_TRUE(WIFSIGNALED(ws) && WTERMSIG(ws) == SIGKILL)
        << "`up` was not killed mid-way (it " << (WIFEXITED(ws) ? "exited with " + std::to_string(WEXITSTATUS(ws))
                                                                : std::string("ended otherwise")) << ")";
    auto down = lab({"down"});
    EXPECT_EQ(down.status, 0) << down.out;
    expect_clean(tmp_);
}

INSTANTIATE_TEST_SUITE_P(Phases, LabExternalKill,
                         ::testing::Values("vpl-vm3", "disk0.img", "/dev/loop", "\"mounted\": true", "disk1.img"));

TEST_F(Lab, FailedUpRollsBack) {
    // the image dir can't be created (its parent is a file): fails after namespaces and cgroups exist
    std::string file = tmp_ + "/not-a-dir";
    std::ofstream(file) << "x";
    auto up = lab({"up", "--vms", "2", "--disk-mib", "64", "--no-daemons", "--image-dir", file + "/images"});
    EXPECT_NE(up.status, 0);
    EXPECT_NE(up.out.find("rolled back"), std::string::npos) << up.out;
    expect_clean(tmp_);
    EXPECT_TRUE(fs::exists(file));

    auto bad = lab({"up", "--guest-cpus", "4096", "--no-daemons"});
    EXPECT_NE(bad.status, 0);
    EXPECT_NE(bad.out.find("not online"), std::string::npos) << bad.out;
    expect_clean("/var/lib/vpipe-lab");

    auto weights = lab({"up", "--vms", "3", "--weights", "1,2", "--no-daemons"});
    EXPECT_NE(weights.status, 0);
    expect_clean("/var/lib/vpipe-lab");

    auto nonroot = run({kLab, "up", "--no-daemons"}, {}, 65534);
    EXPECT_NE(nonroot.status, 0);
    EXPECT_NE(nonroot.out.find("root"), std::string::npos) << nonroot.out;
    expect_clean("/var/lib/vpipe-lab");
}

TEST(LabHelp, EverySubcommandHasAManStyleHelp) {
    if (access(kLab.c_str(), X_OK) != 0) GTEST_SKIP() << kLab << " not built";
    for (std::string sub : {"", "up", "down", "info", "exec", "client", "dom0", "demo"}) {
        std::vector<std::string> argv{kLab};
        if (!sub.empty()) argv.push_back(sub);
        argv.push_back("--help");
        auto r = run(argv);
        EXPECT_EQ(r.status, 0) << sub;
        for (const char* section : {"NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "EXAMPLES"})
            EXPECT_NE(r.out.find(section), std::string::npos) << "vpipe-lab " << sub << " --help lacks " << section;
    }
    EXPECT_EQ(run({kLab, "up", "--vms", "x"}).status, 2);
    EXPECT_EQ(run({kLab}).status, 2);
}

}  // namespace
