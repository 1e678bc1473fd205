// PagePool: the engine's preallocated data buffers (paper §4: "a statically allocated pool of
// pages so that page allocation time is minimal"). One page-aligned region is mapped, faulted
// in and (if the limits allow) locked at construction; it is carved into fixed-size buffers that
// are handed out and returned without any allocation on the data path.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <vector>

namespace vpipe::engine {

class PagePool {
public:
    // Move-only handle to one buffer; returns it to the pool when destroyed.
    // The pool must outlive every Buffer taken from it.
    class Buffer {
    public:
        Buffer(Buffer&& other) noexcept;
        Buffer& operator=(Buffer&& other) noexcept;
        Buffer(const Buffer&) = delete;
        Buffer& operator=(const Buffer&) = delete;
        ~Buffer();

        uint8_t* data() const { return data_; }
        size_t size() const;

    private:
        friend class PagePool;
        Buffer(PagePool* pool, uint8_t* data) : pool_(pool), data_(data) {}
        void release();

        PagePool* pool_;
        uint8_t* data_;
    };

    // buffers > 0; buffer_bytes a non-zero multiple of 4096. Throws std::invalid_argument on bad
    // sizes and std::system_error if the region cannot be mapped.
    PagePool(size_t buffers, size_t buffer_bytes);
    ~PagePool();
    PagePool(const PagePool&) = delete;
    PagePool& operator=(const PagePool&) = delete;

    // A free buffer, or nullopt at once if none is free.
    std::optional<Buffer> try_get();
    // A free buffer, waiting up to `timeout` for one to be returned; nullopt on timeout.
    std::optional<Buffer> get(std::chrono::milliseconds timeout);

    size_t in_use() const;
    size_t high_water() const;  // the most buffers ever in use at once
    size_t capacity() const { return capacity_; }
    size_t buffer_bytes() const { return buffer_bytes_; }
    bool locked() const { return locked_; }  // whether mlock succeeded

private:
    Buffer take_locked();  // requires mutex_ held and free_ non-empty
    void put(uint8_t* data);

    const size_t capacity_;
    const size_t buffer_bytes_;
    uint8_t* region_ = nullptr;
    size_t region_bytes_ = 0;
    bool locked_ = false;

    mutable std::mutex mutex_;
    std::condition_variable returned_;
    std::vector<uint8_t*> free_;  // LIFO: the most recently returned buffer is cache-warm
    size_t high_water_ = 0;
};

}  // namespace vpipe::engine
