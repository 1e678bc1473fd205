// Turns mapped extents into ring requests: splits one operation into requests that each move
// at most `chunk_bytes` and fit the descriptor pages, and writes their descriptor streams.
#pragma once

#include <cstdint>
#include <vector>

#include <vpipe/abi/ring.h>

#include "files/extent_map.h"

namespace vpipe::agent {

struct RingChunk {
    uint64_t stream_offset = 0;    // where this request starts in the operation's byte stream
    uint64_t length = 0;
    std::vector<uint8_t> desc;     // descriptor stream (vpipe_desc_header + segments)
};

// Merges physically contiguous neighbours (and neighbouring holes) so that no boundary
// survives that the filesystem did not put there.
std::vector<Segment> coalesce(const std::vector<Segment>& segs);

// file -> file: `src` and `dst` each describe exactly `length` bytes.
// max_segments is the per-request limit (VPIPE_DESC_MAX_SEGMENTS; smaller in tests).
std::vector<RingChunk> build_file_to_file(const FileExtents& src, const FileExtents& dst,
                                          uint64_t length, uint64_t chunk_bytes,
                                          size_t max_segments = VPIPE_DESC_MAX_SEGMENTS);

}  // namespace vpipe::agent
