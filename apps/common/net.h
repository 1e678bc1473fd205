// Socket helpers of the test servers: blocking sends, waiting for input, listening, peer names.
#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <string>

namespace vpipe::apps {

// Sends all of p[0, len) (MSG_NOSIGNAL | flags), retrying on EINTR. 0, or -1 with errno.
int send_all(int fd, const char* p, size_t len, int flags = 0);

// Waits up to timeout_ms (-1: forever) for fd to become readable. 1 ready, 0 timeout, -1 error.
int wait_readable(int fd, int timeout_ms);

// A listening TCP socket on ADDR:PORT (an IPv4 or IPv6 literal, or a name). -1 with *err set.
int listen_on(const std::string& addr, int port, std::string* err);

// "1.2.3.4:PORT" or "[v6]:PORT".
std::string addr_text(const sockaddr* sa);

// TCP_NODELAY: responses and relayed bytes go out without waiting for more.
void set_nodelay(int fd);

}  // namespace vpipe::apps
