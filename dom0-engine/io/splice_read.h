// splice_read: the bytes of a file endpoint's extents into a pipe, without a copy in dom0.
//
// file -> socket used to read each window into a pool buffer (O_DIRECT) and send() it: two
// copies of every byte in dom0 (the disk's DMA, then send's copy into the socket), where a
// native sendfile has one. Spliced from the image's O_DIRECT descriptor, the disk's DMA lands in
// pages the pipe then lends to the socket (splice pipe -> socket), so dom0 copies nothing; and
// since it is direct I/O the read is coherent with blkback's writes, which bypass dom0's page
// cache (the reason cache = "host" is refused for a block device).
#pragma once

#include <atomic>
#include <cstdint>
#include <span>

#include "io/disk_image.h"
#include "io/extent.h"

namespace vpipe::engine {

// Whether this kernel splices from d's O_DIRECT descriptor (probed once per disk: one aligned
// block into a scratch pipe). A kernel that cannot keeps the buffered path.
bool splice_read_supported(DiskImage& d);

// Writes the stream of `ext` (zero extents as zeros) into the blocking pipe `pipe_w`, in order:
// aligned runs by splice() from d.fd(), unaligned edges (offsets or lengths off d.alignment())
// read through an aligned bounce block. Stops early, returning -ECANCELED, once `stop` is set
// or the pipe's reader has gone (EPIPE: the caller blocks or ignores SIGPIPE). 0, or -errno of the first failure (a short read of a
// valid extent: -EIO). *done: bytes written into the pipe. Counts d.bytes_read / d.read_ops.
int splice_extents(DiskImage& d, std::span<const Extent> ext, int pipe_w, const std::atomic<bool>& stop,
                   uint64_t* done);

}  // namespace vpipe::engine
