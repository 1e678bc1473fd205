// Serves one VM's ring: accepts its guest component on the VM's own channel socket (the socket
// a guest reached is what identifies it), copies and validates requests, hands them to the VM's
// workers, and posts responses. One thread per VM.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <thread>

#include "io/page_pool.h"
#include "transport/shm_channel.h"
#include "util/unique_fd.h"
#include "vm.h"

namespace vpipe::engine {

class VmService {
public:
    VmService(Vm& vm, PagePool& pool, SocketEngine* sockets = nullptr);
    ~VmService();
    VmService(const VmService&) = delete;
    VmService& operator=(const VmService&) = delete;

    void start();   // binds the channel socket (throws on failure) and starts the thread
    void stop();    // closes the channel; in-flight responses are dropped

private:
    struct Channel;

    void run();
    void accept_one();
    void close_channel(const char* why);
    void drain_requests();
    void handle(const vpipe_request& req);
    void respond(const std::shared_ptr<Channel>& ch, uint64_t id, int status, uint64_t moved);

    Vm& vm_;
    PagePool& pool_;
    SocketEngine* sockets_;
    UniqueFd listen_fd_;
    UniqueFd wake_fd_;                 // stop requests and "response slots freed" wake-ups
    std::shared_ptr<Channel> channel_; // touched by the service thread only
    std::atomic<bool> stopping_{false};
    std::thread thread_;
};

}  // namespace vpipe::engine
