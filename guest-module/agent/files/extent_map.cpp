#include "files/extent_map.h"

#include <fcntl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <limits>
#include <vector>

namespace vpipe::agent {
namespace {

constexpr uint32_t kFiemapBatch = 256;  // extents per ioctl: 14 KiB of buffer
constexpr uint64_t kSplitAlign = 4096;

// Extent flags meaning "these bytes are not plain data at fe_physical on the device".
constexpr uint32_t kNotPlainFlags = FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_ENCODED |
                                    FIEMAP_EXTENT_DATA_ENCRYPTED | FIEMAP_EXTENT_NOT_ALIGNED |
                                    FIEMAP_EXTENT_DATA_INLINE | FIEMAP_EXTENT_DATA_TAIL;

// Appends a piece, merging it into the previous one when the two are contiguous on disk
// (or both zero).
void append(std::vector<Segment>* segs, uint64_t disk_offset, uint64_t length, bool zero) {
    if (length == 0) return;
    if (!segs->empty()) {
        Segment& last = segs->back();
        if (last.zero && zero) {
            last.length += length;
            return;
        }
        if (!last.zero && !zero && last.disk_offset + last.length == disk_offset) {
            last.length += length;
            return;
        }
    }
    segs->push_back(Segment{zero ? 0 : disk_offset, length, zero});
}

bool on_realtime_device(int fd) {
#ifdef FS_XFLAG_REALTIME
    struct fsxattr fsx {};
    if (::ioctl(fd, FS_IOC_FSGETXATTR, &fsx) == 0) return (fsx.fsx_xflags & FS_XFLAG_REALTIME) != 0;
#else
    (void)fd;
#endif
    return false;
}

}  // namespace

int for_each_fiemap_extent(int fd, uint64_t offset, uint64_t length,
                           const std::function<int(const struct fiemap_extent&)>& visit) {
    if (length == 0) return 0;
    const uint64_t end = offset + length;
    std::vector<uint64_t> buf((sizeof(struct fiemap) + kFiemapBatch * sizeof(struct fiemap_extent)) /
                                  sizeof(uint64_t) + 1);
    auto* fm = reinterpret_cast<struct fiemap*>(buf.data());
    uint64_t cursor = offset;
    while (cursor < end) {
        *fm = {};
        fm->fm_start = cursor;
        fm->fm_length = end - cursor;
        fm->fm_flags = 0;  // no FIEMAP_FLAG_SYNC: the caller flushed already
        fm->fm_extent_count = kFiemapBatch;
        if (::ioctl(fd, FS_IOC_FIEMAP, fm) != 0) {
            int err = errno;
            if (err == ENOTTY || err == EOPNOTSUPP || err == EBADR) return -EOPNOTSUPP;
            return -err;
        }
        if (fm->fm_mapped_extents == 0) break;
        const struct fiemap_extent* ext = fm->fm_extents;
        for (uint32_t i = 0; i < fm->fm_mapped_extents; ++i) {
            if (int r = visit(ext[i])) return r;
        }
        const struct fiemap_extent& last = ext[fm->fm_mapped_extents - 1];
        if ((last.fe_flags & FIEMAP_EXTENT_LAST) || fm->fm_mapped_extents < kFiemapBatch) break;
        uint64_t next = last.fe_logical + last.fe_length;
        if (next <= cursor) return -EIO;  // the filesystem went backwards: don't loop forever
        cursor = next;
    }
    return 0;
}

int map_file_range(int fd, uint64_t offset, uint64_t length, const DiskTable& disks,
                   FileExtents* out, bool unwritten_as_data) {
    if (!out) return -EINVAL;
    out->segments.clear();
    out->fiemap_extents = 0;
    struct stat st;
    if (::fstat(fd, &st) != 0) return -errno;
    if (!S_ISREG(st.st_mode)) return -EINVAL;
    const DiskInfo* disk = disks.find_by_devno(st.st_dev);
    if (!disk) return -ENXIO;
    out->vdev = disk->vdev;
    if (offset > std::numeric_limits<uint64_t>::max() - length) return -EINVAL;
    if (offset + length > static_cast<uint64_t>(st.st_size)) return -EINVAL;
    if (length == 0) return 0;
    if (on_realtime_device(fd)) return -EOPNOTSUPP;

    const uint64_t end = offset + length;
    std::vector<Segment> raw;
    uint64_t cursor = offset;  // everything before it is accounted for
    uint32_t count = 0;
    int r = for_each_fiemap_extent(fd, offset, length, [&](const struct fiemap_extent& e) -> int {
        ++count;
        if (e.fe_flags & FIEMAP_EXTENT_DELALLOC) return -EAGAIN;  // reported with UNKNOWN too
        if (e.fe_flags & kNotPlainFlags) return -EOPNOTSUPP;
        const uint64_t e_end = e.fe_logical + e.fe_length;
        if (e_end <= cursor) return 0;  // already covered (batch overlap)
        const uint64_t from = std::max<uint64_t>(cursor, e.fe_logical);
        const uint64_t to = std::min<uint64_t>(end, e_end);
        if (from > cursor) append(&raw, 0, std::min(from, end) - cursor, true);  // hole
        if (from < to) {
            const bool zero = !unwritten_as_data && (e.fe_flags & FIEMAP_EXTENT_UNWRITTEN) != 0;
            append(&raw, e.fe_physical + (from - e.fe_logical), to - from, zero);
        }
        cursor = std::max(cursor, std::min(to, end));
        return 0;
    });
    out->fiemap_extents = count;
    if (r != 0) return r;
    if (cursor < end) append(&raw, 0, end - cursor, true);  // trailing hole
    out->segments = normalize_segments(raw, disk->partition_offset);
    return 0;
}

std::vector<Segment> normalize_segments(const std::vector<Segment>& raw, uint64_t partition_offset) {
    std::vector<Segment> merged;
    merged.reserve(raw.size());
    for (const Segment& s : raw) append(&merged, s.disk_offset, s.length, s.zero);

    std::vector<Segment> out;
    out.reserve(merged.size());
    for (Segment s : merged) {
        while (s.length > kMaxSegmentLength) {
            // Cut data at an aligned disk offset so inner boundaries obey the ring's alignment
            // rule (only the first start and the last end of an endpoint may be unaligned).
            uint64_t piece = s.zero ? kMaxSegmentLength
                                    : (s.disk_offset + kMaxSegmentLength) / kSplitAlign * kSplitAlign -
                                          s.disk_offset;
            out.push_back(Segment{s.zero ? 0 : s.disk_offset + partition_offset, piece, s.zero});
            if (!s.zero) s.disk_offset += piece;
            s.length -= piece;
        }
        out.push_back(Segment{s.zero ? 0 : s.disk_offset + partition_offset, s.length, s.zero});
    }
    return out;
}

int flush_range(int fd, uint64_t offset, uint64_t length) {
    if (length == 0) return 0;  // sync_file_range would read 0 as "to EOF"
    constexpr uint64_t kMaxOff = static_cast<uint64_t>(std::numeric_limits<off_t>::max());
    if (offset > kMaxOff) return -EINVAL;
    if (length > kMaxOff - offset) length = kMaxOff - offset;
    if (::sync_file_range(fd, static_cast<off_t>(offset), static_cast<off_t>(length),
                          SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                              SYNC_FILE_RANGE_WAIT_AFTER) != 0)
        return -errno;
    // Resolves what sync_file_range leaves open: delalloc extents are allocated at writeback but
    // their metadata (and unwritten->written conversions) are committed only by the journal.
    if (::fdatasync(fd) != 0) return -errno;
    return 0;
}

}  // namespace vpipe::agent
