#include "buffer_ring.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <system_error>

namespace vpipe::engine {

// ---- BufferRing -------------------------------------------------------------------------------

BufferRing::BufferRing(std::vector<uint8_t*> buffers)
    : buffers_(std::move(buffers)), slots_(buffers_.size()), free_(buffers_.size()) {}

uint8_t* BufferRing::acquire(bool wait) {
    std::unique_lock lk(mu_);
    if (wait) cv_.wait(lk, [&] { return free_ > 0 || stopped_; });
    if (stopped_ || free_ == 0) return nullptr;
    --free_;
    return buffers_[acquire_next_++ % buffers_.size()];
}

void BufferRing::publish(uint64_t len, bool eof, int status) {
    {
        std::lock_guard lk(mu_);
        slots_[fill_next_ % buffers_.size()] = {buffers_[fill_next_ % buffers_.size()], len, eof, status};
        ++fill_next_;
        ++published_;
    }
    cv_.notify_all();
}

void BufferRing::close() {
    {
        std::lock_guard lk(mu_);
        closed_ = true;
    }
    cv_.notify_all();
}

std::vector<BufferRing::Slot> BufferRing::take() {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return published_ > 0 || closed_ || stopped_; });
    std::vector<Slot> out;
    if (stopped_) return out;
    out.reserve(published_);
    for (; published_ > 0; --published_, ++take_next_) out.push_back(slots_[take_next_ % buffers_.size()]);
    return out;
}

void BufferRing::release(size_t n) {
    {
        std::lock_guard lk(mu_);
        free_ += n;
    }
    cv_.notify_all();
}

void BufferRing::stop() {
    {
        std::lock_guard lk(mu_);
        stopped_ = true;
    }
    cv_.notify_all();
}

namespace {
int start_thread(std::thread* t, std::function<void()> f) {
    try {
        *t = std::thread(std::move(f));
    } catch (const std::system_error&) {
        return -EIO;
    }
    return 0;
}
}  // namespace

// ---- ReceiveAhead -----------------------------------------------------------------------------

ReceiveAhead::ReceiveAhead(std::vector<uint8_t*> buffers, uint64_t buffer_bytes, uint64_t length, Receive receive)
    : ring_(std::move(buffers)), buffer_bytes_(buffer_bytes), length_(length), receive_(std::move(receive)) {}

ReceiveAhead::~ReceiveAhead() { stop(); }

int ReceiveAhead::start() {
    if (ring_.size() == 0) return -EINVAL;
    stop_fd_ = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!stop_fd_) return -EIO;
    return start_thread(&thread_, [this] { run(); });
}

void ReceiveAhead::run() {
    for (uint64_t asked = 0;;) {
        uint8_t* buf = ring_.acquire();
        if (!buf) break;
        uint64_t got = 0;
        bool eof = false;
        const int r = receive_(buf, std::min(buffer_bytes_, length_ - asked), stop_fd_.get(), &got, &eof);
        asked += got;
        received_ += got;
        ring_.publish(got, eof, r);
        if (r != 0 || eof || asked >= length_) break;
    }
    ring_.close();
}

void ReceiveAhead::stop() {
    if (stop_fd_) {
        const uint64_t one = 1;
        [[maybe_unused]] ssize_t n = ::write(stop_fd_.get(), &one, sizeof(one));
    }
    ring_.stop();  // (a receiver waiting for a free buffer)
    if (thread_.joinable()) thread_.join();
}

// ---- SendBehind -------------------------------------------------------------------------------

SendBehind::SendBehind(std::vector<uint8_t*> buffers, Send send) : ring_(std::move(buffers)), send_(std::move(send)) {}

SendBehind::~SendBehind() { finish(); }

int SendBehind::start() {
    if (ring_.size() == 0) return -EINVAL;
    return start_thread(&thread_, [this] { run(); });
}

void SendBehind::run() {
    for (;;) {
        const std::vector<BufferRing::Slot> slots = ring_.take();
        if (slots.empty()) return;
        for (const auto& s : slots) {
            uint64_t done = 0;
            const int r = send_(s.data, s.len, &done);
            sent_ += done;
            if (r != 0) {
                status_ = r;
                ring_.stop();  // the worker's acquire() returns nullptr from now on
                return;
            }
        }
        ring_.release(slots.size());
    }
}

int SendBehind::finish() {
    ring_.close();
    if (thread_.joinable()) thread_.join();
    return status_;
}

}  // namespace vpipe::engine
