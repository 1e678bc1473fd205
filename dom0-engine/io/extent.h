// Extents: where the bytes of a file endpoint live on a VM's virtual disk, in stream order.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace vpipe::engine {

struct Extent {
    uint64_t disk_offset;  // byte offset in the disk image; ignored when `zero`
    uint64_t length;       // bytes of the stream this extent covers
    bool zero;             // hole / unwritten extent: reads as zeros

    bool operator==(const Extent&) const = default;
};

// Sum of the extents' lengths.
uint64_t total_length(std::span<const Extent> ext);

// The extents covering stream bytes [stream_offset, stream_offset + length), the first and last
// trimmed to that range. Empty for length 0. Throws std::out_of_range unless the range lies
// within total_length(ext).
std::vector<Extent> slice_extents(std::span<const Extent> ext, uint64_t stream_offset,
                                  uint64_t length);

}  // namespace vpipe::engine
