// Waits until every given TCP socket has nothing unacknowledged. The hand-over benchmarks run
// on one loopback connection: a delayed ACK still in flight would hit the next benchmark's
// frozen socket (freeze() -> -EAGAIN) or the free 4-tuple between a disconnect and a restore
// (-> RST). In vPipe dom0 holds the flow for that; here nothing else would.
#pragma once

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <initializer_list>

namespace vpipe::bench {

inline void wait_all_acked(std::initializer_list<int> fds) {
    for (int i = 0; i < 1000; i++) {
        bool idle = true;
        for (int fd : fds) {
            tcp_info ti{};
            socklen_t len = sizeof(ti);
            if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 && ti.tcpi_unacked != 0) idle = false;
        }
        if (idle) break;
        ::usleep(1000);
    }
    ::usleep(1000);
}

}  // namespace vpipe::bench
