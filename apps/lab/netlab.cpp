#include "netlab.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <sstream>

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

std::string cpu_mask(const std::vector<int>& cpus) {
    std::vector<uint32_t> words;
    for (int c : cpus) {
        if (c < 0) continue;
        size_t w = static_cast<size_t>(c) / 32;
        if (words.size() <= w) words.resize(w + 1, 0);
        words[w] |= 1u << (c % 32);
    }
    if (words.empty()) return "0";
    std::string out;
    char buf[16];
    for (size_t i = words.size(); i-- > 0;) {
        snprintf(buf, sizeof buf, i + 1 == words.size() ? "%x" : ",%08x", words[i]);
        out += buf;
    }
    return out;
}

bool same_cpu_mask(const std::string& a, const std::string& b) {
    auto norm = [](const std::string& m) {
        std::string hex;
        for (char ch : trim(m))
            if (ch != ',') hex += static_cast<char>(tolower(static_cast<unsigned char>(ch)));
        size_t nz = hex.find_first_not_of('0');
        return nz == std::string::npos ? std::string("0") : hex.substr(nz);
    };
    return norm(a) == norm(b);
}

std::vector<RpsSetting> set_rps(const std::string& netns, const std::string& dev, const std::string& mask) {
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) != 0) throw LabError(std::string("pipe: ") + strerror(errno));
    pid_t pid = fork();
    if (pid < 0) {
        close(pfd[0]);
        close(pfd[1]);
        throw LabError(std::string("fork: ") + strerror(errno));
    }
    if (pid == 0) {
        // child: one line per queue "rx-N before after", or "!error"
        close(pfd[0]);
        std::string out;
        try {
            if (unshare(CLONE_NEWNS) != 0) throw LabError(std::string("unshare(mount): ") + strerror(errno));
            if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
                throw LabError(std::string("make / private: ") + strerror(errno));
            enter_netns(netns);
            umount2("/sys", MNT_DETACH);
            if (mount("sysfs", "/sys", "sysfs", 0, nullptr) != 0)
                throw LabError(std::string("mount sysfs in ") + netns + ": " + strerror(errno));
            std::string qdir = "/sys/class/net/" + dev + "/queues";
            std::vector<std::string> queues;
            std::error_code ec;
            for (const auto& e : std::filesystem::directory_iterator(qdir, ec)) {
                std::string q = e.path().filename().string();
                if (q.rfind("rx-", 0) == 0) queues.push_back(q);
            }
            if (ec) throw LabError("cannot list " + qdir + " in " + netns + ": " + ec.message());
            std::sort(queues.begin(), queues.end());
            for (const auto& q : queues) {
                std::string f = qdir + "/" + q + "/rps_cpus";
                auto before = read_file(f);
                if (!before) throw LabError("no " + f + " in " + netns + " (kernel without CONFIG_RPS?)");
                write_sysfs(f, mask);
                out += q + " " + trim(*before) + " " + trim(read_file(f).value_or("?")) + "\n";
            }
            if (queues.empty()) throw LabError("no rx queues under " + qdir + " in " + netns);
        } catch (const std::exception& e) {
            out = std::string("!") + e.what() + "\n";
        }
        ssize_t ignored = write(pfd[1], out.data(), out.size());
        (void)ignored;
        _exit(0);
    }
    close(pfd[1]);
    std::string text;
    char buf[512];
    ssize_t n;
    while ((n = read(pfd[0], buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
        if (n > 0) text.append(buf, static_cast<size_t>(n));
    close(pfd[0]);
    int ws = 0;
    while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
    }
    if (!text.empty() && text[0] == '!') throw LabError("RPS on " + dev + ": " + trim(text.substr(1)));
    if (decode_wait_status(ws) != 0 || text.empty())
        throw LabError("RPS on " + dev + " in " + netns + ": helper process failed (status " +
                       std::to_string(decode_wait_status(ws)) + ")");
    std::vector<RpsSetting> out;
    std::istringstream in(text);
    std::string q, before, after;
    while (in >> q >> before >> after) {
        if (!same_cpu_mask(after, mask))
            throw LabError(netns + " " + dev + "/" + q + "/rps_cpus reads " + after + " after writing " + mask);
        out.push_back({netns, dev, q, before, after});
    }
    return out;
}

void enter_netns(const std::string& name) {
    std::string path = "/run/netns/" + name;
    UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) throw LabError("cannot open " + path + ": " + strerror(errno) + " (is the lab up?)");
    if (setns(fd.get(), CLONE_NEWNET) != 0) throw LabError("setns " + path + ": " + strerror(errno));
}

}  // namespace vpipe::lab
