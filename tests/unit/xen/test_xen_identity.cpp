// What the Xen backend reads from xenstore: the VM's identity from the toolstack's nodes and the
// frontend's handshake keys, parsed from an in-memory store the way libxenstore presents it.
#include <cerrno>
#include <map>
#include <set>
#include <string>

#include <gtest/gtest.h>

#include "config.h"
#include "identity.h"
#include "vpipe/abi/ring.h"

using namespace vpipe;
using namespace vpipe::xen;

namespace {

// Paths -> values; a directory lists the next path component of every key below it.
class FakeStore final : public StoreReader {
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
        for (const auto& [k, v] : nodes) {
            if (k.rfind(prefix, 0) != 0) continue;
            exists = true;
            const std::string rest = k.substr(prefix.size());
            kids.insert(rest.substr(0, rest.find('/')));
        }
        if (!exists) return std::nullopt;
        return std::vector<std::string>(kids.begin(), kids.end());
    }
};

// What `xl create` leaves for a PV guest with two disks and one vif (xl.cfg: disk = [
// 'phy:/dev/vda,xvda,w', '/img/data.img,raw,xvdb,r' ], vif = [ 'bridge=xenbr0,mac=..,ip=10.0.0.2' ]).
FakeStore toolstack(uint32_t domid, const std::string& name) {
    FakeStore s;
    const std::string d = std::to_string(domid);
    s.nodes["/local/domain/" + d + "/name"] = name;
    s.nodes["/local/domain/" + d + "/domid"] = d;
    s.nodes["/local/domain/0/backend/vbd/" + d + "/51712/params"] = "/dev/vda";
    s.nodes["/local/domain/0/backend/vbd/" + d + "/51712/mode"] = "w";
    s.nodes["/local/domain/0/backend/vbd/" + d + "/51712/state"] = "4";
    s.nodes["/local/domain/0/backend/vbd/" + d + "/51728/params"] = "/img/data.img";
    s.nodes["/local/domain/0/backend/vbd/" + d + "/51728/mode"] = "r";
    s.nodes["/local/domain/0/backend/vif/" + d + "/0/ip"] = "10.0.0.2";
    s.nodes["/local/domain/0/backend/vif/" + d + "/0/mac"] = "00:16:3e:00:00:02";
    s.nodes["/local/domain/0/backend/vif/" + d + "/0/bridge"] = "xenbr0";
    return s;
}

engine::XenConfig xen_defaults() {
    engine::XenConfig x;
    x.enabled = true;
    x.defaults = {2, 3};
    x.by_name["web"] = {7, 5};
    return x;
}

}  // namespace

TEST(XenIdentity, DisksAndAddressFromTheToolstack) {
    FakeStore s = toolstack(5, "d1");
    engine::VmConfig vm;
    std::vector<std::string> warnings;
    std::string why;
    ASSERT_TRUE(vm_config_from_store(s, 5, xen_defaults(), &vm, &warnings, &why)) << why;
    EXPECT_TRUE(warnings.empty());
    EXPECT_EQ(vm.name, "d1");
    EXPECT_EQ(vm.id, 5u);
    EXPECT_EQ(vm.weight, 2u);
    EXPECT_EQ(vm.threads, 3u);
    EXPECT_TRUE(vm.channel.empty());  // the ring comes through xenbus, never a socket
    ASSERT_EQ(vm.disks.size(), 2u);
    EXPECT_EQ(vm.disks[0].vdev, 51712u);
    EXPECT_EQ(vm.disks[0].image, "/dev/vda");
    EXPECT_TRUE(vm.disks[0].writable);
    EXPECT_EQ(vm.disks[1].vdev, 51728u);
    EXPECT_EQ(vm.disks[1].image, "/img/data.img");
    EXPECT_FALSE(vm.disks[1].writable);
    EXPECT_EQ(vm.ip, "10.0.0.2");
    EXPECT_EQ(vm.mac, "00:16:3e:00:00:02");
    EXPECT_EQ(vm.bridge, "xenbr0");
    EXPECT_EQ(vm.vif, "vif5.0");
}

TEST(XenIdentity, PerNameSettings) {
    FakeStore s = toolstack(9, "web");
    engine::VmConfig vm;
    std::vector<std::string> warnings;
    std::string why;
    ASSERT_TRUE(vm_config_from_store(s, 9, xen_defaults(), &vm, &warnings, &why));
    EXPECT_EQ(vm.weight, 7u);
    EXPECT_EQ(vm.threads, 5u);
}

TEST(XenIdentity, UnusableDisksAreSkippedWithAReason) {
    FakeStore s = toolstack(5, "d1");
    s.nodes["/local/domain/0/backend/vbd/5/51712/params"] = "relative/path.img";  // not absolute
    s.nodes["/local/domain/0/backend/vbd/5/51728/mode"] = "rw";                    // not w or r
    s.nodes["/local/domain/0/backend/vbd/5/51744/mode"] = "w";                     // no params
    s.nodes["/local/domain/0/backend/vbd/5/xvdd/params"] = "/x";                   // not a devid
    s.nodes["/local/domain/0/backend/vbd/5/51760/params"] = "/dev/vdc";
    s.nodes["/local/domain/0/backend/vbd/5/51760/mode"] = "w";
    engine::VmConfig vm;
    std::vector<std::string> warnings;
    std::string why;
    ASSERT_TRUE(vm_config_from_store(s, 5, xen_defaults(), &vm, &warnings, &why));
    ASSERT_EQ(vm.disks.size(), 1u);
    EXPECT_EQ(vm.disks[0].vdev, 51760u);
    EXPECT_EQ(warnings.size(), 3u);
}

