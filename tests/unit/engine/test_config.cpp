#include <gtest/gtest.h>

#include "config.h"

using namespace vpipe::engine;

TEST(EngineConfig, ParsesTheLabFormat) {
    auto c = parse_config(R"(
[engine]
control_socket = "/run/x.ctl"
pool_pages = 1024
queue_depth = 16
total_rate_mbps = 900
disk_rate_mbps = 4000
[[vm]]
name = "vm1"
id = 1
weight = 2
threads = 3
channel = "/run/vm1.sock"
ip = "10.199.0.11"
[[vm.disk]]
vdev = 51712
image = "/var/lib/x.img"
[[vm.disk]]
vdev = 51728
image = "/var/lib/y.img"
writable = false
cache = "host"
)");
    EXPECT_EQ(c.control_socket, "/run/x.ctl");
    EXPECT_EQ(c.pool_pages, 1024u);
    EXPECT_EQ(c.total_rate_mbps, 900u);
    EXPECT_EQ(c.disk_rate_mbps, 4000u);
    ASSERT_EQ(c.vms.size(), 1u);
    EXPECT_EQ(c.vms[0].weight, 2u);
    EXPECT_EQ(c.vms[0].threads, 3u);
    ASSERT_EQ(c.vms[0].disks.size(), 2u);
    EXPECT_TRUE(c.vms[0].disks[0].writable);
    EXPECT_FALSE(c.vms[0].disks[1].writable);
    EXPECT_FALSE(c.vms[0].disks[0].host_cache);  // O_DIRECT unless the operator says it is coherent
    EXPECT_TRUE(c.vms[0].disks[1].host_cache);
}

TEST(EngineConfig, ErrorsNameTheProblem) {
    auto expect_error = [](const char* text, const char* needle) {
        try {
            parse_config(text, "cfg.toml");
            ADD_FAILURE() << "no error for: " << text;
        } catch (const std::runtime_error& e) {
            EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
        }
    };
    expect_error("[[vm]]\nid = 1\nchannel = \"/a\"\n", "name is required");
    expect_error("[[vm]]\nname = \"a\"\nid = -1\nchannel = \"/a\"\n", "id must be");
    expect_error("[[vm]]\nname = \"a\"\nid = 1\nchannel = \"/a\"\n[[vm]]\nname = \"a\"\nid = 2\nchannel = \"/b\"\n",
                 "duplicate name");
    expect_error("[[vm]]\nname = \"a\"\nid = 1\nchannel = \"/a\"\nweight = 0\n", "weight");
    expect_error("[engine]\nqueue_depth = 0\n", "queue_depth");
    expect_error("[engine]\ndisk_rate_mbps = 20000000\n", "disk_rate_mbps");
    expect_error("[[vm]]\nname = \"a\"\nid = 1\nchannel = \"/a\"\n[[vm.disk]]\nvdev = 1\nimage = \"x\"\n[[vm.disk]]\nvdev = 1\nimage = \"y\"\n",
                 "duplicate vdev");
    expect_error("[[vm]]\nname = \"a\"\nid = 1\nchannel = \"/a\"\n[[vm.disk]]\nvdev = 1\nimage = \"x\"\ncache = \"writeback\"\n",
                 "cache must be");
    expect_error("not toml at all = = =", "cfg.toml");
    // floats are not integers (toml++ would cast 1e300 to int64_t: undefined behaviour)
    expect_error("[engine]\npool_pages = 1e300\n", "pool_pages must be an integer");
    expect_error("[engine]\ntick_ms = 4.0\n", "tick_ms must be an integer");
    expect_error("[[vm]]\nname = \"a\"\nid = -1e300\nchannel = \"/a\"\n", "id must be an integer");
}
