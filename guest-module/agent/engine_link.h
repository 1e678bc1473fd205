// The agent's transport to dom0 (the shm transport, vpipe/abi/shm.h): connects and reconnects
// after an engine restart, and carries requests over the ring with the guest core's ring logic
// (guest-module/core: ring.c for slots and untrusted responses, link.c for the area's pages) --
// the same code the kernel module's Xen frontend runs. What is the agent's own: the memfd area,
// eventfd kicks, a thread that reaps responses, and a mutex + condition variable for callers
// waiting for pages, a ring slot or their answer.
//
// The engine must answer within request_timeout_ms (guest-module/core/watch.h, the rule vpipe.ko
// applies too): the reaper thread wakes every quarter of it while requests are in flight, posts a
// NOP after half of it without any answer, and declares the engine unresponsive when the core's
// rule says so, or when a request of a caller that is gone is not answered within it. Then the
// channel is dropped as after a protocol break (every request in flight fails with -ECANCELED,
// socket endpoints dom0 had not handed back count as taken) and connected again.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "link.h"
#include "watch.h"
#include "util/poll_thread.h"

namespace vpipe::agent {

class EngineLink {
public:
    // area_pages: pages of the shared descriptor area (every request's area comes from it)
    // request_timeout_ms: clamped to 100..3600000 (vpipe_watch_clamp_ms)
    EngineLink(std::string channel_path, uint32_t area_pages,
               uint32_t request_timeout_ms = VPIPE_REQUEST_TIMEOUT_MS_DEFAULT);
    ~EngineLink();
    EngineLink(const EngineLink&) = delete;
    EngineLink& operator=(const EngineLink&) = delete;

    void start();   // connects in the background, retrying while dom0 is away
    void stop();
    bool connected() const { return connected_; }
    // Waits up to `ms` for a connection. True when connected.
    bool wait_connected(int ms);

    struct Ticket;
    // Posts one request: waits for area pages and a ring slot. -EHOSTDOWN without an engine,
    // -E2BIG when the request's area exceeds the whole descriptor area.
    int submit(const vpipe_submit& s, std::shared_ptr<Ticket>* out);
    // dom0's answer: 0 or -errno, *moved <= length. -ECANCELED when the channel died with the
    // request in flight (or dom0 broke the ring protocol, or did not answer in time: then the
    // channel is dropped). `gone` (may be null): the caller is gone; from the moment it turns
    // true (wake_waiters() after it) *killed is set and the answer is awaited request_timeout_ms
    // at most -- then the engine is declared unresponsive, which ends the request.
    int wait(const std::shared_ptr<Ticket>& t, uint64_t* moved, const std::atomic<bool>* gone = nullptr,
             int* killed = nullptr);
    // Wakes the callers waiting in wait() (a `gone` flag changed).
    void wake_waiters();
    // After wait(): bytes of the request's area (results dom0 wrote). -EIO when the channel
    // the request went out on is gone.
    int readback(const std::shared_ptr<Ticket>& t, uint64_t off, void* buf, uint64_t len);
    // While dom0 works on the request: stores the aligned 64-bit word at `off` of its area with
    // release ordering (a live field dom0 re-reads: the preparing watermark).
    int publish(const std::shared_ptr<Ticket>& t, uint64_t off, uint64_t value);
    // Gives the request's pages back (the ticket is done).
    void release(const std::shared_ptr<Ticket>& t);

    uint64_t requests_sent() const { return requests_sent_; }
    uint64_t bad_responses() const { return bad_responses_; }
    // times the engine was declared unresponsive
    uint64_t engine_timeouts() const { return engine_timeouts_; }

private:
    struct Conn;
    void run();
    void reap(const std::shared_ptr<Conn>& c);
    // hung: the engine was declared unresponsive (the requests' headers are kept as lost)
    void drop(const char* why, bool hung = false);
    void declare_hung(const std::shared_ptr<Conn>& c, const char* why);
    void watch(const std::shared_ptr<Conn>& c);
    static void on_done(void* arg, void* owner, int status, uint64_t moved);

    std::string path_;
    uint32_t area_pages_;
    uint32_t timeout_ms_;
    std::mutex mu_;
    std::condition_variable cv_;          // pages, ring slots, answers, connection changes
    std::shared_ptr<Conn> conn_;          // under mu_
    std::atomic<bool> connected_{false};
    std::atomic<uint64_t> requests_sent_{0};
    std::atomic<uint64_t> bad_responses_{0};
    std::atomic<uint64_t> engine_timeouts_{0};
    PollThread thread_;                   // woken only to stop; stopping() read by callers too
};

}  // namespace vpipe::agent
