#include "util/poll_thread.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <stdexcept>
#include <system_error>

namespace vpipe {

PollThread::PollThread() : wake_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
    if (!wake_fd_) throw std::system_error(errno, std::generic_category(), "eventfd");
}

PollThread::~PollThread() { stop(); }

void PollThread::start(std::function<void()> loop) {
    if (running()) throw std::logic_error("PollThread::start: already running");
    drain();
    stopping_ = false;
    thread_ = std::thread(std::move(loop));
}

bool PollThread::stop() {
    if (!running()) return false;
    stopping_ = true;
    wake();
    thread_.join();
    return true;
}

void PollThread::wake() const {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_fd_.get(), &one, sizeof(one));
}

void PollThread::drain() const {
    uint64_t count;
    while (::read(wake_fd_.get(), &count, sizeof(count)) == static_cast<ssize_t>(sizeof(count))) {
    }
}

}  // namespace vpipe
