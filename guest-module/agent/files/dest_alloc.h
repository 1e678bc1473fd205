// Destination blocks for the engine to write into (socket->file and file->file operations).
//
// WHY THIS IS HARD. The engine writes the disk image at the extents the guest names, bypassing
// the guest's filesystem. So the guest must hand out blocks the filesystem already considers
// WRITTEN: an extent that is merely allocated is useless. fallocate(2) on ext4/XFS allocates
// UNWRITTEN extents -- blocks that read as zeros whatever the disk holds, until the filesystem
// itself writes them and flips the flag. That flag exists precisely so that allocating space never
// exposes stale data of deleted files; no stock-kernel interface turns it off without writing
// (FALLOC_FL_NO_HIDE_STALE was proposed for exactly this and rejected). The paper patched ext3
// for it (ext3_vpipe_dio_start() allocates blocks inside a journal transaction with the inode on
// the orphan list; ext3_vpipe_dio_end() commits, extends the size or truncates the surplus).
// Without a kernel patch, the blocks must be made written by writing them. Strategies, in order:
//
//  (a) FALLOC_FL_WRITE_ZEROES (Linux 6.17+): the filesystem allocates WRITTEN extents and has
//      the device zero them with a write-zeroes command that unmaps -- no data crosses the bus.
//      Needs device support (write_zeroes_unmap_max_bytes > 0: NVMe deallocate+zeroes, thin
//      LVM, loop over a file that supports it, virtio-blk with the feature). Probed once per
//      filesystem; the verdict is cached. Cost: metadata only, when the device is honest.
//  (b) zero-fill: fallocate(KEEP_SIZE) the range (one allocation, contiguous), then write zeros
//      with O_DIRECT from one shared 1 MiB zeroed buffer into every hole/unwritten block of the
//      range. Cost: the guest writes `length` bytes of zeros to its virtual disk -- the same disk
//      bandwidth as the data itself (the engine then writes the data: the disk sees 2x), no data
//      copies through the guest and little guest CPU (O_DIRECT, no page cache). It is NOT a fast
//      path; it is counted (DestPrep::zero_filled, VPIPE_PATH_ZERO_FILL) and reported as such.
//      Measured in the lab (ext4 on loop, direct I/O, 6.18, WRITE_ZEROES unsupported there):
//      256 MiB in 0.34-0.42 s (630-800 MB/s), ~0.016 s of agent CPU. See docs/append.md.
//
// Only blocks that are holes or unwritten are ever zeroed, and writing zeros into them never
// changes what the file reads (they read as zeros already). Blocks holding data -- e.g. the
// partial block at an unaligned old EOF -- are left alone: the engine updates them by
// read-modify-write on the image. The block containing an unaligned old EOF is made to hold
// zeros past the old EOF (a small buffered write, flushed), so extending the size later exposes
// zeros, never stale bytes.
//
// CRASH BEHAVIOUR. prepare_destination grows the file (zero-fill and write-zeroes write past EOF):
// a crash between prepare and finish leaves the file longer, with zeros (never stale data: the
// zeros are written, or the extents are unwritten) where the engine had not written yet; the
// extent conversions are committed by fdatasync at the end of prepare. finish_destination drops
// the guest's cached pages of the range, sets the size to max(old_size, offset+written) -- giving
// back the surplus blocks after a short write -- and fdatasyncs. The engine reports bytes as moved
// only once they are durable on the image, so a crash after finish loses nothing acknowledged.
//
// WHAT WOULD REMOVE THE COST. A write-zeroes-unmap capable virtual disk (then (a) is metadata
// only: e.g. a Xen vbd on thin storage exposing it, or the loop device over a backing file whose
// filesystem supports FALLOC_FL_WRITE_ZEROES), or a filesystem hook like the paper's
// vpipe_dio_start/end (allocate blocks marked written inside a transaction, orphan-listed until
// the engine finished). That hook needs a kernel patch: ext4's block allocator is not exported
// to modules, so the guest kernel module cannot provide it on a stock kernel either.
//
// Holding: prepare/finish run their own fallocate/writes/ftruncate through
// FileHold::with_lifted(), so they work on a file the caller holds. Map the destination with
// map_file_range AFTER prepare_destination returned (the hold is back in force then) and refuse
// a mapping that contains a zero segment.
#pragma once

