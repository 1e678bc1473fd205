// The server frame of the test servers: a listening socket, an accept loop that serves each
// connection in a thread of its own, and a clean stop on SIGINT or SIGTERM (no new connections,
// every tracked socket shut down to wake its thread, up to 5 s for them to finish).
#pragma once

#include <functional>
#include <string>

namespace vpipe::apps {

struct ServerSpec {
    std::string bind;               // address to listen on
    int port = 0;
    unsigned max_connections = 0;   // at most this many connections at a time; 0: no limit
    std::string banner;             // the rest of the start line after "listening on ADDR:PORT"
    // Serves one accepted connection (TCP_NODELAY, tracked) in its own thread. It must release
    // the socket with untrack_and_close().
    std::function<void(int fd, const std::string& peer)> serve;
};

// Blocks SIGINT and SIGTERM (in every thread to come), ignores SIGPIPE, listens and serves until
// a signal. The exit status: 0 stopped by a signal, 1 runtime failure (printed on stderr).
int run_server(const ServerSpec& spec);

// True once a stop has begun: connection threads finish instead of waiting for more.
bool stopping();

// Sockets that a stop shuts down (a socket tracked after the stop began is shut down at once).
void track(int fd);
void untrack_and_close(int fd);

}  // namespace vpipe::apps
