// vpipectl: talks to a running vpiped over its control socket.
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "util/unix_socket.h"

static const char* kDescription = R"(NAME
    vpipectl - inspect and steer a running vPipe engine (vpiped)

SYNOPSIS
    vpipectl [--control PATH] ping
    vpipectl [--control PATH] stats [--json]

DESCRIPTION
    Connects to vpiped's control socket: --control, else $VPIPE_CONTROL_SOCKET, else
    /run/vpipe/vpiped.ctl, else the lab's /run/vpipe-lab/vpiped.ctl.
    ping   checks that the engine answers.
    stats  per VM: connection, requests (received, rejected, failed, active), operations and
           bytes per operation type, and per disk image the bytes the engine read and wrote;
           plus the buffer pool. --json prints the engine's JSON unchanged.

EXIT STATUS
    0 on success; 1 when the engine cannot be reached or answers with an error; 2 on usage
    errors.

EXAMPLES
    vpipectl stats
    vpipectl --control /run/vpipe-lab/vpiped.ctl stats --json | jq '.vms[0].bytes'
)";

namespace {

std::string default_socket() {
    if (const char* env = std::getenv("VPIPE_CONTROL_SOCKET")) return env;
    if (::access("/run/vpipe/vpiped.ctl", F_OK) == 0) return "/run/vpipe/vpiped.ctl";
    return "/run/vpipe-lab/vpiped.ctl";
}

int call(const std::string& path, const nlohmann::json& req, nlohmann::json* reply) {
    vpipe::UniqueFd fd = vpipe::connect_unix(path);
    if (!fd) {
        std::fprintf(stderr, "vpipectl: cannot reach the engine at %s: %s\n", path.c_str(),
                     std::strerror(errno));
        return 1;
    }
    std::string line = req.dump() + "\n";
    if (vpipe::send_msg_fds(fd.get(), line.data(), line.size(), nullptr, 0) < 0) return 1;
    std::string buf;
    char chunk[65536];
    while (buf.find('\n') == std::string::npos) {
        ssize_t n = ::read(fd.get(), chunk, sizeof(chunk));
        if (n <= 0) {
            std::fprintf(stderr, "vpipectl: the engine closed the connection\n");
            return 1;
        }
        buf.append(chunk, static_cast<size_t>(n));
    }
    *reply = nlohmann::json::parse(buf.substr(0, buf.find('\n')));
    if (!reply->value("ok", false)) {
        std::fprintf(stderr, "vpipectl: %s\n", reply->value("error", "error").c_str());
        return 1;
    }
    return 0;
}

std::string human(uint64_t bytes) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = static_cast<double>(bytes);
    int u = 0;
    while (v >= 1024 && u < 4) v /= 1024, ++u;
    char out[32];
    std::snprintf(out, sizeof(out), u ? "%.1f %s" : "%.0f %s", v, units[u]);
    return out;
}

void print_stats(const nlohmann::json& s) {
    for (const auto& vm : s["vms"]) {
        std::printf("%s (id %u, weight %u, %u threads) %s\n", vm["name"].get<std::string>().c_str(),
                    vm["id"].get<unsigned>(), vm["weight"].get<unsigned>(),
                    vm["threads"].get<unsigned>(),
                    vm["connected"].get<bool>() ? "connected" : "not connected");
        std::printf("  requests %lu  rejected %lu  failed %lu  active %lu\n",
                    vm["requests"].get<unsigned long>(), vm["rejected"].get<unsigned long>(),
                    vm["failed"].get<unsigned long>(), vm["active"].get<unsigned long>());
        for (const auto& [op, n] : vm["ops"].items())
            std::printf("  %-17s %8lu ops  %12s\n", op.c_str(), n.get<unsigned long>(),
                        human(vm["bytes"][op].get<uint64_t>()).c_str());
        for (const auto& d : vm["disks"])
            std::printf("  disk %u %s  read %s  written %s\n", d["vdev"].get<unsigned>(),
                        d["image"].get<std::string>().c_str(),
                        human(d["bytes_read"].get<uint64_t>()).c_str(),
                        human(d["bytes_written"].get<uint64_t>()).c_str());
    }
    const auto& p = s["pool"];
    std::printf("buffer pool: %lu of %lu buffers in use (high water %lu), %s each\n",
                p["in_use"].get<unsigned long>(), p["buffers"].get<unsigned long>(),
                p["high_water"].get<unsigned long>(), human(p["buffer_bytes"].get<uint64_t>()).c_str());
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{kDescription, "vpipectl"};
    app.require_subcommand(1);
    std::string control;
    bool json = false;
    app.add_option("--control", control, "the engine's control socket");
    auto* ping = app.add_subcommand("ping", "check that the engine answers");
    auto* stats = app.add_subcommand("stats", "per-VM counters");
    stats->add_flag("--json", json, "machine-readable output");
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        int r = app.exit(e);
        return r == 0 ? 0 : 2;
    }
    if (control.empty()) control = default_socket();
    try {
        nlohmann::json reply;
        if (ping->parsed()) {
            if (int r = call(control, {{"cmd", "ping"}}, &reply)) return r;
            std::puts("engine is alive");
        } else if (stats->parsed()) {
            if (int r = call(control, {{"cmd", "stats"}}, &reply)) return r;
            if (json)
                std::puts(reply["stats"].dump(2).c_str());
            else
                print_stats(reply["stats"]);
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "vpipectl: bad answer from the engine: %s\n", e.what());
        return 1;
    }
    return 0;
}
