// fuzz_control: vpiped's control socket protocol (dom0-engine/src/control.cpp) without the
// socket: bytes arrive in chunks of any size, ControlFramer cuts lines, control_reply answers
// each with a handler shaped like Engine::handle (which echoes what the client sent in its
// errors). A reply must always be exactly one line of valid JSON; nothing may throw.
//
// Input: the first byte picks the chunk size (1..256), the rest is the byte stream.
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "control.h"

using namespace vpipe::engine;
using nlohmann::json;

namespace {
[[noreturn]] void bug(const char*) { __builtin_trap(); }

// Engine::handle's shape: value("cmd"), set-weight's argument checks, errors quoting input.
json handle(const json& req) {
    const std::string cmd = req.value("cmd", "");
    if (cmd == "ping") return json{{"ok", true}};
    if (cmd == "stats") return json{{"ok", true}, {"stats", {{"vms", json::array()}}}};
    if (cmd == "set-weight") {
        const auto vm_it = req.find("vm");
        const auto w_it = req.find("weight");
        if (vm_it == req.end() || w_it == req.end() || !w_it->is_number_integer())
            return json{{"ok", false}, {"error", "set-weight needs \"vm\" and an integer \"weight\""}};
        const int64_t w = w_it->get<int64_t>();
        if (w < 1 || w > 10000) return json{{"ok", false}, {"error", "weight must be 1..10000"}};
        if (vm_it->is_string() && vm_it->get<std::string>() == "vm1")
            return json{{"ok", true}, {"vm", "vm1"}, {"weight", w}};
        return json{{"ok", false}, {"error", "no VM " + vm_it->dump()}};
    }
    return json{{"ok", false}, {"error", "unknown command '" + cmd + "'"}};
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return -1;
    const size_t chunk = size_t{data[0]} + 1;
    const char* p = reinterpret_cast<const char*>(data + 1);
    size_t left = size - 1;
    ControlFramer framer;
    std::string line, seen;
    size_t fed = 0;
    while (left > 0) {
        const size_t n = std::min(chunk, left);
        framer.feed(p, n);
        p += n;
        left -= n;
        fed += n;
        while (framer.next(&line)) {
            if (line.find('\n') != std::string::npos) bug("newline inside a line");
            seen += line + "\n";
            const std::string out = control_reply(handle, line);
            if (out.empty() || out.back() != '\n' || out.find('\n') != out.size() - 1) bug("not one line");
            json j;
            try {
                j = json::parse(out.substr(0, out.size() - 1));
            } catch (...) {
                bug("reply is not JSON");
            }
            if (!j.is_object() || !j.contains("ok") || !j["ok"].is_boolean()) bug("reply without ok");
        }
        if (framer.overflow()) break;   // the server drops the connection here
    }
    // The lines are exactly the stream up to its last '\n'.
    if (seen.compare(0, seen.size(), reinterpret_cast<const char*>(data + 1), seen.size()) != 0) bug("framing");
    (void)fed;
    return 0;
}
