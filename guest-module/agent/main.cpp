// vpipe-guestd: the guest component of vPipe as a userspace agent.
#include <signal.h>

#include <cstdio>
#include <cstring>
#include <stdexcept>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "config.h"
#include "engine_link.h"
#include "context.h"
#include "files/disk_table.h"
#include "files/file_hold.h"
#include "guest_flow_block.h"
#include "server.h"
#include "util/log.h"

static const char* kDescription = R"(NAME
    vpipe-guestd - the vPipe guest component, as a userspace agent

SYNOPSIS
    vpipe-guestd --config FILE [--log-level LEVEL] [--request-timeout-ms MS]

DESCRIPTION
    Runs inside a VM where the /dev/vpipe kernel module is not loaded. Applications (through
    libvpipe) connect to its unix socket and pass the descriptors of an operation. For files it
    flushes the range, holds the file against truncation and writes, maps the range to extents
    on the VM's virtual disk (FIEMAP), allocates destination blocks, and asks dom0 over the ring
    to move the bytes; afterwards it drops stale cached pages and sets the file size. It needs
    root (CAP_SYS_ADMIN for FIEMAP on others' files, CAP_LINUX_IMMUTABLE for holds).
    FILE names the VM's disks (vdev and block device), the socket to listen on and dom0's
    channel. It reconnects when the engine restarts.

    The engine must answer within request_timeout_ms (FILE's [agent] request_timeout_ms, or
    --request-timeout-ms; default 60000, 100..3600000, as vpipe.ko's module parameter): after
    half of it without any answer the agent posts a NOP; no answer at all, no file -> file
    answer, or no answer to a request of a caller that is gone for that long declares the engine
    unresponsive: the channel is dropped and connected again, operations in flight fail as for an
    engine death (file -> file: a short count or ECANCELED; sockets: ECONNABORTED, reset), counted
    in VPIPE_IOC_STATS.engine_timeouts. Each is marked abandoned in its descriptor header first,
    so an engine that was only stopped writes nothing more of it when it runs again. An application whose connection closes (killed) has its
    operation stopped at the next safe point.

EXIT STATUS
    0 after SIGINT/SIGTERM; 1 on a configuration or start-up error.

EXAMPLES
    vpipe-guestd --config /run/vpipe-lab/vm1/agent.toml
)";

int main(int argc, char** argv) {
    CLI::App app{kDescription, "vpipe-guestd"};
    std::string config_path, log_level;
    uint32_t request_timeout_ms = 0;
    app.add_option("-c,--config", config_path, "agent configuration (TOML)")->required();
    app.add_option("--log-level", log_level, "trace|debug|info|warn|error");
    app.add_option("--request-timeout-ms", request_timeout_ms,
                   "the engine is declared unresponsive after this long without an answer (overrides the file)")
        ->check(CLI::Range(100u, 3600000u));
    CLI11_PARSE(app, argc, argv);
    try {
        auto cfg = vpipe::agent::load_agent_config(config_path);
        if (!log_level.empty()) cfg.log_level = log_level;
        if (request_timeout_ms) cfg.request_timeout_ms = request_timeout_ms;
        vpipe::init_logging("vpipe-guestd", cfg.log_level);

        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGINT);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGPIPE);
        pthread_sigmask(SIG_BLOCK, &set, nullptr);

        vpipe::agent::FileHold::set_state_dir(cfg.state_dir);
        vpipe::agent::FileHold::recover();
        vpipe::agent::DiskTable disks;
        for (const auto& d : cfg.disks) {
            if (int r = disks.add(d.vdev, d.device); r < 0)
                throw std::runtime_error("disk " + d.device + ": " + std::strerror(-r));
        }
        vpipe::agent::EngineLink link(cfg.engine_channel, cfg.area_pages, cfg.request_timeout_ms);
        vpipe::agent::AgentStats stats;
        vpipe::agent::AgentContext ctx{cfg, disks, link, stats};
        link.start();
        // a crashed agent's flow block would keep its flows blocked until the first socket
        // offload created the table again
        vpipe::agent::GuestFlowBlock::remove_leftover();
        vpipe::agent::Server server(ctx, cfg.listen);
        server.start();
        spdlog::info("vm {}: serving {} with {} disk(s)", cfg.vm, cfg.listen, cfg.disks.size());
        for (;;) {
            int sig = 0;
            sigwait(&set, &sig);
            if (sig != SIGPIPE) break;
        }
        server.stop();
        link.stop();
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "vpipe-guestd: %s\n", e.what());
        return 1;
    }
}
