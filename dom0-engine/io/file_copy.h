// copy_extents: the engine's file -> file, from extents on one disk image to extents on another
// (or the same) image, in windows of one PagePool buffer.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <span>

#include "io/block_io.h"
#include "io/disk_image.h"
#include "io/extent.h"
#include "io/page_pool.h"

namespace vpipe::engine {

// Told the bytes of each window once they are written (the credit scheduler); may block.
using ChargeFn = std::function<void(uint64_t bytes)>;

// Asked before every batch of writes into the destination: 0 to go on, or a negative errno that
// ends the copy there, nothing more written (the guest abandoned the request: VPIPE_EPF_ABANDONED).
using WriteGate = std::function<int()>;

// How long copy_extents waits for a pool buffer before giving up with -ENOSPC.
inline constexpr std::chrono::milliseconds kCopyBufferWait{100};

// Copies `length` stream bytes from src_ext on src to dst_ext on dst, then flushes dst.
// Returns 0 or a negative errno: -EINVAL unless both extent lists total `length`; -ENOSPC if no
// pool buffer came within buffer_wait; -ENOMEM if slicing the extent lists cannot allocate;
// otherwise what BlockIo returned (-EROFS, -ERANGE, -EIO...).
// *moved (if not null) is set to the bytes durably written: `length` on success; on an error the
// bytes of the windows written before the failing one (0 if they could not be flushed).
// Exceptions thrown by `charge` propagate (no I/O is in flight when it is called).
// Uses a second pool buffer, when one is free at once, to read window k+1 while writing window k.
// `may_write` (if set) is asked before each window's write; its error ends the copy with the
// windows written before (flushed) as *moved.
int copy_extents(BlockIo& io, PagePool& pool, DiskImage& src, std::span<const Extent> src_ext,
                 DiskImage& dst, std::span<const Extent> dst_ext, uint64_t length,
                 const ChargeFn& charge, uint64_t* moved,
                 std::chrono::milliseconds buffer_wait = kCopyBufferWait, const WriteGate& may_write = {});

}  // namespace vpipe::engine
