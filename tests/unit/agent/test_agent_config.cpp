// vpipe-guestd's configuration parser (also fuzzed: tests/fuzz/fuzz_agent_config).
#include <gtest/gtest.h>

#include <stdexcept>

#include "config.h"

using vpipe::agent::parse_agent_config;

TEST(AgentConfig, ParsesTheLabsConfig) {
    auto c = parse_agent_config("[agent]\nvm = \"vm1\"\nlisten = \"/run/a.sock\"\nengine_channel = \"/run/e.sock\"\n"
                                "area_pages = 4096\n\n[[disk]]\nvdev = 51712\ndevice = \"/dev/loop0\"\n");
    EXPECT_EQ(c.vm, "vm1");
    EXPECT_EQ(c.engine_channel, "/run/e.sock");
    EXPECT_EQ(c.area_pages, 4096u);
    ASSERT_EQ(c.disks.size(), 1u);
    EXPECT_EQ(c.disks[0].vdev, 51712u);
}

TEST(AgentConfig, RequestTimeoutHasVpipeKosDefaultAndRange) {
    EXPECT_EQ(parse_agent_config("[agent]\nengine_channel = \"/e\"\n").request_timeout_ms, 60000u);
    EXPECT_EQ(parse_agent_config("[agent]\nengine_channel = \"/e\"\nrequest_timeout_ms = 100\n").request_timeout_ms,
              100u);
    EXPECT_EQ(
        parse_agent_config("[agent]\nengine_channel = \"/e\"\nrequest_timeout_ms = 3600000\n").request_timeout_ms,
        3600000u);
}

TEST(AgentConfig, RejectsWhatItCannotUse) {
    auto expect_error = [](const char* text, const char* needle) {
        try {
            parse_agent_config(text, "agent.toml");
            ADD_FAILURE() << "no error for: " << text;
        } catch (const std::runtime_error& e) {
            EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
        }
    };
    const std::string base = "[agent]\nengine_channel = \"/e\"\n";
    expect_error((base + "area_pages = 1e300\n").c_str(), "area_pages must be an integer");
    expect_error((base + "chunk_mib = 2.0\n").c_str(), "chunk_mib must be an integer");
    expect_error((base + "prepare_ahead = 1\n").c_str(), "prepare_ahead must be true or false");
    expect_error((base + "listen = 5\n").c_str(), "listen must be a string");
    expect_error((base + "request_timeout_ms = 99\n").c_str(), "request_timeout_ms must be 100..3600000");
    expect_error((base + "request_timeout_ms = 3600001\n").c_str(), "request_timeout_ms must be 100..3600000");
    expect_error((base + "request_timeout_ms = 1.5\n").c_str(), "request_timeout_ms must be an integer");
    expect_error((base + "[[disk]]\nvdev = 1e300\ndevice = \"/d\"\n").c_str(), "vdev");
    expect_error("[agent]\n", "engine_channel is required");
    expect_error("x = = 1", "agent.toml");
}
