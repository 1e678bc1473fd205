// vpiped: the vPipe engine in the driver domain.
#include <signal.h>
#include <sys/stat.h>

#include <cstdio>
#include <iostream>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "config.h"
#include "engine.h"
#include "util/log.h"
#ifdef VPIPE_HAVE_XEN
#include "backend.h"
#endif

static const char* kDescription = R"(NAME
    vpiped - the vPipe engine: moves VMs' file and socket data in the driver domain

SYNOPSIS
    vpiped --config FILE [--xen] [--log-level LEVEL] [--check-config]
    vpiped --xen [--log-level LEVEL]

DESCRIPTION
    Serves the vPipe rings of the VMs named in FILE. For each VM it listens on the VM's own
    channel socket; the guest component (vpipe-guestd or the /dev/vpipe module) hands it a ring
    of requests, each describing bytes to move between the VM's files (extents on the VM's disk
    images, which vpiped opens itself from FILE, never from a path a guest names) and TCP
    connections. Every request is validated against that VM's own disks before any I/O.
    Runs in the foreground until SIGINT or SIGTERM. vpipectl reads its counters through the
    control socket named in FILE.

XEN
    With --xen (or [xen] enabled = true in FILE) vpiped is also the backend of the `vpipe`
    xenbus device (docs/protocol.md section 5). It scans /local/domain at start-up and watches
    @introduceDomain/@releaseDomain; for every guest domain it creates
    /local/domain/<domid>/device/vpipe/0 (the frontend, owned by the guest) and
    /local/domain/0/backend/vpipe/<domid>/0 (backend state InitWait). When the guest's module
    writes ring-ref, event-channel and protocol-version and goes Initialised, vpiped maps the
    ring grant, binds the event channel, goes Connected and serves the ring with the VM's own
    workers. The VM's name, disks (vbd backend params/mode, vdev = devid) and address (vif ip,
    mac, bridge; port vif<domid>.<n>) come from xenstore, not from FILE; [xen] weight/threads
    and [xen.vm.NAME] set its share. A destroyed domain's service is stopped and its backend
    directory removed; on shutdown every device goes to Closed. vpipectl stats shows each
    domain's xenbus states and the handshake counters. Without FILE the engine's defaults are
    used (control socket /run/vpipe/vpiped.ctl).

EXIT STATUS
    0 after a clean shutdown; 1 on a configuration or start-up error (the message says which
    file, key or image).

EXAMPLES
    vpiped --config /run/vpipe-lab/vpiped.toml
    vpiped --xen --log-level debug
    vpiped --config vpiped.toml --check-config
)";

int main(int argc, char** argv) {
    CLI::App app{kDescription, "vpiped"};
    std::string config_path, log_level;
    bool check_only = false, xen = false;
    app.add_option("-c,--config", config_path, "engine configuration (TOML)");
    app.add_flag("--xen", xen, "serve Xen guests (the vpipe xenbus backend; as [xen] enabled = true)");
    app.add_option("--log-level", log_level, "trace|debug|info|warn|error (overrides the file)");
    app.add_flag("--check-config", check_only, "parse FILE, print a summary and exit");
    CLI11_PARSE(app, argc, argv);

    if (config_path.empty() && !xen) {
        std::fprintf(stderr, "vpiped: --config FILE is required (or --xen to serve Xen guests)\n");
        return 1;
    }
    try {
        auto cfg = config_path.empty() ? vpipe::engine::EngineConfig{} : vpipe::engine::load_config(config_path);
        if (xen) cfg.xen.enabled = true;
        if (config_path.empty()) ::mkdir("/run/vpipe", 0755);  // the default control socket's home
        if (!log_level.empty()) cfg.log_level = log_level;
#ifndef VPIPE_HAVE_XEN
        if (cfg.xen.enabled)
            throw std::runtime_error("this vpiped was built without the Xen backend (VPIPE_XEN=OFF)");
#endif
        vpipe::init_logging("vpiped", cfg.log_level);
        if (check_only) {
            std::printf("%s: %zu VM(s)%s\n", config_path.empty() ? "(defaults)" : config_path.c_str(),
                        cfg.vms.size(), cfg.xen.enabled ? ", Xen backend on" : "");
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

        [[maybe_unused]] const auto xen_cfg = cfg.xen;
        vpipe::engine::Engine engine(std::move(cfg));
#ifdef VPIPE_HAVE_XEN
        std::unique_ptr<vpipe::xen::XenBackend> backend;
        if (xen_cfg.enabled) {
            backend = std::make_unique<vpipe::xen::XenBackend>(engine, xen_cfg);
            engine.add_stats_section("xen", [b = backend.get()] { return b->stats(); });
        }
#endif
        engine.start();
#ifdef VPIPE_HAVE_XEN
        if (backend) {
            try {
                backend->start();  // throws without xenstore
            } catch (...) {
                engine.stop();     // its control socket calls into the backend
                throw;
            }
        }
#endif
        for (;;) {
            int sig = 0;
            sigwait(&set, &sig);
            if (sig != SIGPIPE) {
                spdlog::info("signal {}: shutting down", sig);
                break;
            }
        }
#ifdef VPIPE_HAVE_XEN
        if (backend) backend->stop();   // devices Closed before the services go away
#endif
        engine.stop();
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "vpiped: %s\n", e.what());
        return 1;
    }
}
