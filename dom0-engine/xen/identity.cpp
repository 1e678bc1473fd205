#include "identity.h"

#include <vpipe/abi/ring.h>

#include <arpa/inet.h>

#include <algorithm>
#include <cctype>
#include <cerrno>

namespace vpipe::xen {

namespace {

constexpr uint64_t kDomidFirstReserved = 0x7FF0;   // DOMID_FIRST_RESERVED
constexpr uint64_t kMaxEventChannel = 1u << 17;    // FIFO ABI limit
constexpr size_t kMaxName = 64;

bool safe_token(const std::string& s, size_t max) {
    if (s.empty() || s.size() > max) return false;
    return std::all_of(s.begin(), s.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '-' || c == '_' || c == '.';
    });
}

bool valid_mac(const std::string& s) {
    if (s.size() != 17) return false;
    for (size_t i = 0; i < 17; ++i) {
        const char c = s[i];
        if (i % 3 == 2) {
            if (c != ':') return false;
        } else if (!std::isxdigit(static_cast<unsigned char>(c))) {
            return false;
        }
    }
    return true;
}

// The first IPv4 address of a vif's "ip" (libxl writes what the config said: one address or
// several separated by spaces, maybe with a prefix length).
std::string first_ipv4(const std::string& ip) {
    size_t pos = 0;
    while (pos < ip.size()) {
        const size_t end = std::min(ip.find(' ', pos), ip.size());
        std::string tok = ip.substr(pos, end - pos);
        pos = end + 1;
        if (auto slash = tok.find('/'); slash != std::string::npos) tok.resize(slash);
        in_addr a{};
        if (!tok.empty() && inet_pton(AF_INET, tok.c_str(), &a) == 1) return tok;
    }
    return {};
}

// Children that are decimal numbers in canonical form, sorted numerically. "07" is not device 7:
// the caller reads <dir>/<number> back, so a non-canonical name would read another node, and
// "7" next to "07" would give the VM the same disk twice.
std::vector<uint64_t> numeric_children(StoreReader& store, const std::string& dir, uint64_t max) {
    std::vector<uint64_t> out;
    if (auto kids = store.list(dir))
        for (const auto& k : *kids)
            if (auto v = parse_decimal(k, max); v && std::to_string(*v) == k) out.push_back(*v);
    std::sort(out.begin(), out.end());
    return out;
}

}  // namespace

const char* state_name(int state) {
    switch (state) {
    case kUnknown: return "Unknown";
    case kInitialising: return "Initialising";
    case kInitWait: return "InitWait";
    case kInitialised: return "Initialised";
    case kConnected: return "Connected";
    case kClosing: return "Closing";
    case kClosed: return "Closed";
    case kReconfiguring: return "Reconfiguring";
    case kReconfigured: return "Reconfigured";
    default: return "invalid";
    }
}

std::optional<uint64_t> parse_decimal(const std::string& s, uint64_t max) {
    if (s.empty() || s.size() > 20) return std::nullopt;
    uint64_t v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') return std::nullopt;
        const uint64_t d = static_cast<uint64_t>(c - '0');
        if (v > max / 10) return std::nullopt;
        v *= 10;
        if (d > max - v) return std::nullopt;
        v += d;
    }
    return v;
}

std::string domain_path(uint32_t domid) { return "/local/domain/" + std::to_string(domid); }
std::string frontend_path(uint32_t domid) { return domain_path(domid) + "/device/vpipe/0"; }
std::string backend_domain_dir(uint32_t domid) {
    return "/local/domain/0/backend/vpipe/" + std::to_string(domid);
}
std::string backend_path(uint32_t domid) { return backend_domain_dir(domid) + "/0"; }

