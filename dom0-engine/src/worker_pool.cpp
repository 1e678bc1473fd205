#include "worker_pool.h"

#include <pthread.h>

#include <spdlog/spdlog.h>

namespace vpipe::engine {

WorkerPool::WorkerPool(std::string name, unsigned threads, unsigned queue_depth)
    : name_(std::move(name)), queue_depth_(queue_depth) {
    threads_.reserve(threads);
    for (unsigned i = 0; i < threads; ++i) threads_.emplace_back([this, i] { run(i); });
}

WorkerPool::~WorkerPool() {
    {
        std::lock_guard lk(mu_);
        stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
}

void WorkerPool::submit(Task task) {
    {
        std::lock_guard lk(mu_);
        queue_.push_back(std::move(task));
    }
    cv_.notify_one();
}

size_t WorkerPool::queued() const {
    std::lock_guard lk(mu_);
    return queue_.size();
}

unsigned WorkerPool::busy() const {
    std::lock_guard lk(mu_);
    return busy_;
}

void WorkerPool::run(unsigned index) {
    std::string thread_name = (name_ + "/" + std::to_string(index)).substr(0, 15);
    pthread_setname_np(pthread_self(), thread_name.c_str());
    BlockIo io(queue_depth_);
    for (;;) {
        Task task;
        {
            std::unique_lock lk(mu_);
            cv_.wait(lk, [&] { return stopping_ || !queue_.empty(); });
            if (queue_.empty()) return;  // stopping and drained
            task = std::move(queue_.front());
            queue_.pop_front();
            ++busy_;
        }
        try {
            task(io);
        } catch (const std::exception& e) {
            spdlog::error("{}: task failed: {}", thread_name, e.what());
        }
        std::lock_guard lk(mu_);
        --busy_;
    }
}

}  // namespace vpipe::engine
