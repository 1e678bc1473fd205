// vpiped: the vPipe engine in the driver domain.
#include <signal.h>

#include <cstdio>
#include <iostream>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "config.h"
#include "engine.h"
#include "util/log.h"

static const char* kDescription = R"(NAME
    vpiped - the vPipe engine: moves VMs' file and socket data in the driver domain

SYNOPSIS
    vpiped --config FILE [--log-level LEVEL] [--check-config]

DESCRIPTION
    Serves the vPipe rings of the VMs named in FILE. For each VM it listens on the VM's own
    channel socket; the guest component (vpipe-guestd or the /dev/vpipe module) hands it a ring
    of requests, each describing bytes to move between the VM's files (extents on the VM's disk
    images, which vpiped opens itself from FILE, never from a path a guest names) and TCP
    connections. Every request is validated against that VM's own disks before any I/O.
    Runs in the foreground until SIGINT or SIGTERM. vpipectl reads its counters through the
    control socket named in FILE.

EXIT STATUS
    0 after a clean shutdown; 1 on a configuration or start-up error (the message says which
    file, key or image).

EXAMPLES
    vpiped --config /run/vpipe-lab/vpiped.toml
    vpiped --config vpiped.toml --check-config
)";

int main(int argc, char** argv) {
    CLI::App app{kDescription, "vpiped"};
    std::string config_path, log_level;
    bool check_only = false;
    app.add_option("-c,--config", config_path, "engine configuration (TOML)")->required();
    app.add_option("--log-level", log_level, "trace|debug|info|warn|error (overrides the file)");
    app.add_flag("--check-config", check_only, "parse FILE, print a summary and exit");
    CLI11_PARSE(app, argc, argv);

    try {
        auto cfg = vpipe::engine::load_config(config_path);
        if (!log_level.empty()) cfg.log_level = log_level;
        vpipe::init_logging("vpiped", cfg.log_level);
        if (check_only) {
            std::printf("%s: %zu VM(s)\n", config_path.c_str(), cfg.vms.size());
            for (const auto& vm : cfg.vms)
                std::printf("  %s id=%u weight=%u threads=%u disks=%zu\n", vm.name.c_str(), vm.id,
                            vm.weight, vm.threads, vm.disks.size());
            return 0;
        }
        // Signals are taken synchronously by this thread; every other thread blocks them.
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGINT);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGPIPE);
        pthread_sigmask(SIG_BLOCK, &set, nullptr);

        vpipe::engine::Engine engine(std::move(cfg));
        engine.start();
        for (;;) {
            int sig = 0;
            sigwait(&set, &sig);
            if (sig != SIGPIPE) {
                spdlog::info("signal {}: shutting down", sig);
                break;
            }
        }
        engine.stop();
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "vpiped: %s\n", e.what());
        return 1;
    }
}
