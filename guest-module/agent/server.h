// The agent's application socket: the ioctl ABI of vpipe/abi/ioctl.h carried in messages,
// with the application's descriptors passed as SCM_RIGHTS. One thread per connected client.
#pragma once

#include <atomic>
#include <mutex>
#include <set>
#include <string>

#include "context.h"
#include "util/poll_thread.h"
#include "util/unique_fd.h"

namespace vpipe::agent {

class Server {
public:
    Server(AgentContext& ctx, std::string path);
    ~Server();
    void start();   // binds (throws on failure) and accepts in a thread
    void stop();    // stops accepting; waits for clients to finish their current call

private:
    void accept_loop();
    void serve(UniqueFd conn);

    AgentContext& ctx_;
    std::string path_;
    UniqueFd listen_fd_;
    PollThread acceptor_;          // woken only to stop
    std::mutex mu_;
    std::set<int> client_fds_;     // under mu_: shut down on stop()
    std::atomic<int> clients_{0};
};

}  // namespace vpipe::agent