TEST(XenIdentity, NonCanonicalDeviceNumbersAreNotDevices) {
    // "051712" parses as 51712, but <vbd>/51712 is a different node: it must not add the same
    // vdev a second time (nor name a disk by another node's params).
    FakeStore s = toolstack(5, "d1");
    s.nodes["/local/domain/0/backend/vbd/5/051712/params"] = "/dev/other";
    s.nodes["/local/domain/0/backend/vbd/5/051712/mode"] = "w";
    engine::VmConfig vm;
    std::vector<std::string> warnings;
    std::string why;
    ASSERT_TRUE(vm_config_from_store(s, 5, xen_defaults(), &vm, &warnings, &why));
    ASSERT_EQ(vm.disks.size(), 2u);
    EXPECT_EQ(vm.disks[0].vdev, 51712u);
    EXPECT_EQ(vm.disks[0].image, "/dev/vda");
}

TEST(XenIdentity, NameThatIsNotAPlainTokenIsReplaced) {
    for (const std::string& bad : std::vector<std::string>{"", "a b", "../x", "na\nme", std::string(65, 'a')}) {
        FakeStore s = toolstack(12, bad);
        engine::VmConfig vm;
        std::vector<std::string> warnings;
        std::string why;
        ASSERT_TRUE(vm_config_from_store(s, 12, xen_defaults(), &vm, &warnings, &why));
        EXPECT_EQ(vm.name, "dom12") << bad;
        EXPECT_EQ(warnings.size(), 1u);
    }
    FakeStore s = toolstack(12, "x");
    s.nodes.erase("/local/domain/12/name");
    engine::VmConfig vm;
    std::vector<std::string> warnings;
    std::string why;
    ASSERT_TRUE(vm_config_from_store(s, 12, xen_defaults(), &vm, &warnings, &why));
    EXPECT_EQ(vm.name, "dom12");
}

TEST(XenIdentity, FirstVifWithAnAddressWins) {
    FakeStore s = toolstack(5, "d1");
    s.nodes["/local/domain/0/backend/vif/5/0/ip"] = "fe80::1";  // no IPv4
    s.nodes["/local/domain/0/backend/vif/5/1/ip"] = "10.1.0.9/24 10.1.0.10";
    s.nodes["/local/domain/0/backend/vif/5/1/mac"] = "bogus";
    s.nodes["/local/domain/0/backend/vif/5/1/bridge"] = "br1";
    engine::VmConfig vm;
    std::vector<std::string> warnings;
    std::string why;
    ASSERT_TRUE(vm_config_from_store(s, 5, xen_defaults(), &vm, &warnings, &why));
    EXPECT_EQ(vm.ip, "10.1.0.9");
    EXPECT_EQ(vm.vif, "vif5.1");
    EXPECT_EQ(vm.bridge, "br1");
    EXPECT_EQ(vm.mac, "");  // malformed: dropped

    s.nodes.erase("/local/domain/0/backend/vif/5/1/ip");
    ASSERT_TRUE(vm_config_from_store(s, 5, xen_defaults(), &vm, &warnings, &why));
    EXPECT_EQ(vm.ip, "");
    EXPECT_EQ(vm.vif, "vif5.0");
    EXPECT_EQ(vm.mac, "00:16:3e:00:00:02");
}

TEST(XenIdentity, NotAGuest) {
    FakeStore s = toolstack(5, "d1");
    engine::VmConfig vm;
    std::vector<std::string> warnings;
    std::string why;
    EXPECT_FALSE(vm_config_from_store(s, 0, xen_defaults(), &vm, &warnings, &why));
    EXPECT_FALSE(vm_config_from_store(s, 6, xen_defaults(), &vm, &warnings, &why));       // no such domain
    EXPECT_FALSE(vm_config_from_store(s, 0x7FF0, xen_defaults(), &vm, &warnings, &why));  // DOMID_IO..
    EXPECT_FALSE(why.empty());
}

TEST(XenIdentity, Paths) {
    EXPECT_EQ(frontend_path(7), "/local/domain/7/device/vpipe/0");
    EXPECT_EQ(backend_path(7), "/local/domain/0/backend/vpipe/7/0");
    EXPECT_EQ(backend_domain_dir(7), "/local/domain/0/backend/vpipe/7");
}

