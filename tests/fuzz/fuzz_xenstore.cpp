// fuzz_xenstore: the Xen backend's reading of xenstore (dom0-engine/xen/identity.cpp): a
// domain's identity from the toolstack's vbd/vif nodes and the frontend's handshake keys. The
// frontend keys are the guest's own; a guest that can influence its name, vif ip and so on
// must not get a VM config the engine would misuse.
//
// Input: lines "path=value" (a line without '=' is an empty node); paths are absolute xenstore
// paths. The domain examined is 5 (its frontend: /local/domain/5/device/vpipe/0).
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <arpa/inet.h>

#include "identity.h"

using namespace vpipe;
using namespace vpipe::xen;

namespace {
[[noreturn]] void bug(const char*) { __builtin_trap(); }

class MapStore final : public StoreReader {
public:
    std::map<std::string, std::string> nodes;
    std::optional<std::string> read(const std::string& path) override {
        auto it = nodes.find(path);
        if (it == nodes.end()) return std::nullopt;
        return it->second;
    }
    std::optional<std::vector<std::string>> list(const std::string& path) override {
        std::set<std::string> kids;
        bool exists = nodes.count(path) > 0;
        const std::string prefix = path + "/";
        for (auto it = nodes.lower_bound(prefix); it != nodes.end() && it->first.compare(0, prefix.size(), prefix) == 0; ++it) {
            exists = true;
            const std::string rest = it->first.substr(prefix.size());
            kids.insert(rest.substr(0, rest.find('/')));
        }
        if (!exists) return std::nullopt;
        return std::vector<std::string>(kids.begin(), kids.end());
    }
};

bool plain_token(const std::string& s, size_t max) {
    if (s.empty() || s.size() > max) return false;
    for (char c : s)
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) return false;
    return true;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size > 16384) return -1;
    MapStore store;
    const std::string text(reinterpret_cast<const char*>(data), size);
    size_t pos = 0;
    while (pos <= text.size()) {
        size_t end = text.find('\n', pos);
        if (end == std::string::npos) end = text.size();
        const std::string line = text.substr(pos, end - pos);
        pos = end + 1;
        if (line.empty()) continue;
        const size_t eq = line.find('=');
        if (eq == std::string::npos) store.nodes[line] = "";
        else store.nodes[line.substr(0, eq)] = line.substr(eq + 1);
    }

    engine::XenConfig xen;
    xen.defaults = {2, 3};
    xen.by_name["web"] = {7, 5};
    engine::VmConfig vm;
    std::vector<std::string> warnings;
    std::string why;
    if (vm_config_from_store(store, 5, xen, &vm, &warnings, &why)) {
        if (vm.id != 5 || !vm.channel.empty()) bug("id / channel");
        if (!plain_token(vm.name, 64)) bug("name not a plain token");
        std::set<uint32_t> vdevs;
        for (const auto& d : vm.disks) {
            if (d.image.empty() || d.image[0] != '/') bug("image not absolute");
            if (!vdevs.insert(d.vdev).second) bug("duplicate vdev");
        }
        if (!vm.ip.empty()) {
            in_addr a{};
            if (inet_pton(AF_INET, vm.ip.c_str(), &a) != 1) bug("ip not an IPv4 address");
        }
        if (!vm.mac.empty() && vm.mac.size() != 17) bug("mac");
        if (!vm.bridge.empty() && !plain_token(vm.bridge, 15)) bug("bridge not a plain token");
    } else if (why.empty()) {
        bug("refused without a reason");
    }
    // Frontend keys the guest writes.
    FrontendKeys keys;
    why.clear();
    const int r = read_frontend_keys(store, frontend_path(5), &keys, &why);
    if (r == 0) {
        if (keys.ring_ref == 0 || keys.event_channel == 0 || keys.event_channel >= (1u << 17)) bug("frontend keys");
    } else if (why.empty() || (r != -EINVAL && r != -EPROTO)) {
        bug("frontend refusal");
    }
    const int st = read_state(store, frontend_path(5));
    if (st < kUnknown || st > kReconfigured) bug("state out of range");
    (void)state_name(st);
    for (uint32_t d : list_domains(store))
        if (d >= 0x7FF0) bug("reserved domid listed");
    // The strict decimal parser alone, on the first line.
    const std::string first = text.substr(0, text.find('\n'));
    if (auto v = parse_decimal(first, UINT32_MAX)) {
        if (*v > UINT32_MAX || first.empty() || first.size() > 20) bug("parse_decimal");
        if (!std::all_of(first.begin(), first.end(), [](char c) { return c >= '0' && c <= '9'; })) bug("parse_decimal digits");
    }
    return 0;
}