#include <sys/types.h>

#include <cstdint>

namespace vpipe::agent {

struct DestPrep {
    uint64_t old_size;      // file size before prepare (finish restores/extends from it)
    uint64_t zero_filled;   // bytes of zeros the guest wrote to get written blocks
    uint64_t write_zeroes;  // bytes allocated with FALLOC_FL_WRITE_ZEROES
    uint32_t paths;         // VPIPE_PATH_ZERO_FILL / VPIPE_PATH_WRITE_ZEROES (abi/ioctl.h)
};

// Makes every block of [offset, offset+length) of the regular file `fd` (opened for writing) a
// written block, without changing what the file reads below the old EOF. After it returns 0,
// map_file_range over the range yields only data (non-zero) segments; the file size may have
// grown (old_size records it). Returns 0 or -errno:
//   -EBADF      fd not open for writing          -EPERM  immutable (not by our hold)/append-only
//   -EINVAL     bad range, not a regular file, or O_APPEND fd with offset != size
//   -EOPNOTSUPP not ext4/XFS (CoW or unknown filesystems can't be written in place), data
//               journaling, XFS realtime, or extents that can't be unshared
//   -ENOSPC / -EIO ...  from the filesystem; on failure the surplus allocation is given back.
int prepare_destination(int fd, uint64_t offset, uint64_t length, DestPrep* out);

// The same in two halves, for a destination the guest readies while the engine works (socket ->
// file, VPIPE_REQF_PREPARING): prepare_destination_allocated() does everything but the
// zero-fill -- the blocks are allocated (unwritten ones stay unwritten; map them with
// map_file_range(..., unwritten_as_data)) and the size covers the range --, then
// fill_destination() zero-fills the unwritten blocks of each piece, in stream order (a piece's
// ends are rounded out to whole blocks), and commit_destination() makes the conversions durable
// and checks that no block of the range is left unwritten (-EIO). On any failure, finish with
// finish_destination(written = what the engine wrote) as after prepare_destination().
int prepare_destination_allocated(int fd, uint64_t offset, uint64_t length, DestPrep* out);
int fill_destination(int fd, uint64_t offset, uint64_t length, DestPrep* out);
int commit_destination(int fd, uint64_t offset, uint64_t length);

// After the engine wrote `written` bytes (== length on success) of [offset, offset+length):
// drops the guest's cached pages of the range, sets the size to max(prep.old_size,
// offset+written) -- shrinking back and giving the surplus blocks back if allocation made the
// file larger than the data -- and fdatasyncs. Returns 0 or -errno; -EBUSY if cached pages of the
// range could not be dropped (mapped by a process: they may shadow the new data).
int finish_destination(int fd, uint64_t offset, uint64_t length, uint64_t written,
                       const DestPrep& prep);

// Process-wide byte counters, for stats (vpipe_ioc_stats.bytes_zero_filled / bytes_write_zeroes).
struct DestAllocCounters {
    uint64_t zero_filled_bytes;
    uint64_t write_zeroes_bytes;
    uint64_t prepared_bytes;  // sum of the lengths prepare_destination was asked for
};
DestAllocCounters dest_alloc_counters();

// The cached FALLOC_FL_WRITE_ZEROES verdict for the filesystem on `fs_dev` (st_dev).
enum class WriteZeroesSupport { kUnknown, kSupported, kUnsupported };
WriteZeroesSupport write_zeroes_support(dev_t fs_dev);

}  // namespace vpipe::agent