TEST(XenFrontendKeys, WellFormed) {
    FakeStore s;
    const std::string fe = frontend_path(3);
    s.nodes[fe + "/ring-ref"] = "8";
    s.nodes[fe + "/event-channel"] = "17";
    s.nodes[fe + "/protocol-version"] = std::to_string(VPIPE_PROTOCOL_VERSION);
    FrontendKeys k;
    std::string why;
    ASSERT_EQ(read_frontend_keys(s, fe, &k, &why), 0) << why;
    EXPECT_EQ(k.ring_ref, 8u);
    EXPECT_EQ(k.event_channel, 17u);
}

TEST(XenFrontendKeys, DistrustsEveryKey) {
    const std::string fe = frontend_path(3);
    struct Case {
        const char* key;
        const char* value;  // nullptr: missing
        int err;
    } cases[] = {
        {"protocol-version", "1", -EPROTO},   {"protocol-version", "3", -EPROTO},
        {"protocol-version", nullptr, -EINVAL}, {"protocol-version", "2 ", -EINVAL},  {"protocol-version", "01x", -EINVAL},
        {"ring-ref", nullptr, -EINVAL},       {"ring-ref", "0", -EINVAL},
        {"ring-ref", "-1", -EINVAL},          {"ring-ref", "4294967296", -EINVAL},
        {"ring-ref", "0x10", -EINVAL},        {"ring-ref", "", -EINVAL},
        {"ring-ref", " 8", -EINVAL},          {"event-channel", nullptr, -EINVAL},
        {"event-channel", "0", -EINVAL},      {"event-channel", "131072", -EINVAL},
        {"event-channel", "99999999999999999999999", -EINVAL},
    };
    for (const auto& c : cases) {
        FakeStore s;
        s.nodes[fe + "/ring-ref"] = "8";
        s.nodes[fe + "/event-channel"] = "17";
        s.nodes[fe + "/protocol-version"] = std::to_string(VPIPE_PROTOCOL_VERSION);
        if (c.value)
            s.nodes[fe + "/" + c.key] = c.value;
        else
            s.nodes.erase(fe + "/" + c.key);
        FrontendKeys k;
        std::string why;
        EXPECT_EQ(read_frontend_keys(s, fe, &k, &why), c.err) << c.key << "=" << (c.value ? c.value : "(missing)");
        EXPECT_FALSE(why.empty());
    }
}

TEST(XenStore, States) {
    FakeStore s;
    const std::string fe = frontend_path(3);
    EXPECT_EQ(read_state(s, fe), kUnknown);
    s.nodes[fe + "/state"] = "3";
    EXPECT_EQ(read_state(s, fe), kInitialised);
    s.nodes[fe + "/state"] = "9";
    EXPECT_EQ(read_state(s, fe), kUnknown);
    s.nodes[fe + "/state"] = "4\n";
    EXPECT_EQ(read_state(s, fe), kUnknown);
    EXPECT_STREQ(state_name(kInitWait), "InitWait");
    EXPECT_STREQ(state_name(42), "invalid");
}

TEST(XenStore, DomainList) {
    FakeStore s = toolstack(5, "d1");
    s.nodes["/local/domain/0/name"] = "Domain-0";
    s.nodes["/local/domain/12/name"] = "x";
    s.nodes["/local/domain/junk/name"] = "y";
    s.nodes["/local/domain/32752/name"] = "reserved";  // DOMID_FIRST_RESERVED
    EXPECT_EQ(list_domains(s), (std::vector<uint32_t>{0, 5, 12}));
}

TEST(XenStore, ParseDecimal) {
    EXPECT_EQ(parse_decimal("0", 10), 0u);
    EXPECT_EQ(parse_decimal("10", 10), 10u);
    EXPECT_EQ(parse_decimal("11", 10), std::nullopt);
    EXPECT_EQ(parse_decimal("18446744073709551615", UINT64_MAX), UINT64_MAX);
    EXPECT_EQ(parse_decimal("18446744073709551616", UINT64_MAX), std::nullopt);
    EXPECT_EQ(parse_decimal("+1", 10), std::nullopt);
    EXPECT_EQ(parse_decimal("", 10), std::nullopt);
}

TEST(XenConfig, TomlSection) {
    auto cfg = engine::parse_config(
        "[xen]\nenabled = true\nweight = 3\nthreads = 2\n[xen.vm.web]\nweight = 9\n");
    EXPECT_TRUE(cfg.xen.enabled);
    EXPECT_EQ(cfg.xen.defaults.weight, 3u);
    EXPECT_EQ(cfg.xen.for_vm("other").threads, 2u);
    EXPECT_EQ(cfg.xen.for_vm("web").weight, 9u);
    EXPECT_EQ(cfg.xen.for_vm("web").threads, 2u);  // inherits [xen]
    EXPECT_FALSE(engine::parse_config("").xen.enabled);
    EXPECT_THROW(engine::parse_config("[xen]\nenable = true\n"), std::runtime_error);
    EXPECT_THROW(engine::parse_config("[xen]\nweight = 0\n"), std::runtime_error);
    EXPECT_THROW(engine::parse_config("[xen.vm.a]\nthreads = 999\n"), std::runtime_error);
    EXPECT_THROW(engine::parse_config("[xen.vm.a]\nip = \"1.2.3.4\"\n"), std::runtime_error);
}
