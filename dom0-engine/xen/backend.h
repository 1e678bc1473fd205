// The Xen backend of vpiped (docs/protocol.md 5): finds guest domains in xenstore
// (@introduceDomain / @releaseDomain and a scan at start-up), creates both halves of each one's
// `vpipe` device, runs the xenbus handshake with the guest's frontend, learns the VM's disks
// and vifs from the toolstack's nodes, and serves each connected ring through the engine's
// VmService for that VM. One thread; everything from the guest is distrusted.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "config.h"
#include "engine.h"
#include "identity.h"
#include "util/unique_fd.h"

namespace vpipe::xen {

class XsClient;

struct XenCounters {
    uint64_t domains_seen = 0;          // guest domains given a vpipe device
    uint64_t domains_released = 0;      // destroyed while we served them
    uint64_t connects = 0;              // handshakes that reached Connected
    uint64_t disconnects = 0;           // Connected -> not (frontend closed, reset, ring error)
    uint64_t handshake_failures = 0;    // an Initialised frontend we could not connect
    uint64_t bad_version = 0;           //   protocol-version other than ours
    uint64_t bad_keys = 0;              //   ring-ref / event-channel missing or malformed
    uint64_t ring_map_failures = 0;     //   the ring grant could not be mapped
    uint64_t evtchn_failures = 0;       //   the event channel could not be bound
    uint64_t vm_failures = 0;           //   the VM's identity could not be served (e.g. image)
    uint64_t ring_errors = 0;           // channels dropped by the service (req_prod overflow)
    uint64_t xenstore_errors = 0;       // device nodes we could not write
};

class XenBackend {
public:
    XenBackend(engine::Engine& engine, const engine::XenConfig& cfg);
    ~XenBackend();
    XenBackend(const XenBackend&) = delete;
    XenBackend& operator=(const XenBackend&) = delete;

    // Opens xenstore (throws std::runtime_error without one), registers the watches, creates
    // the devices of the domains that exist, and starts the backend thread. Call after
    // Engine::start().
    void start();
    // Drops every channel and writes backend state Closed (6) for every device. Before
    // Engine::stop().
    void stop();

    nlohmann::json stats() const;   // the "xen" section of vpipectl stats

private:
    struct Domain {
        uint32_t domid = 0;
        std::string name;
        int backend_state = kUnknown;   // what we last wrote
        int frontend_state = kUnknown;  // what we last read
        engine::VmService* service = nullptr;  // the engine's VM (nullptr: none yet)
        engine::VmConfig config;        // what the engine's VM was built from
        bool identity_changed = false;  // the toolstack's nodes changed since
        bool connected = false;
        FrontendKeys keys;              // of the current connection
        uint64_t connects = 0, handshake_failures = 0;
        std::string last_error;
    };

    void run();
    void handle_watch(const std::string& path, const std::string& token);
    void scan();
    void add_domain(uint32_t domid);
    void remove_domain(uint32_t domid, const char* why);
    bool write_device_nodes(Domain& d);
    void refresh_identity(Domain& d, bool at_connect);
    bool ensure_vm(Domain& d);
    void frontend_changed(Domain& d);
    void connect(Domain& d);
    void disconnect(Domain& d, const char* why);
    void set_backend_state(Domain& d, int state);
    void handshake_failed(Domain& d, const std::string& why);
    void channel_lost(uint32_t domid);

    engine::Engine& engine_;
    engine::XenConfig cfg_;
    std::unique_ptr<XsClient> xs_;
    mutable std::mutex mu_;                     // domains_, counters_ (thread + stats readers)
    std::map<uint32_t, Domain> domains_;
    XenCounters counters_;
    UniqueFd wake_fd_;
    std::mutex lost_mu_;
    std::vector<uint32_t> lost_;                // domains whose service dropped its channel
    std::atomic<bool> stopping_{false};
    std::thread thread_;
};

}  // namespace vpipe::xen
