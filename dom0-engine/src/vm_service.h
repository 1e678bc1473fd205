// Serves one VM's ring, copies and validates its requests, hands them to the VM's workers, and
// posts responses. One thread per VM. The ring comes either from the VM's own channel socket
// (shm transport: the socket a guest reached is what identifies it) or, for a VM without a
// channel socket, from whoever attach()es one (the Xen backend, after the xenbus handshake).
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "host_channel.h"
#include "io/page_pool.h"
#include "peer_policy.h"
#include "util/poll_thread.h"
#include "util/unique_fd.h"
#include "vm.h"

namespace vpipe::engine {

class VmService {
public:
    // `policy`: who shadow sockets may talk to (nullptr: no peer policy, unit tests only).
    VmService(Vm& vm, PagePool& pool, ShadowSockets* sockets = nullptr,
              const PeerPolicy* policy = nullptr);
    ~VmService();
    VmService(const VmService&) = delete;
    VmService& operator=(const VmService&) = delete;

    // Called on the service thread when the service drops a channel on its own (a malformed
    // ring, the guest closed its control socket); not for detach() or stop(). Set before start.
    using LostHandler = std::function<void(const char* why)>;
    void set_on_channel_lost(LostHandler h) { on_lost_ = std::move(h); }

    void start();   // binds the channel socket if the VM has one (throws on failure), starts the thread
    void stop();    // closes the channel; in-flight responses are dropped

    // Serve `ch` from now on (replacing any channel). Thread-safe.
    void attach(std::unique_ptr<HostChannel> ch);
    // Drop the channel: returns once the service thread let go of it (workers still running an
    // operation keep the channel object alive until they end; their responses are dropped and
    // queued operations for it are skipped). Thread-safe; no-op without a channel.
    void detach(const char* why);

private:
    struct Channel;

    void run();
    void accept_one();
    void install(std::unique_ptr<HostChannel> ch);
    void close_channel(const char* why);
    void drain_requests();
    void handle(const vpipe_request& req);
    void respond(const std::shared_ptr<Channel>& ch, uint64_t id, int status, uint64_t moved);

    Vm& vm_;
    PagePool& pool_;
    ShadowSockets* sockets_;
    const PeerPolicy* policy_;
    LostHandler on_lost_;
    UniqueFd listen_fd_;
    std::shared_ptr<Channel> channel_; // touched by the service thread only
    PollThread thread_;                // woken by stop requests, attach/detach, "response slots freed"

    // attach()/detach() hand-over to the service thread
    std::mutex handoff_mu_;
    std::condition_variable handoff_cv_;
    struct Handoff {
        std::unique_ptr<HostChannel> attach;   // nullptr: a detach
        const char* why = nullptr;
    };
    std::vector<Handoff> handoffs_;            // in call order
    uint64_t handoffs_queued_ = 0, handoffs_done_ = 0;
    void run_handoffs();
};

}  // namespace vpipe::engine
