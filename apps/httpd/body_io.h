// The data path of vpipe-httpd's bodies, one function per direction, each doing what --mode says:
//   rw        GET: pread() + send();             PUT: recv() + pwrite()
//   sendfile  GET: sendfile(2);                  PUT: splice(2) socket -> pipe -> file
//   vpipe     GET: head and body in one vpipe_file_to_socket_fd_hdtr() hand-over;
//             PUT: vpipe_socket_to_file_fd()
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/vpipe_io.h"

namespace vpipe::httpd {

// A connection's buffers for the classic paths, made on first use.
class BodyBuffers {
public:
    BodyBuffers() = default;
    BodyBuffers(const BodyBuffers&) = delete;
    BodyBuffers& operator=(const BodyBuffers&) = delete;
    ~BodyBuffers() { drop_pipe(); }

    std::vector<char>& io();            // rw mode's buffer
    const int* pipe(std::string* err);  // sendfile mode's splice pipe; nullptr with *err
    void drop_pipe();                   // a pipe that may hold bytes must not be used again

private:
    std::vector<char> io_;
    int pipe_[2] = {-1, -1};
};

// What moving one body did.
struct BodyResult {
    uint64_t bytes = 0;     // body bytes moved
    apps::VpipeTally vt;    // the vPipe calls (vpipe mode)
    std::string err;        // why it stopped early, when worth a log line; "" otherwise
};

// A response: `head`, then `len` bytes of `file` from `off` (len 0: the head alone, by send()).
// true when all of it went out.
bool send_response(int sock, std::string_view head, int file, uint64_t off, uint64_t len, BodyBuffers* bufs,
                   BodyResult* res);

// A request body of `len` bytes into `file` from offset 0: first what already arrived with the
// head (*pending, consumed), then from the socket. true when all of it was stored; else res->err
// says why ("write..." when storing failed).
bool recv_body(int sock, std::string* pending, int file, uint64_t len, BodyBuffers* bufs, BodyResult* res);

}  // namespace vpipe::httpd
