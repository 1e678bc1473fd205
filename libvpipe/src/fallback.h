// The classic guest-side paths libvpipe uses when it cannot offload. They exist so that an
// application keeps working without vPipe; every use is counted and reported, never hidden.
#pragma once

#include <sys/types.h>

#include <cstdint>

namespace vpipe::lib {

// Each moves up to `length` bytes like the named system calls would, blocking even on
// non-blocking descriptors. Return bytes moved (short at EOF) or -errno with nothing moved.
int64_t fallback_file_to_file(int in_fd, uint64_t in_off, int out_fd, uint64_t out_off, uint64_t length);
int64_t fallback_file_to_socket(int file_fd, uint64_t offset, int sock_fd, uint64_t length);
int64_t fallback_socket_to_file(int sock_fd, int file_fd, uint64_t offset, uint64_t length);
int64_t fallback_socket_to_socket(int in_fd, int out_fd, uint64_t length);
// Sends all of buf on a (possibly non-blocking) socket. 0 or -errno.
int fallback_send_all(int sock_fd, const void* buf, size_t len, bool more = false);

}  // namespace vpipe::lib
