#include "prepared_watermark.h"

#include <poll.h>

#include <algorithm>
#include <cerrno>

#include <vpipe/abi/ring.h>

namespace vpipe::engine {

int PreparedWatermark::poll_once(bool* failed) {
    uint64_t v = 0;
    if (!read_ || read_(VPIPE_PREPARED_OFFSET, &v) != 0) return -EIO;
    *failed = (v & VPIPE_PREPARED_FAILED) != 0;
    seen_ = std::max(seen_, std::min<uint64_t>(v & ~VPIPE_PREPARED_FAILED, length_));
    return 0;
}

int PreparedWatermark::wait_beyond(uint64_t pos, int cancel_fd, int stop_fd, std::chrono::milliseconds stall,
                                   uint64_t* ready) {
    using Clock = std::chrono::steady_clock;
    bool failed = false;
    if (seen_ > pos) {  // known already: no read of shared memory
        *ready = seen_;
        return 0;
    }
    auto last_move = Clock::now();
    uint64_t last = seen_;
    // The guest publishes every few MiB of zero-fill (a few ms): poll from 50 us, backing off
    // to 1 ms, so a waiting receive neither spins nor oversleeps much.
    long wait_ns = 50'000;
    for (bool first = true;; first = false) {
        if (int r = poll_once(&failed)) return r;
        if (failed) return -ECANCELED;
        if (seen_ > pos) {
            *ready = seen_;
            return 0;
        }
        if (first) ++waits_;
        const auto now = Clock::now();
        if (seen_ != last) {
            last = seen_;
            last_move = now;
        } else if (now - last_move >= stall) {
            return -ETIMEDOUT;
        }
        pollfd p[2] = {{cancel_fd, POLLIN, 0}, {stop_fd, POLLIN, 0}};
        const timespec ts{0, wait_ns};
        const int pr = ::ppoll(p, 2, &ts, nullptr);
        if (pr < 0 && errno != EINTR) return -EIO;
        if (pr > 0 && (p[0].revents || p[1].revents)) return -ECANCELED;
        wait_ns = std::min(wait_ns * 2, 1'000'000L);
    }
}

}  // namespace vpipe::engine
