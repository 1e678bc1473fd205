#include "netlab.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include <spdlog/spdlog.h>

#include "state.h"
#include "util.h"
#include "util/unique_fd.h"

namespace vpipe::lab {

namespace {
const std::string kDom0 = kDom0Netns;
const std::string kClient = kClientNetns;
const std::string kBr = kBridge;
const char* const kBridgeMac = "02:00:00:00:00:fe";  // VMs are 02:00:00:00:00:01.. (at most 200)

void ip(const std::string& ns, std::vector<std::string> args) {
    std::vector<std::string> argv{"ip", "-n", ns};
    argv.insert(argv.end(), args.begin(), args.end());
    run_checked(argv);
}
}  // namespace

void create_netns(const std::string& name) {
    run_checked({"ip", "netns", "add", name});
    ip(name, {"link", "set", "lo", "up"});
}

void delete_netns(const std::string& name) {
    if (!path_exists("/run/netns/" + name)) return;
    auto r = run({"ip", "netns", "del", name});
    if (r.status != 0 && path_exists("/run/netns/" + name)) {
        // stale bind mount without ip's bookkeeping: unmount + unlink ourselves
        run({"umount", "-l", "/run/netns/" + name});
        unlink(("/run/netns/" + name).c_str());
    }
    if (path_exists("/run/netns/" + name)) throw LabError("cannot delete netns " + name + ": " + trim(r.output));
}

std::vector<std::string> list_lab_netns() {
    std::vector<std::string> out;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator("/run/netns", ec)) {
        std::string n = e.path().filename().string();
        if (n.rfind(kNetnsPrefix, 0) == 0) out.push_back(n);
    }
    std::sort(out.begin(), out.end());
    return out;
}

std::pair<dev_t, ino_t> netns_id(const std::string& name) {
    struct stat st;
    if (stat(("/run/netns/" + name).c_str(), &st) != 0) return {0, 0};
    return {st.st_dev, st.st_ino};
}

void setup_dom0_bridge() {
    // A fixed address: a bridge without one takes the lowest of its ports' and changes it when
    // that port leaves (remove-vm deletes a vif), which strands every steered flow of the other
    // VMs (the engine's steering elements carry the bridge's address).
    ip(kDom0, {"link", "add", kBr, "address", kBridgeMac, "type", "bridge", "stp_state", "0", "forward_delay", "0"});
    ip(kDom0, {"addr", "add", std::string(kSubnetPrefix) + "254/24", "dev", kBr});
    ip(kDom0, {"link", "set", kBr, "up"});
}

void setup_client_link() {
    ip(kDom0, {"link", "add", "peth0", "type", "veth", "peer", "name", "eth0", "netns", kClient});
    ip(kDom0, {"link", "set", "peth0", "master", kBr, "up"});
    ip(kClient, {"addr", "add", std::string(kSubnetPrefix) + "1/24", "dev", "eth0"});
    ip(kClient, {"link", "set", "eth0", "up"});
}

void setup_vm_link(const VmState& vm) {
    ip(kDom0, {"link", "add", vm.vif, "type", "veth", "peer", "name", "eth0", "netns", vm.netns});
    ip(kDom0, {"link", "set", vm.vif, "master", kBr, "up"});
    ip(vm.netns, {"link", "set", "eth0", "address", vm.mac});
    ip(vm.netns, {"addr", "add", vm.ip + "/24", "dev", "eth0"});
    ip(vm.netns, {"link", "set", "eth0", "up"});
}

void set_link_limit(int mbit) {
    if (mbit <= 0) return;
    // burst: at least 64 KiB (GSO super-packets), else ~10 ms worth of bytes
    long burst = std::max<long>(65536, static_cast<long>(mbit) * 1000000L / 8 / 100);
    for (const auto& [ns, dev] : {std::pair{kDom0, std::string("peth0")}, std::pair{kClient, std::string("eth0")}}) {
        run_checked({"tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate",
                     std::to_string(mbit) + "mbit", "burst", std::to_string(burst), "latency", "50ms"});
    }
}

void enter_netns(const std::string& name) {
    std::string path = "/run/netns/" + name;
    UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) throw LabError("cannot open " + path + ": " + strerror(errno) + " (is the lab up?)");
    if (setns(fd.get(), CLONE_NEWNET) != 0) throw LabError("setns " + path + ": " + strerror(errno));
}

}  // namespace vpipe::lab
