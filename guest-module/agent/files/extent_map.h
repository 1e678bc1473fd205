// File ranges -> block extents on the VM's virtual disk (FIEMAP), and flushing a range so the
// disk holds what the page cache holds.
//
// Contract with the caller (docs/design.md, "Files: rules that keep data safe"):
//   flush_range() first (dirty pages reach the disk, delayed allocation is resolved), hold the
//   file (file_hold.h) so the mapping stays true, then map_file_range(). The mapping describes
//   the file at the moment of the call; it is only as stable as the hold.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "files/disk_table.h"

struct fiemap_extent;

namespace vpipe::agent {

// One piece of the byte stream: `length` bytes at `disk_offset` on the virtual disk, or `length`
// bytes that read as zeros (a hole or an unwritten extent; disk_offset is 0 then).
struct Segment {
    uint64_t disk_offset;
    uint64_t length;
    bool zero;
};

struct FileExtents {
    uint32_t vdev = 0;
    std::vector<Segment> segments;  // in stream order; lengths sum to the mapped length
    uint32_t fiemap_extents = 0;    // raw extents the filesystem reported (for stats)
};

// The ring's segment length is a u32: longer runs are split at 4 KiB-aligned disk offsets.
inline constexpr uint64_t kMaxSegmentLength = 1ull << 30;

// Maps exactly [offset, offset+length) of the regular file `fd` into stream-ordered segments:
// holes and unwritten extents become zero segments, physically contiguous neighbours merge, the
// first and last segments are trimmed to the byte range (so only the very first disk_offset and
// the very last end may be unaligned), no segment exceeds kMaxSegmentLength, and disk offsets
// include the partition offset. length == 0 yields no segments.
// Returns 0 or -errno:
//   -ENXIO      the file is on none of the table's disks
//   -EOPNOTSUPP the filesystem has no FIEMAP, or some block is not plain on-disk data
//               (UNKNOWN, ENCODED, DATA_ENCRYPTED, NOT_ALIGNED, DATA_INLINE, DATA_TAIL), or the
//               file lives on an XFS realtime device (offsets would be on another device)
//   -EAGAIN     delayed allocation: dirty data not flushed yet (flush_range, then retry)
//   -EINVAL     not a regular file, or the range goes past EOF (the caller clamps)
// No FIEMAP_FLAG_SYNC: flushing is the caller's job (flush_range), done once, not per call.
// `unwritten_as_data`: an unwritten extent is named by its blocks, not as zeros (a destination
// whose blocks the guest readies while dom0 works: prepare_destination_allocated()).
int map_file_range(int fd, uint64_t offset, uint64_t length, const DiskTable& disks,
                   FileExtents* out, bool unwritten_as_data = false);

// Makes the disk hold what the page cache holds for [offset, offset+length):
// sync_file_range(WAIT_BEFORE|WRITE|WAIT_AFTER), then fdatasync so delayed allocation is resolved
// and the extent metadata is committed. length == 0 does nothing. 0 or -errno.
int flush_range(int fd, uint64_t offset, uint64_t length);

// Lower level, shared with dest_alloc: calls `visit` for every raw FIEMAP extent overlapping
// [offset, offset+length), in order, batching the ioctl. A non-zero return from `visit` stops the
// walk and is returned. 0, -EOPNOTSUPP (no FIEMAP) or -errno.
int for_each_fiemap_extent(int fd, uint64_t offset, uint64_t length,
                           const std::function<int(const struct fiemap_extent&)>& visit);

// Exposed for tests: merges contiguous neighbours, splits runs longer than kMaxSegmentLength at
// 4 KiB-aligned disk offsets, then adds `partition_offset` to the data segments.
std::vector<Segment> normalize_segments(const std::vector<Segment>& raw, uint64_t partition_offset);

}  // namespace vpipe::agent
