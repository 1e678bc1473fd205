// Helpers for the block I/O tests: disk images on a real filesystem with an in-memory model of
// their contents, loop devices, and scattered extent layouts.
#pragma once

#include <fcntl.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "io/disk_image.h"
#include "io/extent.h"

namespace vpipe::engine::test {

inline std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
    std::vector<uint8_t> out(n);
    std::mt19937_64 rng(seed);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const uint64_t v = rng();
        std::memcpy(&out[i], &v, 8);
    }
    for (; i < n; ++i) out[i] = static_cast<uint8_t>(rng());
    return out;
}

// A disk image file in /var/tmp (a real filesystem: tmpfs may refuse O_DIRECT), filled with
// random bytes; `model` mirrors what the file should hold. Removed on destruction.
class TempImage {
public:
    TempImage(uint64_t size, uint32_t seed) : model(random_bytes(size, seed)) {
        char name[] = "/var/tmp/vpipe-io-test-XXXXXX";
        const int fd = ::mkstemp(name);
        if (fd < 0) throw std::system_error(errno, std::generic_category(), "mkstemp");
        path = name;
        size_t done = 0;
        while (done < model.size()) {
            const ssize_t n = ::pwrite(fd, model.data() + done, model.size() - done,
                                       static_cast<off_t>(done));
            if (n <= 0) {
                ::close(fd);
                throw std::system_error(errno, std::generic_category(), "pwrite " + path);
            }
            done += static_cast<size_t>(n);
        }
        ::fsync(fd);
        ::close(fd);
    }
    ~TempImage() { ::unlink(path.c_str()); }
    TempImage(const TempImage&) = delete;
    TempImage& operator=(const TempImage&) = delete;

    // What the file holds now, read through the page cache (not through the code under test).
    std::vector<uint8_t> contents() const {
        std::vector<uint8_t> out(model.size());
        const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        size_t done = 0;
        while (fd >= 0 && done < out.size()) {
            const ssize_t n = ::pread(fd, out.data() + done, out.size() - done,
                                      static_cast<off_t>(done));
            if (n <= 0) break;
            done += static_cast<size_t>(n);
        }
        if (fd >= 0) ::close(fd);
        out.resize(done);
        return out;
    }

    std::string path;
    std::vector<uint8_t> model;
};

// Opens an image, or returns null with `why` set when the filesystem refuses O_DIRECT.
inline std::unique_ptr<DiskImage> open_direct(const std::string& path, bool writable,
                                              std::string* why) {
    try {
        return DiskImage::open(path, writable);
    } catch (const std::system_error& e) {
        if (e.code().value() != EINVAL) throw;
        *why = std::string("O_DIRECT refused on this filesystem: ") + e.what();
        return nullptr;
    }
}

// The stream bytes an extent list holds according to a model of the disk.
inline std::vector<uint8_t> expected_stream(const std::vector<uint8_t>& disk,
                                            std::span<const Extent> ext) {
    std::vector<uint8_t> out;
    out.reserve(total_length(ext));
    for (const Extent& e : ext) {
        if (e.zero)
            out.insert(out.end(), e.length, 0);
        else
            out.insert(out.end(), disk.begin() + static_cast<ptrdiff_t>(e.disk_offset),
                       disk.begin() + static_cast<ptrdiff_t>(e.disk_offset + e.length));
    }
    return out;
}

// Applies a write of `stream` to the extents of a model disk.
inline void model_write(std::vector<uint8_t>& disk, std::span<const Extent> ext,
                        const uint8_t* stream) {
    for (const Extent& e : ext) {
        std::memcpy(disk.data() + e.disk_offset, stream, e.length);
        stream += e.length;
    }
}

// `length` stream bytes on non-overlapping, shuffled places of [0, disk_size): one extent per
// slot of `slot` bytes, each a random multiple of 512 long (at most the slot), the first starting
// `head` bytes into its slot; the last is trimmed. Boundaries between extents are 512-aligned
// (the protocol's alignment rule). `reverse` puts the extents in descending disk order.
inline std::vector<Extent> scattered(uint64_t disk_size, uint64_t length, uint64_t slot,
                                     uint64_t head, uint32_t seed, bool reverse = false) {
    std::mt19937 rng(seed);
    std::vector<uint64_t> slots(disk_size / slot);
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), rng);
    std::vector<Extent> out;
    uint64_t remaining = length;
    for (size_t i = 0; remaining > 0; ++i) {
        if (i == slots.size()) throw std::logic_error("scattered: disk too small");
        std::uniform_int_distribution<uint64_t> sectors(1, slot / 512);
        // The first extent runs to the end of its slot so that its end is aligned.
        const uint64_t skip = out.empty() ? head : 0;
        const uint64_t take = std::min(remaining, out.empty() ? slot - skip : sectors(rng) * 512);
        out.push_back({slots[i] * slot + skip, take, false});
        remaining -= take;
    }
    if (reverse)
        std::sort(out.begin(), out.end(),
                  [](const Extent& a, const Extent& b) { return a.disk_offset > b.disk_offset; });
    return out;
}

// A loop block device over a file, detached when destroyed (or when the last user closes it).
class LoopDevice {
public:
    // Throws std::system_error if no loop device can be attached. direct_io: the loop device
    // reads and writes its backing file with direct I/O (losetup --direct-io=on, as vpipe-lab).
    explicit LoopDevice(const std::string& backing, bool direct_io = false) {
        const int ctl = ::open("/dev/loop-control", O_RDWR | O_CLOEXEC);
        if (ctl < 0) throw std::system_error(errno, std::generic_category(), "/dev/loop-control");
        const int file = ::open(backing.c_str(), O_RDWR | O_CLOEXEC);
        int err = errno;
        for (int attempt = 0; file >= 0 && attempt < 20 && fd_ < 0; ++attempt) {
            const int nr = ::ioctl(ctl, LOOP_CTL_GET_FREE);
            if (nr < 0) {
                err = errno;
                break;
            }
            path = "/dev/loop" + std::to_string(nr);
            const int dev = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
            if (dev < 0) {
                err = errno;
                continue;
            }
            loop_config config{};
            config.fd = static_cast<uint32_t>(file);
            config.info.lo_flags = LO_FLAGS_AUTOCLEAR | (direct_io ? LO_FLAGS_DIRECT_IO : 0);
            if (::ioctl(dev, LOOP_CONFIGURE, &config) == 0) {
                fd_ = dev;
            } else {
                err = errno;  // EBUSY: someone else took it meanwhile; try the next free one
                ::close(dev);
            }
        }
        if (file >= 0) ::close(file);
        ::close(ctl);
        if (fd_ < 0) throw std::system_error(err, std::generic_category(), "attach loop device");
    }
    ~LoopDevice() {
        ::ioctl(fd_, LOOP_CLR_FD, 0);
        ::close(fd_);
    }
    LoopDevice(const LoopDevice&) = delete;
    LoopDevice& operator=(const LoopDevice&) = delete;

    std::string path;

private:
    int fd_ = -1;
};

// A loop device over `backing`, or nullptr with *why set (no loop device here: tests skip).
inline std::unique_ptr<LoopDevice> try_loop(const std::string& backing, bool direct_io, std::string* why) {
    try {
        return std::make_unique<LoopDevice>(backing, direct_io);
    } catch (const std::system_error& e) {
        *why = std::string("no loop device available: ") + e.what();
        return nullptr;
    }
}

}  // namespace vpipe::engine::test
