// A VM's worker threads (paper 3.3: "a thread from the VM-specific thread pool is assigned to
// carry out each vPipe operation"; one operation per thread at a time). Each worker owns its
// block I/O context, so workers never share an io_context.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "io/block_io.h"

namespace vpipe::engine {

class WorkerPool {
public:
    using Task = std::function<void(BlockIo&)>;

    WorkerPool(std::string name, unsigned threads, unsigned queue_depth);
    ~WorkerPool();  // finishes queued tasks, then joins
    WorkerPool(const WorkerPool&) = delete;
    WorkerPool& operator=(const WorkerPool&) = delete;

    void submit(Task task);
    size_t queued() const;
    unsigned busy() const;

private:
    void run(unsigned index);

    std::string name_;
    unsigned queue_depth_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::deque<Task> queue_;
    unsigned busy_ = 0;
    bool stopping_ = false;
    std::vector<std::thread> threads_;
};

}  // namespace vpipe::engine
