#include "pipe_pool.h"

#include <fcntl.h>
#include <unistd.h>

namespace vpipe::proxy {

std::array<int, 2> PipePool::acquire() {
    std::unique_lock lk(mu_);
    for (;;) {
        if (!free_.empty()) {
            auto p = free_.back();
            free_.pop_back();
            return p;
        }
        if (created_ < max_) {
            int p[2];
            if (::pipe2(p, O_CLOEXEC) < 0) return {-1, -1};
            ::fcntl(p[1], F_SETPIPE_SZ, static_cast<int>(kPipeSize));  // best effort
            ++created_;
            return {p[0], p[1]};
        }
        cv_.wait(lk);
    }
}

void PipePool::release(std::array<int, 2> p, bool empty) {
    std::lock_guard lk(mu_);
    if (empty) {
        free_.push_back(p);
    } else {
        ::close(p[0]);
        ::close(p[1]);
        --created_;
    }
    cv_.notify_one();
}

}  // namespace vpipe::proxy
