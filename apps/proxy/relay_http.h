// vpipe mode with http framing: one thread polls both sockets of a connection. Requests
// (client -> backend) are copied in the guest while their framing is followed. Each response
// head is read in the guest; a body of known length of at least --vpipe-min bytes is handed to
// vPipe with exactly that length and with the response head (and whatever else is queued for the
// client) as the hdtr head, so head and body leave in one hand-over and the call ends with the
// response: keep-alive works and the guest never touches a socket while dom0 owns it. A
// close-delimited body goes in --chunk pieces until a short count (EOF). Anything that is not
// plain HTTP/1 (chunked, a parse failure, other bytes) turns the connection into a plain relay.
#pragma once

#include <string>
#include <vector>

#include "direction.h"
#include "http_framing.h"

namespace vpipe::proxy {

class HttpRelay {
public:
    HttpRelay(int cfd, int bfd, Direction* up, Direction* down) : cfd_(cfd), bfd_(bfd), up_(up), down_(down) {}
    void run();

private:
    int cfd_, bfd_;
    Direction *up_, *down_;
    std::vector<char> buf_ = std::vector<char>(256 * 1024);
    RequestFollower requests_;
    std::string in_;          // backend bytes not looked at yet: the start of a response
    std::string out_;         // bytes for the client not sent yet: response heads, a body's start
    uint64_t body_left_ = 0;  // a small body copied in the guest: bytes still to come
    bool up_open_ = true, down_open_ = true, opaque_ = false;

    bool ok() const { return up_->error.empty() && down_->error.empty(); }
    ssize_t receive(int fd, size_t want, Direction* d);
    void from_client();
    void from_backend();
    void copy_from_backend();
    bool next_response();
    void take(size_t n);
    apps::VpipeEnd offload(uint64_t length, bool until_eof);
    void hand_over(uint64_t left);
    void hand_over_until_eof();
    bool send_to(Direction* d, const char* p, size_t n);
    bool flush(size_t keep = 0);
    void go_opaque();
};

}  // namespace vpipe::proxy
