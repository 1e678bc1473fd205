// The classic guest-side paths libvpipe uses when it cannot offload. They exist so that an
// application keeps working without vPipe; every use is counted and reported, never hidden.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>

namespace vpipe::lib {

// A stop request for a copy running on a queue's fallback worker (the non-blocking API): the
// copy checks `requested` at each chunk boundary and whenever it waits for a socket, where
// `wake_fd` (an eventfd, readable once a stop is asked) interrupts the wait. The copy sets
// `stopped` when it ended because of it, short of the full length.
struct Stop {
    std::atomic<bool> requested{false};
    int wake_fd = -1;
    bool stopped = false;
};

// Each moves up to `length` bytes like the named system calls would, blocking even on
// non-blocking descriptors. Return bytes moved (short at EOF, an error, or a stop) or -errno
// with nothing moved. With `stop` the copy goes in bounded chunks (sendfile, copy_file_range)
// so that a stop takes effect soon; without it (the blocking API) as before.
int64_t fallback_file_to_file(int in_fd, uint64_t in_off, int out_fd, uint64_t out_off, uint64_t length,
                              Stop* stop = nullptr);
int64_t fallback_file_to_socket(int file_fd, uint64_t offset, int sock_fd, uint64_t length, Stop* stop = nullptr);
int64_t fallback_socket_to_file(int sock_fd, int file_fd, uint64_t offset, uint64_t length, Stop* stop = nullptr);
int64_t fallback_socket_to_socket(int in_fd, int out_fd, uint64_t length, Stop* stop = nullptr);
// Sends all of buf on a (possibly non-blocking) socket. 0 or -errno; *sent (if given) the bytes
// that did go out, also on an error or a stop.
int fallback_send_all(int sock_fd, const void* buf, size_t len, bool more = false, Stop* stop = nullptr,
                      size_t* sent = nullptr);

}  // namespace vpipe::lib
