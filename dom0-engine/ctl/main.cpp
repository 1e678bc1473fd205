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
    vpipectl [--control PATH] set-weight VM WEIGHT
    vpipectl [--control PATH] calibration [--json]
    vpipectl [--control PATH] remove-vm VM

DESCRIPTION
    Connects to vpiped's control socket: --control, else $VPIPE_CONTROL_SOCKET, else
    /run/vpipe/vpiped.ctl, else the lab's /run/vpipe-lab/vpiped.ctl.
    ping   checks that the engine answers.
    stats  per VM: connection, requests (received, rejected, failed, active), operations and
           bytes per operation type, and per disk image how the engine reads it (host: through
           dom0's page cache; direct: O_DIRECT) and the bytes it read and wrote;
           plus the buffer pool; and the sharing of dom0: the fairness mode, tick, total credit
           rate (and where it came from), and per VM its live weight, credit (bytes; negative
           = debt), bytes charged, waits for credit, bytes admitted uncapped while it was the only
           VM asking (work-conserving mode: the link or disk paces a lone VM, not the credit
           rate), and whether it is active (asked for credit in the last tick). With the Xen backend (vpiped --xen): per guest domain its xenbus
           states (backend/frontend), ring-ref and event channel when connected, connects and
           refused handshakes with the last error; and the backend's counters (domains seen and
           released, connects, disconnects, handshake failures by cause: bad_version, bad_keys,
           ring_map_failures, evtchn_failures, vm_failures; ring_errors = rings dropped for a
           req_prod overflow). Per VM, bad_pages counts descriptor pages that could not be
           copied (an ungranted reference on Xen). --json prints the engine's JSON unchanged.
    set-weight
           sets VM's (name or numeric id) weight to WEIGHT (1..10000), live: it takes effect at
           the engine's next credit tick. Not persisted: the configuration file's weight is
           used again after a restart.
    calibration
           what the start-up calibration measured (O_DIRECT reads of the first VM disk image,
           memory copy) and the total credit rate in use (calibrated, or total_rate_mbps from
           the configuration).
    remove-vm
           the VM (name or numeric id) is gone (destroyed): the engine releases all it holds for
           it, as the Xen backend does when xenstore reports a destroyed domain: its channel is
           dropped (answers to in-flight requests go nowhere), operations waiting on a socket
           are cancelled (shadow sockets reset, steering entries removed), its credit share goes
           to the others, its workers end and its disk images close. Returns once they did (at
           most 60 s; "not released in time" otherwise). The VM's name and id cannot be served
           again until the engine restarts. `vpipe-lab remove-vm` calls it.
    The same numbers are served in Prometheus text format on the engine's metrics_listen
    address (default 127.0.0.1:9477): curl http://127.0.0.1:9477/metrics

EXIT STATUS
    0 on success; 1 when the engine cannot be reached or answers with an error (e.g. an
    unknown VM or a weight out of range); 2 on usage errors.

