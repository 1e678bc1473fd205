// The vPipe calls of the test servers: the outcome of a body's calls for the log line, and a
// response head handed over together with the data (the _hdtr calls of vpipe.h), looping on
// short counts.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include <vpipe/vpipe.h>

namespace vpipe::apps {

// What the vPipe calls of one body or direction did, for the log's vpipe= field.
class VpipeTally {
public:
    // Accounts a call that returned n (errno and vpipe_last_result() as the call left them) and
    // returns that result. A call that moved nothing (0) counts as neither path.
    vpipe_result add(ssize_t n);

    bool failed() const { return failed_; }
    // "ERROR: REASON" of the failed call.
    std::string failure() const;
    // offloaded, fallback(REASON), mixed(offloaded=X guest=Y: REASON), failed(ERROR: REASON),
    // or - when vPipe was not called.
    std::string text() const;

private:
    bool used_ = false, failed_ = false;
    int error_ = 0;
    uint64_t offloaded_ = 0, guest_ = 0, ops_offloaded_ = 0, ops_fallback_ = 0;
    std::string reason_;
};

// One _hdtr call bound to its descriptors: `done` data bytes have moved so far, up to `left` more
// are asked for, `hdtr` carries what is left of the head (nullptr: nothing). Returns like the
// _hdtr calls (head + data + tail bytes, or -1).
using HdtrCall = std::function<ssize_t(uint64_t done, uint64_t left, const vpipe_hdtr* hdtr)>;

// How far a head + data transfer got.
struct HdtrProgress {
    uint64_t head = 0;  // head bytes written
    uint64_t data = 0;  // data bytes moved
    uint64_t total() const { return head + data; }
};

enum class VpipeEnd {
    Done,    // the head and every data byte moved
    Short,   // a call moved nothing more: the source ended (or the peer went away)
    Failed,  // a call failed: tally.failure() says why
};

// `head` (at most VPIPE_HDTR_MAX bytes) and then `length` data bytes, in as few calls as the
// short counts allow: the first call carries the head, so head and data leave in one hand-over.
VpipeEnd vpipe_send_with_head(std::string_view head, uint64_t length, const HdtrCall& call, VpipeTally* tally,
                              HdtrProgress* progress);

// `head`, then calls of `chunk` data bytes until one moves fewer (a short count: the source
// ended), for a stream that ends with its connection.
VpipeEnd vpipe_send_until_eof(std::string_view head, uint64_t chunk, const HdtrCall& call, VpipeTally* tally,
                              HdtrProgress* progress);

}  // namespace vpipe::apps
