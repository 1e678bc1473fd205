// The engine's local control socket: one JSON object per line in, one per line out.
//   {"cmd":"ping"}  -> {"ok":true}
//   {"cmd":"stats"} -> {"ok":true,"stats":{...}}
// Unknown commands get {"ok":false,"error":"..."}. Only root (or the socket's group) can
// connect: the socket file is created 0660.
#pragma once

#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "util/poll_thread.h"
#include "util/unique_fd.h"

namespace vpipe::engine {

class ControlServer {
public:
    using Handler = std::function<nlohmann::json(const nlohmann::json& request)>;

    ControlServer(std::string path, Handler handler);
    ~ControlServer();
    void start();
    void stop();

private:
    void run();
    void serve(int conn);

    std::string path_;
    Handler handler_;
    UniqueFd listen_fd_;
    PollThread thread_;   // woken only to stop
};

}  // namespace vpipe::engine
