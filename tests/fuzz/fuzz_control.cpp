// fuzz_control: vpiped's control socket protocol (dom0-engine/src/control.cpp) without the
// socket: bytes arrive in chunks of any size, ControlFramer cuts lines, control_reply answers
// each with the real engine's handler (Engine::handle of an engine built once, at start-up, from
// a configuration with two VMs, one with a 1 MiB raw disk image, in a temporary directory; not
// started: handle() needs only what the constructor builds). So every command the engine knows
// (ping, stats, calibration, set-weight with live weight changes) runs on fuzzed arguments. A
// reply must always be exactly one line of valid JSON; nothing may throw.
//
// Input: the first byte picks the chunk size (1..256), the rest is the byte stream. Only the
// first kMaxCommands lines are answered; later ones are still framed and checked. An input that
// repeats `stats` fifty times costs fifty JSON dumps and parses under full instrumentation but
// covers nothing the first few did not, and such inputs held the fuzzer near 400 exec/s.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "config.h"
#include "control.h"
#include "engine.h"

using namespace vpipe::engine;
using nlohmann::json;

namespace {
[[noreturn]] void bug(const char*) { __builtin_trap(); }

std::unique_ptr<Engine> g_engine;
std::string g_dir;

void remove_dir() {
    g_engine.reset();
    if (!g_dir.empty()) std::system(("rm -rf '" + g_dir + "'").c_str());
}
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    spdlog::set_level(spdlog::level::off);  // set-weight logs each change
    char tmpl[] = "/tmp/fuzz_control.XXXXXX";
    if (!::mkdtemp(tmpl)) bug("mkdtemp");
    g_dir = tmpl;
    {
        std::ofstream img(g_dir + "/vm1.img", std::ios::binary);
        img << std::string(1 << 20, '\0');
    }
    // a stated total rate: no calibration run at each start of the fuzzer
    const std::string toml = "[engine]\ncontrol_socket = \"" + g_dir + "/ctl\"\npool_pages = 1024\n"
                             "total_rate_mbps = 1000\ndisk_rate_mbps = 1000\n"
                             "[[vm]]\nname = \"vm1\"\nid = 1\nthreads = 1\nchannel = \"" + g_dir +
                             "/vm1.sock\"\n[[vm.disk]]\nvdev = 51712\nimage = \"" + g_dir + "/vm1.img\"\n"
                             "[[vm]]\nname = \"vm2\"\nid = 2\nthreads = 1\nweight = 3\nchannel = \"" + g_dir +
                             "/vm2.sock\"\n";
    g_engine = std::make_unique<Engine>(parse_config(toml, "fuzz_control.toml"));
    std::atexit(remove_dir);
    return 0;
}

namespace {
json handle(const json& req) { return g_engine->handle(req); }
constexpr int kMaxCommands = 8;   // enough for set-weight, stats, set-weight back, stats, ...
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return -1;
    const size_t chunk = size_t{data[0]} + 1;
    const char* p = reinterpret_cast<const char*>(data + 1);
    size_t left = size - 1;
    ControlFramer framer;
    std::string line, seen;
    size_t fed = 0;
    int answered = 0;
    while (left > 0) {
        const size_t n = std::min(chunk, left);
        framer.feed(p, n);
        p += n;
        left -= n;
        fed += n;
        while (framer.next(&line)) {
            if (line.find('\n') != std::string::npos) bug("newline inside a line");
            seen += line + "\n";
            if (answered++ >= kMaxCommands) continue;
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
