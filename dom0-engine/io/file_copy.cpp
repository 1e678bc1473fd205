#include "io/file_copy.h"

#include <algorithm>
#include <cerrno>
#include <new>
#include <optional>
#include <vector>

namespace vpipe::engine {

namespace {

// The extents of window k of the stream on both sides.
struct Window {
    uint64_t length;
    std::vector<Extent> src;
    std::vector<Extent> dst;
};

Window window(std::span<const Extent> src_ext, std::span<const Extent> dst_ext, uint64_t length,
              uint64_t window_bytes, uint64_t k) {
    const uint64_t start = k * window_bytes;
    const uint64_t len = std::min(window_bytes, length - start);
    return {len, slice_extents(src_ext, start, len), slice_extents(dst_ext, start, len)};
}

}  // namespace

int copy_extents(BlockIo& io, PagePool& pool, DiskImage& src, std::span<const Extent> src_ext,
                 DiskImage& dst, std::span<const Extent> dst_ext, uint64_t length,
                 const ChargeFn& charge, uint64_t* moved,
                 std::chrono::milliseconds buffer_wait, const WriteGate& may_write) {
    if (moved) *moved = 0;
    if (total_length(src_ext) != length || total_length(dst_ext) != length) return -EINVAL;
    if (length == 0) return 0;
    if (!dst.writable()) return -EROFS;

    std::optional<PagePool::Buffer> first = pool.get(buffer_wait);
    if (!first) return -ENOSPC;
    // Overlapping needs a second buffer; if the pool is short, go window by window instead.
    std::optional<PagePool::Buffer> second = pool.try_get();

    const uint64_t window_bytes = pool.buffer_bytes();
    const uint64_t windows = (length + window_bytes - 1) / window_bytes;
    uint64_t written = 0;
    int status = 0;
    auto gate = [&] { return may_write ? may_write() : 0; };
    auto wrote = [&](const Window& w) {
        written += w.length;
        if (charge) charge(w.length);
    };

    try {
        if (!second) {
            for (uint64_t k = 0; k < windows && status == 0; ++k) {
                const Window w = window(src_ext, dst_ext, length, window_bytes, k);
                status = io.read(src, w.src, first->data());
                if (status == 0) status = gate();
                if (status == 0) status = io.write(dst, w.dst, first->data());
                if (status == 0) wrote(w);
            }
        } else {
            uint8_t* bufs[2] = {first->data(), second->data()};
            Window cur = window(src_ext, dst_ext, length, window_bytes, 0);
            status = io.read(src, cur.src, bufs[0]);
            for (uint64_t k = 0; k < windows && status == 0; ++k) {
                uint8_t* cur_buf = bufs[k % 2];
                if ((status = gate()) != 0) break;
                if (k + 1 == windows) {
                    status = io.write(dst, cur.dst, cur_buf);
                    if (status == 0) wrote(cur);
                    break;
                }
                Window next = window(src_ext, dst_ext, length, window_bytes, k + 1);
                const BlockIo::Statuses s =
                    io.read_and_write(src, next.src, bufs[(k + 1) % 2], dst, cur.dst, cur_buf);
                if (s.write != 0) {
                    status = s.write;
                    break;
                }
                wrote(cur);
                status = s.read;
                cur = std::move(next);
            }
        }
    } catch (const std::bad_alloc&) {
        status = -ENOMEM;
    }

    // Report only bytes that are durable.
    if (written > 0) {
        if (const int r = io.flush(dst); r != 0) {
            written = 0;
            if (status == 0) status = r;
        }
    }
    if (moved) *moved = written;
    return status;
}

}  // namespace vpipe::engine
