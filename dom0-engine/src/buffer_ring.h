// The engine's socket pipelines: pool buffers handed in stream order between a worker and one
// helper thread, so that the disk and the connection move at the same time and the disk sees
// several requests in flight instead of one window at a time (one 1 MiB window received, then
// written, then the next: ~0.9 GB/s here, where the disk takes 2+ GB/s of direct writes).
//
//   BufferRing   the ring itself: a producer acquires a free buffer, fills it and publishes it;
//                the consumer takes every published buffer at once and releases them in order.
//   ReceiveAhead socket -> file: a helper thread receives the stream into the ring while the
//                worker writes what it takes to the image (all of it at once).
//   SendBehind   file -> socket from O_DIRECT reads: the worker reads windows into the ring
//                while a helper thread sends them.
//
// Every byte a receiver took from a socket is acknowledged to the peer: a caller that stops
// early (a write error) must account for what the ring still holds (ReceiveAhead::received()).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "util/unique_fd.h"

namespace vpipe::engine {

class BufferRing {
public:
    struct Slot {
        uint8_t* data;
        uint64_t len;  // bytes in data
        bool eof;      // the stream ended after them
        int status;    // how producing them ended: 0 or a negative errno (len still counts)
    };

    explicit BufferRing(std::vector<uint8_t*> buffers);

    // Producer: a free buffer (waiting for one, or nullptr at once if !wait and none is free;
    // nullptr once stopped); buffers are published filled in the order they were acquired.
    uint8_t* acquire(bool wait = true);
    void publish(uint64_t len, bool eof, int status);
    // Producer: nothing more comes.
    void close();
    // Consumer: waits until something is published; returns every published buffer not taken
    // yet, in order. Empty once closed and everything was taken, or stopped.
    std::vector<Slot> take();
    // Consumer: gives the n oldest taken buffers back.
    void release(size_t n);
    // Both sides stop waiting.
    void stop();
    size_t size() const { return buffers_.size(); }

private:
    const std::vector<uint8_t*> buffers_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::vector<Slot> slots_;
    size_t free_;
    size_t published_ = 0;  // published, not taken
    uint64_t acquire_next_ = 0, fill_next_ = 0, take_next_ = 0;
    bool closed_ = false, stopped_ = false;
};

class ReceiveAhead {
public:
    // Receives up to `want` bytes into buf: 0 or a negative errno, *got the bytes received,
    // *eof if the stream ended. Must return (-ECANCELED) soon after `stop_fd` becomes readable.
    using Receive = std::function<int(uint8_t* buf, uint64_t want, int stop_fd, uint64_t* got, bool* eof)>;

    ReceiveAhead(std::vector<uint8_t*> buffers, uint64_t buffer_bytes, uint64_t length, Receive receive);
    ~ReceiveAhead();  // stop()
    ReceiveAhead(const ReceiveAhead&) = delete;
    ReceiveAhead& operator=(const ReceiveAhead&) = delete;

    int start();  // -EIO if the thread cannot start
    std::vector<BufferRing::Slot> take() { return ring_.take(); }
    void release(size_t n) { ring_.release(n); }
    // The receiver gives up (a receive in progress returns -ECANCELED) and ends; take()
    // returns nothing from then on.
    void stop();
    uint64_t received() const { return received_.load(); }

private:
    void run();
    BufferRing ring_;
    const uint64_t buffer_bytes_, length_;
    Receive receive_;
    UniqueFd stop_fd_;
    std::thread thread_;
    std::atomic<uint64_t> received_{0};
};

class SendBehind {
public:
    // Sends n bytes of buf: 0 or a negative errno; *done grows by every byte the socket took.
    using Send = std::function<int(const uint8_t* buf, uint64_t n, uint64_t* done)>;

    SendBehind(std::vector<uint8_t*> buffers, Send send);
    ~SendBehind();  // finish()
    SendBehind(const SendBehind&) = delete;
    SendBehind& operator=(const SendBehind&) = delete;

    int start();  // -EIO if the thread cannot start
    // A free buffer to read the next window into (see BufferRing::acquire); nullptr once the
    // sender failed.
    uint8_t* acquire(bool wait = true) { return ring_.acquire(wait); }
    void publish(uint64_t len) { ring_.publish(len, false, 0); }
    // Waits until everything published is sent (or the sender failed); the sender's status.
    int finish();
    uint64_t sent() const { return sent_.load(); }

private:
    void run();
    BufferRing ring_;
    Send send_;
    std::thread thread_;
    std::atomic<uint64_t> sent_{0};
    int status_ = 0;  // written by the sender thread, read after join
};

}  // namespace vpipe::engine
