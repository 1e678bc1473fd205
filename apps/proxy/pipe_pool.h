// The pipes of splice mode: at most --pipes, shared by all connections. A direction holds one
// only while moving a burst of bytes, so idle connections cost none.
#pragma once

#include <array>
#include <condition_variable>
#include <mutex>
#include <vector>

namespace vpipe::proxy {

constexpr size_t kPipeSize = 1 << 20;

class PipePool {
public:
    explicit PipePool(unsigned max) : max_(max) {}
    // A pipe, waiting while all are in use. {-1,-1} when none can be created.
    std::array<int, 2> acquire();
    // Returns a pipe; a pipe that may still hold bytes (!empty) is closed instead.
    void release(std::array<int, 2> p, bool empty);

private:
    std::mutex mu_;
    std::condition_variable cv_;
    std::vector<std::array<int, 2>> free_;
    unsigned created_ = 0, max_;
};

inline PipePool* g_pipes = nullptr;

}  // namespace vpipe::proxy
