// ReceiveAhead: the receiving half of socket -> file. One thread fills a ring of buffers with
// the stream, in order, as far ahead as there are free buffers, while the caller takes the
// filled ones and writes them to the image several at once. So the connection keeps moving
// while the disk writes, and the disk sees several requests in flight instead of one window at
// a time (one 1 MiB window received, then written, then the next: ~0.9 GB/s here; the disk
// takes 2+ GB/s of direct writes).
//
// Every byte the receiver took from the socket is acknowledged to the peer: a caller that stops
// early (a write error) must account for what take() still holds (received()).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "util/unique_fd.h"

namespace vpipe::engine {

class ReceiveAhead {
public:
    // Receives up to `want` bytes into buf; returns 0 or a negative errno, with *got the bytes
    // received and *eof set if the stream ended. Must return -ECANCELED soon after `stop_fd`
    // (an eventfd) becomes readable.
    using Receive = std::function<int(uint8_t* buf, uint64_t want, int stop_fd, uint64_t* got, bool* eof)>;

    struct Filled {
        uint8_t* data;
        uint64_t got;
        bool eof;
        int status;  // the receive's result; the bytes in data[0, got) count whatever it is
    };

    ReceiveAhead(std::vector<uint8_t*> buffers, uint64_t buffer_bytes, uint64_t length, Receive receive);
    ~ReceiveAhead();  // stops the receiver and waits for it
    ReceiveAhead(const ReceiveAhead&) = delete;
    ReceiveAhead& operator=(const ReceiveAhead&) = delete;

    // Starts the receiving thread; -EIO if it cannot.
    int start();
    // Waits until at least one buffer is filled; returns every filled buffer not taken yet, in
    // stream order. Empty once the receiver has finished and everything was taken.
    std::vector<Filled> take();
    // Gives the `n` oldest taken buffers back to the receiver.
    void release(size_t n);
    // Makes the receiver give up (its current receive returns -ECANCELED) and waits for it.
    void stop();
    // Bytes received so far (taken or not).
    uint64_t received() const;

private:
    void run();

    const std::vector<uint8_t*> buffers_;
    const uint64_t buffer_bytes_;
    const uint64_t length_;
    Receive receive_;
    UniqueFd stop_fd_;
    std::thread thread_;

    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::vector<Filled> slots_;
    size_t free_ = 0;        // buffers the receiver may fill
    size_t filled_ = 0;      // filled, not taken
    uint64_t fill_next_ = 0; // ring position the receiver fills next
    uint64_t take_next_ = 0; // ring position take() returns next
    uint64_t received_ = 0;
    bool done_ = false;      // the receiver will fill nothing more
    bool stopping_ = false;
};

}  // namespace vpipe::engine
