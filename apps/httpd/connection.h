// One client connection of vpipe-httpd: read a request head, answer it (GET/HEAD, PUT or an
// error), and go on while the connection persists; then close without losing what is in flight.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "body_io.h"
#include "request.h"

namespace vpipe::httpd {

class Connection {
public:
    Connection(int fd, std::string peer) : fd_(fd), peer_(std::move(peer)) {}
    void serve();

private:
    int fd_;
    std::string peer_;
    std::string buf_;     // bytes received but not yet consumed
    size_t head_len_ = 0;
    std::chrono::steady_clock::time_point t0_;
    BodyBuffers bufs_;

    enum class Head { Ready, Closed, TooLarge };
    Head read_head();
    bool handle();  // false: close the connection
    bool get(const Request& rq, const std::string& rel, bool keep);
    bool put(const Request& rq, const std::string& rel, uint64_t len, bool keep);
    bool refuse_put(const Request& rq, int status, uint64_t len, bool keep);
    bool discard(uint64_t len);

    // A short answer and its log line; returns !close (whether the connection goes on).
    bool answer(const Request& rq, int status, bool close, const char* extra = nullptr);
    void log(const Request& rq, int status, uint64_t bytes, const std::string& vp);
    void linger_close();
};

}  // namespace vpipe::httpd
