// The control socket's framing and replies, apart from any socket (also fuzzed: fuzz_control).
#include <gtest/gtest.h>

#include "control.h"

using namespace vpipe::engine;
using nlohmann::json;

TEST(ControlFramer, SplitsLinesAcrossChunks) {
    ControlFramer f;
    std::string line;
    f.feed("{\"cmd\":", 7);
    EXPECT_FALSE(f.next(&line));
    f.feed("\"ping\"}\n{}\n", 11);
    ASSERT_TRUE(f.next(&line));
    EXPECT_EQ(line, "{\"cmd\":\"ping\"}");
    ASSERT_TRUE(f.next(&line));
    EXPECT_EQ(line, "{}");
    EXPECT_FALSE(f.next(&line));
    EXPECT_FALSE(f.overflow());
}

TEST(ControlFramer, UnterminatedLongLineOverflows) {
    ControlFramer f;
    std::string big(ControlFramer::kMaxLine, 'x'), line;
    f.feed(big.data(), big.size());
    EXPECT_FALSE(f.next(&line));
    EXPECT_TRUE(f.overflow());
}

TEST(ControlReply, NonUtf8LineIsAnErrorNotACrash) {
    auto handler = [](const json& r) { return json{{"ok", true}, {"echo", r}}; };
    const std::string bad = "{\"cmd\":\"\xff\xfe\"}";
    std::string out;
    ASSERT_NO_THROW(out = control_reply(handler, bad));
    ASSERT_EQ(out.back(), '\n');
    const json j = json::parse(out);
    EXPECT_EQ(j["ok"], false);
    // A parse error that quotes a bare invalid byte
    ASSERT_NO_THROW(out = control_reply(handler, "\xc3"));
    EXPECT_EQ(json::parse(out)["ok"], false);
}

TEST(ControlReply, HandlerExceptionsAndNonObjects) {
    auto handler = [](const json& r) -> json { return json{{"ok", true}, {"cmd", r.value("cmd", "")}}; };
    EXPECT_EQ(json::parse(control_reply(handler, "{\"cmd\":\"ping\"}"))["cmd"], "ping");
    EXPECT_EQ(json::parse(control_reply(handler, "5"))["ok"], false);   // value() on a number throws
}
