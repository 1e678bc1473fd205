// The engine's local control socket: one JSON object per line in, one per line out.
//   {"cmd":"ping"}  -> {"ok":true}
//   {"cmd":"stats"} -> {"ok":true,"stats":{...}}
//   {"cmd":"remove-vm","vm":NAME|ID} -> {"ok":true,"vm":..,"id":..,"released":bool} (the VM is gone)
// Unknown commands get {"ok":false,"error":"..."}. Only root (or the socket's group) can
// connect: the socket file is created 0660.
#pragma once

#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "util/poll_thread.h"
#include "util/unique_fd.h"

namespace vpipe::engine {

// The control protocol's line framing, apart from any socket (fuzzed: tests/fuzz/fuzz_control).
// Bytes go in as they arrive; complete lines ('\n'-terminated, the '\n' dropped) come out.
// A line may hold any bytes (not UTF-8, NUL): that is the parser's business, not the framer's.
class ControlFramer {
public:
    static constexpr size_t kMaxLine = 65536;   // a longer line (or no '\n' within it): overflow
    void feed(const char* data, size_t n) { buf_.append(data, n); }
    // The next complete line into *line: true; false when none is complete yet.
    bool next(std::string* line);
    // The peer sent kMaxLine bytes or more without ending a line: drop the connection.
    bool overflow() const { return buf_.size() - pos_ >= kMaxLine; }

private:
    std::string buf_;
    size_t pos_ = 0;   // start of the unconsumed bytes in buf_
};

// One request line in, one reply line out ('\n'-terminated). Never throws: a line that is not
// a JSON object, a handler that throws, and anything in the reply that is not valid UTF-8 (a
// parse error quoting the client's bytes) all become {"ok":false,"error":...} with the bad
// bytes replaced by U+FFFD.
std::string control_reply(const std::function<nlohmann::json(const nlohmann::json&)>& handler,
                          const std::string& line);

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
