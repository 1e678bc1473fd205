// DiskImage: one VM disk image (regular file or block device) opened by the engine for direct
// I/O, with its O_DIRECT alignment, transfer counters, and the locks that make read-modify-write
// of partial blocks safe between concurrent requests.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "util/unique_fd.h"

namespace vpipe::engine {

class DiskImage {
public:
    // Largest O_DIRECT alignment the engine supports; open() refuses a disk that needs more.
    static constexpr uint32_t kMaxAlignment = 64 * 1024;

    // Opens `path` with O_DIRECT|O_CLOEXEC, read-write or read-only. Throws std::system_error
    // (message names the path) if it cannot be opened, sized, or used for direct I/O.
    // host_cache: also a buffered read-only descriptor (cached_fd()) for reads through dom0's
    // page cache; refused (EINVAL) for a block device, whose writes from blkback bypass it.
    static std::unique_ptr<DiskImage> open(const std::string& path, bool writable, bool host_cache = false);

    DiskImage(const DiskImage&) = delete;
    DiskImage& operator=(const DiskImage&) = delete;

    uint64_t size() const { return size_; }
    // O_DIRECT alignment of file offsets, lengths and memory addresses (a power of two).
    uint32_t alignment() const { return alignment_; }
    int fd() const { return fd_.get(); }
    // Buffered read-only descriptor of the image, -1 unless opened with host_cache. Coherent
    // with the O_DIRECT writes through fd() (a direct write invalidates the cached range).
    int cached_fd() const { return cached_fd_.get(); }
    bool writable() const { return writable_; }
    const std::string& path() const { return path_; }

    // Serialises read-modify-write of the partial block `block_index` (offset / alignment()).
    std::mutex& block_lock(uint64_t block_index) {
        return block_locks_[block_index % block_locks_.size()];
    }

    // Bytes and operations actually transferred to/from the image (read-modify-write included).
    std::atomic<uint64_t> bytes_read{0};
    std::atomic<uint64_t> bytes_written{0};
    std::atomic<uint64_t> read_ops{0};
    std::atomic<uint64_t> write_ops{0};
    // of bytes_read: read by splice() straight into pipe pages (file -> socket, io/splice_read.h)
    std::atomic<uint64_t> bytes_spliced{0};
    // splice_read_supported()'s answer for this disk: -1 not probed yet, 0 no, 1 yes
    std::atomic<int> splice_probe{-1};

private:
    DiskImage(std::string path, UniqueFd fd, UniqueFd cached_fd, bool writable, uint64_t size,
              uint32_t alignment);

    const std::string path_;
    const UniqueFd fd_;
    const UniqueFd cached_fd_;
    const bool writable_;
    const uint64_t size_;
    const uint32_t alignment_;
    std::array<std::mutex, 64> block_locks_;
};

}  // namespace vpipe::engine
