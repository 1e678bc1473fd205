// The guest's preparing watermark (VPIPE_REQF_PREPARING, vpipe/abi/ring.h): a socket -> file
// request is submitted as soon as the destination's blocks are allocated, and the guest readies
// them (zero-fills unwritten extents) in stream order while dom0 receives. dom0 takes a byte
// from the connection only once the watermark has passed it, so every byte acknowledged to the
// peer has a ready block to go to.
//
// The word is the guest's: it is re-read from the live area each time (never the private copy),
// clamped to the request's length, and only ever raised here (a guest lowering it changes
// nothing); a watermark that stands still for the socket timeout ends the request.
#pragma once

#include <chrono>
#include <cstdint>

#include "socket_ops.h"

namespace vpipe::engine {

class PreparedWatermark {
public:
    PreparedWatermark(DescWordReader read, uint64_t length) : read_(std::move(read)), length_(length) {}

    // Waits until the watermark lies beyond `pos` (a stream offset < length): 0 and *ready, the
    // watermark (pos < *ready <= length). -ECANCELED when the guest reported
    // VPIPE_PREPARED_FAILED or `cancel_fd` / `stop_fd` became readable, -ETIMEDOUT after
    // `stall` without the watermark moving, -EIO when the word cannot be read.
    int wait_beyond(uint64_t pos, int cancel_fd, int stop_fd, std::chrono::milliseconds stall, uint64_t* ready);

    // How often a receive had to wait for the guest (it was slower than the connection).
    uint64_t waits() const { return waits_; }

private:
    int poll_once(bool* failed);

    DescWordReader read_;
    uint64_t length_;
    uint64_t seen_ = 0;
    uint64_t waits_ = 0;
};

}  // namespace vpipe::engine
