#include "receive_ahead.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <system_error>

namespace vpipe::engine {

ReceiveAhead::ReceiveAhead(std::vector<uint8_t*> buffers, uint64_t buffer_bytes, uint64_t length, Receive receive)
    : buffers_(std::move(buffers)), buffer_bytes_(buffer_bytes), length_(length), receive_(std::move(receive)),
      slots_(buffers_.size()), free_(buffers_.size()) {}

ReceiveAhead::~ReceiveAhead() { stop(); }

int ReceiveAhead::start() {
    if (buffers_.empty()) return -EINVAL;
    stop_fd_ = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!stop_fd_) return -EIO;
    try {
        thread_ = std::thread([this] { run(); });
    } catch (const std::system_error&) {
        return -EIO;
    }
    return 0;
}

void ReceiveAhead::run() {
    uint64_t asked = 0;
    for (;;) {
        size_t idx;
        {
            std::unique_lock lk(mu_);
            cv_.wait(lk, [&] { return free_ > 0 || stopping_; });
            if (stopping_) break;
            idx = fill_next_ % buffers_.size();
            --free_;
        }
        Filled f{buffers_[idx], 0, false, 0};
        const uint64_t want = std::min(buffer_bytes_, length_ - asked);
        f.status = receive_(f.data, want, stop_fd_.get(), &f.got, &f.eof);
        asked += f.got;
        const bool last = f.status != 0 || f.eof || asked >= length_;
        {
            std::lock_guard lk(mu_);
            slots_[idx] = f;
            ++fill_next_;
            ++filled_;
            received_ += f.got;
            if (last) done_ = true;
        }
        cv_.notify_all();
        if (last) return;
    }
    std::lock_guard lk(mu_);
    done_ = true;
    cv_.notify_all();
}

std::vector<ReceiveAhead::Filled> ReceiveAhead::take() {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return filled_ > 0 || done_; });
    std::vector<Filled> out;
    out.reserve(filled_);
    for (; filled_ > 0; --filled_, ++take_next_) out.push_back(slots_[take_next_ % buffers_.size()]);
    return out;
}

void ReceiveAhead::release(size_t n) {
    {
        std::lock_guard lk(mu_);
        free_ += n;
    }
    cv_.notify_all();
}

void ReceiveAhead::stop() {
    {
        std::lock_guard lk(mu_);
        stopping_ = true;
    }
    cv_.notify_all();
    if (stop_fd_) {
        const uint64_t one = 1;
        [[maybe_unused]] ssize_t n = ::write(stop_fd_.get(), &one, sizeof(one));
    }
    if (thread_.joinable()) thread_.join();
}

uint64_t ReceiveAhead::received() const {
    std::lock_guard lk(mu_);
    return received_;
}

}  // namespace vpipe::engine
