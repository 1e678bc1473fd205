// HTTP/1 framing for vPipe mode's http framing: enough of each message head to know where its
// body ends, and which responses answer a HEAD (they have no body).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>

namespace vpipe::proxy {

// A head may not grow beyond this; a longer one is not followed (the relay turns opaque).
constexpr size_t kMaxFramedHead = 65536;

struct MessageHead {
    int status = 0;        // responses
    std::string method;    // requests
    int64_t length = -1;   // Content-Length; -1: none
    bool chunked = false;  // a Transfer-Encoding came
};

// Parses a complete head (ending in CRLFCRLF). false: not HTTP/1, or a bad Content-Length.
bool parse_message_head(const std::string& h, bool response, MessageHead* m);

// Follows the requests the client sends (they are relayed as they come) to pair each response
// with its request.
class RequestFollower {
public:
    // Follows n more bytes of the request stream. false: not plain HTTP/1 (a chunked or
    // malformed request, a huge head): the connection is relayed without framing from now on.
    bool follow(const char* p, size_t n);
    // A request is waiting for its response.
    bool waiting() const { return !head_.empty(); }
    // A response with `status` came: was its request a HEAD? (A final status ends the request.)
    bool answer(int status);

private:
    bool in_body_ = false;
    uint64_t body_left_ = 0;   // in_body_: bytes of the request body still to come
    std::string head_buf_;     // the request head so far
    std::deque<bool> head_;    // per request sent and not yet answered: was it HEAD?
};

}  // namespace vpipe::proxy
