#include "io/page_pool.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <stdexcept>
#include <system_error>
#include <utility>

namespace vpipe::engine {

namespace {
constexpr size_t kPageBytes = 4096;
}

PagePool::Buffer::Buffer(Buffer&& other) noexcept
    : pool_(std::exchange(other.pool_, nullptr)), data_(std::exchange(other.data_, nullptr)) {}

PagePool::Buffer& PagePool::Buffer::operator=(Buffer&& other) noexcept {
    if (this != &other) {
        release();
        pool_ = std::exchange(other.pool_, nullptr);
        data_ = std::exchange(other.data_, nullptr);
    }
    return *this;
}

PagePool::Buffer::~Buffer() { release(); }

size_t PagePool::Buffer::size() const { return pool_ ? pool_->buffer_bytes_ : 0; }

void PagePool::Buffer::release() {
    if (pool_) pool_->put(data_);
    pool_ = nullptr;
    data_ = nullptr;
}

PagePool::PagePool(size_t buffers, size_t buffer_bytes)
    : capacity_(buffers), buffer_bytes_(buffer_bytes) {
    if (buffers == 0) throw std::invalid_argument("PagePool: needs at least one buffer");
    if (buffer_bytes == 0 || buffer_bytes % kPageBytes != 0)
        throw std::invalid_argument("PagePool: buffer size must be a non-zero multiple of 4096");
    if (buffers > SIZE_MAX / buffer_bytes) throw std::invalid_argument("PagePool: too large");

    region_bytes_ = buffers * buffer_bytes;
    // MAP_POPULATE faults every page in now, so the data path never takes a page fault here.
    void* region = ::mmap(nullptr, region_bytes_, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (region == MAP_FAILED)
        throw std::system_error(errno, std::generic_category(), "PagePool: mmap of buffer pool");
    region_ = static_cast<uint8_t*>(region);
    // Locking keeps the pool resident; RLIMIT_MEMLOCK may refuse it, which only costs speed.
    locked_ = ::mlock(region_, region_bytes_) == 0;

    free_.reserve(buffers);
    for (size_t i = buffers; i-- > 0;) free_.push_back(region_ + i * buffer_bytes);
}

PagePool::~PagePool() { ::munmap(region_, region_bytes_); }

PagePool::Buffer PagePool::take_locked() {
    uint8_t* data = free_.back();
    free_.pop_back();
    high_water_ = std::max(high_water_, capacity_ - free_.size());
    return Buffer(this, data);
}

std::optional<PagePool::Buffer> PagePool::try_get() {
    std::lock_guard lock(mutex_);
    if (free_.empty()) return std::nullopt;
    return take_locked();
}

std::optional<PagePool::Buffer> PagePool::get(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    if (!returned_.wait_for(lock, timeout, [this] { return !free_.empty(); })) return std::nullopt;
    return take_locked();
}

void PagePool::put(uint8_t* data) {
    {
        std::lock_guard lock(mutex_);
        free_.push_back(data);  // capacity reserved up front: never reallocates
    }
    returned_.notify_one();
}

size_t PagePool::in_use() const {
    std::lock_guard lock(mutex_);
    return capacity_ - free_.size();
}

size_t PagePool::high_water() const {
    std::lock_guard lock(mutex_);
    return high_water_;
}

}  // namespace vpipe::engine
