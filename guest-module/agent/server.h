// The agent's application socket: the ioctl ABI of vpipe/abi/ioctl.h carried in messages,
// with the application's descriptors passed as SCM_RIGHTS. One thread per connected client, and
// one per asynchronous operation in flight (VPIPE_AGENT_SUBMIT), which answers on the client's
// connection when it completes.
#pragma once

#include <atomic>
#include <memory>
#include <vector>

#include <vpipe/abi/ioctl.h>
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

    struct Conn;   // a client connection: its send lock and asynchronous operations

private:
    void accept_loop();
    void serve(UniqueFd conn);
    void run_async(std::shared_ptr<Conn> c, uint64_t tag, vpipe_ioc_op op, std::vector<uint8_t> hdtr,
                   std::vector<UniqueFd> fds);

    AgentContext& ctx_;
    std::string path_;
    UniqueFd listen_fd_;
    PollThread acceptor_;          // woken only to stop
    std::mutex mu_;
    std::set<int> client_fds_;     // under mu_: shut down on stop()
    std::atomic<int> clients_{0};
};

}  // namespace vpipe::agent