EXAMPLES
    vpipectl stats
    vpipectl set-weight vm3 2
    vpipectl calibration
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
        std::printf("%s (id %u, weight %u, %u threads) %s%s\n", vm["name"].get<std::string>().c_str(),
                    vm["id"].get<unsigned>(), vm["weight"].get<unsigned>(),
                    vm["threads"].get<unsigned>(),
                    vm["connected"].get<bool>() ? "connected" : "not connected",
                    vm.value("transport", "shm") == "xen" ? " (xen)" : "");
        std::printf("  requests %lu  rejected %lu  failed %lu  active %lu\n",
                    vm["requests"].get<unsigned long>(), vm["rejected"].get<unsigned long>(),
                    vm["failed"].get<unsigned long>(), vm["active"].get<unsigned long>());
        if (vm.value("bad_pages", 0ul) || vm.value("ring_overflows", 0ul) || vm.value("cancelled", 0ul))
            std::printf("  bad descriptor pages %lu  ring overflows %lu  cancelled %lu\n",
                        vm.value("bad_pages", 0ul), vm.value("ring_overflows", 0ul), vm.value("cancelled", 0ul));
        if (vm.contains("credits")) {
            const auto& c = vm["credits"];
            const int64_t credit = c["credit"].get<int64_t>();
            std::printf("  credits: weight %u  credit %s%s  charged %s  waits %lu  sole %s  %s\n",
                        c["weight"].get<unsigned>(), credit < 0 ? "-" : "",
                        human(static_cast<uint64_t>(credit < 0 ? -credit : credit)).c_str(),
                        human(c["charged"].get<uint64_t>()).c_str(), c["waits"].get<unsigned long>(),
                        human(c.value("sole", 0ul)).c_str(), c["active"].get<bool>() ? "active" : "idle");
        }
        for (const auto& [op, n] : vm["ops"].items())
            std::printf("  %-17s %8lu ops  %12s\n", op.c_str(), n.get<unsigned long>(),
                        human(vm["bytes"][op].get<uint64_t>()).c_str());
        for (const auto& d : vm["disks"])
            std::printf("  disk %u %s (%s)  read %s  written %s\n", d["vdev"].get<unsigned>(),
                        d["image"].get<std::string>().c_str(), d.value("cache", "direct").c_str(),
                        human(d["bytes_read"].get<uint64_t>()).c_str(),
                        human(d["bytes_written"].get<uint64_t>()).c_str());
    }
    if (s.contains("xen")) {
        const auto& x = s["xen"];
        for (const auto& d : x["domains"]) {
            std::printf("xen domain %u %s: backend %s, frontend %s%s, %lu connects, %lu refused handshakes%s%s\n",
                        d["domid"].get<unsigned>(), d["name"].get<std::string>().c_str(),
                        d["backend_state"].get<std::string>().c_str(),
                        d["frontend_state"].get<std::string>().c_str(),
                        d["connected"].get<bool>()
                            ? (", ring-ref " + std::to_string(d["ring_ref"].get<unsigned>()) + " event-channel " +
                               std::to_string(d["event_channel"].get<unsigned>())).c_str()
                            : "",
                        d["connects"].get<unsigned long>(), d["handshake_failures"].get<unsigned long>(),
                        d["last_error"].get<std::string>().empty() ? "" : "; last error: ",
                        d["last_error"].get<std::string>().c_str());
        }
        std::printf("xen:");
        for (const auto& [k, v] : x["counters"].items()) std::printf(" %s %lu", k.c_str(), v.get<unsigned long>());
        std::printf("\n");
    }
    if (s.contains("fairness")) {
        const auto& f = s["fairness"];
        std::printf("fairness: %s, tick %u ms, total rate %s/s (%.0f Mbit/s, from %s), file -> file %s/s (from %s)\n",
                    f["mode"].get<std::string>().c_str(), f["tick_ms"].get<unsigned>(),
                    human(f["total_rate"].get<uint64_t>()).c_str(), f["total_rate"].get<double>() * 8 / 1e6,
                    f["total_rate_source"].get<std::string>().c_str(),
                    human(f.value("disk_rate", uint64_t{0})).c_str(), f.value("disk_rate_source", std::string("-")).c_str());
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
    std::string sw_vm;
    long sw_weight = 0;
    auto* set_weight = app.add_subcommand("set-weight", "change a VM's weight (live, from the next tick)");
    set_weight->add_option("VM", sw_vm, "VM name or numeric id")->required();
    set_weight->add_option("WEIGHT", sw_weight, "1..10000")->required();
    std::string rm_vm;
    auto* remove_vm = app.add_subcommand("remove-vm", "the VM is gone: release everything the engine holds for it");
    remove_vm->add_option("VM", rm_vm, "VM name or numeric id")->required();
    auto* calibration = app.add_subcommand("calibration", "start-up calibration and the total credit rate");
    calibration->add_flag("--json", json, "machine-readable output");
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
        } else if (set_weight->parsed()) {
            if (sw_weight < 1 || sw_weight > 10000) {
                std::fprintf(stderr, "vpipectl: WEIGHT must be 1..10000\n");
                return 2;
            }
            nlohmann::json vm = sw_vm;
            if (!sw_vm.empty() && sw_vm.find_first_not_of("0123456789") == std::string::npos)
                vm = std::stoul(sw_vm);
            if (int r = call(control, {{"cmd", "set-weight"}, {"vm", vm}, {"weight", sw_weight}}, &reply)) return r;
            std::printf("%s: weight %ld (was %u), from the next tick\n", reply["vm"].get<std::string>().c_str(),
                        sw_weight, reply["previous"].get<unsigned>());
        } else if (remove_vm->parsed()) {
            nlohmann::json vm = rm_vm;
            if (!rm_vm.empty() && rm_vm.find_first_not_of("0123456789") == std::string::npos) vm = std::stoul(rm_vm);
            if (int r = call(control, {{"cmd", "remove-vm"}, {"vm", vm}}, &reply)) return r;
            if (!reply.value("released", false)) {
                std::fprintf(stderr, "vpipectl: %s removed, but its workers did not end within 60 s\n",
                             reply.value("vm", rm_vm).c_str());
                return 1;
            }
            std::printf("%s (id %u) removed: workers ended, disks closed\n", reply["vm"].get<std::string>().c_str(),
                        reply["id"].get<unsigned>());
        } else if (calibration->parsed()) {
            if (int r = call(control, {{"cmd", "calibration"}}, &reply)) return r;
            if (json) {
                reply.erase("ok");
                std::puts(reply.dump(2).c_str());
            } else {
                const auto& c = reply["calibration"];
                std::printf("disk:   %s/s  (O_DIRECT reads of %s)%s\n",
                            human(c["disk_bytes_per_second"].get<uint64_t>()).c_str(),
                            c["disk"].get<std::string>().empty() ? "-" : c["disk"].get<std::string>().c_str(),
                            c.contains("error") ? (" [" + c["error"].get<std::string>() + "]").c_str() : "");
                std::printf("memory: %s/s  (memcpy)\n", human(c["memory_bytes_per_second"].get<uint64_t>()).c_str());
                std::printf("measured (min): %s/s in %.2f s\n",
                            human(c["measured_bytes_per_second"].get<uint64_t>()).c_str(), c["seconds"].get<double>());
                std::printf("total credit rate in use: %s/s (%.0f Mbit/s, from %s)\n",
                            human(reply["total_rate"].get<uint64_t>()).c_str(),
                            reply["total_rate"].get<double>() * 8 / 1e6,
                            reply["total_rate_source"].get<std::string>().c_str());
                std::printf("file -> file credit rate: %s/s (from %s)\n",
                            human(reply.value("disk_rate", uint64_t{0})).c_str(),
                            reply.value("disk_rate_source", std::string("-")).c_str());
            }
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "vpipectl: bad answer from the engine: %s\n", e.what());
        return 1;
    }
    return 0;
}