bool vm_config_from_store(StoreReader& store, uint32_t domid, const engine::XenConfig& xen,
                          engine::VmConfig* out, std::vector<std::string>* warnings, std::string* why) {
    if (domid == 0 || domid >= kDomidFirstReserved) {
        *why = "domain " + std::to_string(domid) + " is not a guest";
        return false;
    }
    const std::string dom = domain_path(domid);
    if (!store.list(dom)) {
        *why = "no " + dom + " in xenstore";
        return false;
    }
    engine::VmConfig vm;
    vm.id = domid;
    const auto name = store.read(dom + "/name");
    if (name && safe_token(*name, kMaxName)) {
        vm.name = *name;
    } else {
        vm.name = "dom" + std::to_string(domid);
        warnings->push_back(name ? "name is not a plain token (letters, digits, . _ -; at most 64): using " + vm.name
                                 : "no name: using " + vm.name);
    }
    const engine::XenVmDefaults d = xen.for_vm(vm.name);
    vm.weight = d.weight;
    vm.threads = d.threads;
    vm.tenant = d.tenant;

    const std::string vbd = "/local/domain/0/backend/vbd/" + std::to_string(domid);
    for (uint64_t devid : numeric_children(store, vbd, UINT32_MAX)) {
        const std::string dir = vbd + "/" + std::to_string(devid);
        const auto params = store.read(dir + "/params");
        const auto mode = store.read(dir + "/mode");
        if (!params || params->empty() || (*params)[0] != '/') {
            warnings->push_back("vbd " + std::to_string(devid) + ": params is not an absolute path; skipped");
            continue;
        }
        if (!mode || (*mode != "w" && *mode != "r")) {
            warnings->push_back("vbd " + std::to_string(devid) + ": mode is neither \"w\" nor \"r\"; skipped");
            continue;
        }
        engine::DiskConfig disk;
        disk.vdev = static_cast<uint32_t>(devid);
        disk.image = *params;
        disk.writable = *mode == "w";
        vm.disks.push_back(std::move(disk));
    }

    const std::string vif = "/local/domain/0/backend/vif/" + std::to_string(domid);
    bool have_vif = false;
    for (uint64_t n : numeric_children(store, vif, UINT32_MAX)) {
        const std::string dir = vif + "/" + std::to_string(n);
        const std::string ip = first_ipv4(store.read(dir + "/ip").value_or(""));
        if (have_vif && ip.empty()) continue;      // keep looking for one with an address
        vm.ip = ip;
        vm.mac.clear();
        vm.bridge.clear();
        if (auto mac = store.read(dir + "/mac"); mac && valid_mac(*mac)) vm.mac = *mac;
        if (auto br = store.read(dir + "/bridge"); br && safe_token(*br, 15)) vm.bridge = *br;
        vm.vif = "vif" + std::to_string(domid) + "." + std::to_string(n);
        have_vif = true;
        if (!ip.empty()) break;
    }
    if (have_vif && vm.ip.empty())
        warnings->push_back("no vif has an ip (set ip= in the vif config): socket operations will be refused");
    *out = std::move(vm);
    return true;
}

int read_frontend_keys(StoreReader& store, const std::string& fe, FrontendKeys* out, std::string* why) {
    const auto version = store.read(fe + "/protocol-version");
    if (!version) {
        *why = "protocol-version missing";
        return -EINVAL;
    }
    const auto v = parse_decimal(*version, UINT32_MAX);
    if (!v) {
        *why = "protocol-version is not a number";
        return -EINVAL;
    }
    if (*v != VPIPE_PROTOCOL_VERSION) {
        *why = "protocol-version " + std::to_string(*v) + ", this engine speaks " +
               std::to_string(VPIPE_PROTOCOL_VERSION);
        return -EPROTO;
    }
    const auto ref = store.read(fe + "/ring-ref");
    const auto rv = ref ? parse_decimal(*ref, UINT32_MAX) : std::nullopt;
    if (!rv || *rv == 0) {
        *why = ref ? "ring-ref is not a grant reference" : "ring-ref missing";
        return -EINVAL;
    }
    const auto port = store.read(fe + "/event-channel");
    const auto pv = port ? parse_decimal(*port, kMaxEventChannel - 1) : std::nullopt;
    if (!pv || *pv == 0) {
        *why = port ? "event-channel is not a port number" : "event-channel missing";
        return -EINVAL;
    }
    out->ring_ref = static_cast<uint32_t>(*rv);
    out->event_channel = static_cast<uint32_t>(*pv);
    return 0;
}

int read_state(StoreReader& store, const std::string& dir) {
    const auto s = store.read(dir + "/state");
    if (!s) return kUnknown;
    const auto v = parse_decimal(*s, kReconfigured);
    return v ? static_cast<int>(*v) : kUnknown;
}

std::vector<uint32_t> list_domains(StoreReader& store) {
    std::vector<uint32_t> out;
    for (uint64_t d : numeric_children(store, "/local/domain", kDomidFirstReserved - 1))
        out.push_back(static_cast<uint32_t>(d));
    return out;
}

}  // namespace vpipe::xen
