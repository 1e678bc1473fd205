// The guest end of the ring to dom0: connects (and reconnects after an engine restart),
// places descriptor streams in descriptor pages, posts requests and matches responses.
// Many application operations share it; each call blocks its caller until dom0 answers.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "transport/shm_channel.h"
#include "util/unique_fd.h"

namespace vpipe::agent {

class EngineLink {
public:
    EngineLink(std::string channel_path, uint32_t desc_pages);
    ~EngineLink();
    EngineLink(const EngineLink&) = delete;
    EngineLink& operator=(const EngineLink&) = delete;

    void start();   // connects in the background, retrying while dom0 is away
    void stop();
    bool connected() const { return connected_; }
    // Waits up to `ms` for a connection. True when connected.
    bool wait_connected(int ms);

    // One asynchronous request. `desc` is the descriptor stream (<= VPIPE_DESC_MAX_BYTES).
    struct Ticket;
    // -EHOSTDOWN when no engine is connected; blocks while the ring or the descriptor pages
    // are full.
    // `pages`: how many descriptor pages the request names (0: as many as `desc` needs; more
    // gives dom0 room to write results). `readback`: if not empty (at least pages * 4096
    // bytes, alive until wait() returned), the request's pages are copied into it when the
    // response arrives, before they are reused -- dom0's results for socket endpoints.
    int submit(uint8_t op, uint64_t length, std::span<const uint8_t> desc,
               std::shared_ptr<Ticket>* out, uint32_t pages = 0, std::span<uint8_t> readback = {});
    // Waits for the answer: 0 or -errno; *moved <= length. -ECANCELED when the channel died
    // with the request in flight.
    int wait(const std::shared_ptr<Ticket>& t, uint64_t* moved);

    // Convenience: submit + wait.
    int call(uint8_t op, uint64_t length, std::span<const uint8_t> desc, uint64_t* moved);

    uint64_t requests_sent() const { return requests_sent_; }

private:
    struct Conn;
    void run();
    void reap(Conn& c);
    void drop(const char* why);

    std::string path_;
    uint32_t desc_pages_;
    std::mutex mu_;
    std::condition_variable cv_;          // ring/page space, connection changes
    std::shared_ptr<Conn> conn_;          // under mu_
    uint64_t next_id_ = 1;                // under mu_
    std::atomic<bool> connected_{false};
    std::atomic<bool> stopping_{false};
    std::atomic<uint64_t> requests_sent_{0};
    UniqueFd wake_fd_;
    std::thread thread_;
};

}  // namespace vpipe::agent
