#include "io/extent.h"

#include <algorithm>
#include <stdexcept>

namespace vpipe::engine {

uint64_t total_length(std::span<const Extent> ext) {
    uint64_t total = 0;
    for (const Extent& e : ext) total += e.length;
    return total;
}

std::vector<Extent> slice_extents(std::span<const Extent> ext, uint64_t stream_offset,
                                  uint64_t length) {
    const uint64_t total = total_length(ext);
    if (stream_offset > total || length > total - stream_offset)
        throw std::out_of_range("slice_extents: range outside the extent list");

    std::vector<Extent> out;
    uint64_t skip = stream_offset;  // bytes still to skip before the slice starts
    uint64_t want = length;         // bytes still to take
    for (const Extent& e : ext) {
        if (want == 0) break;
        if (skip >= e.length) {
            skip -= e.length;
            continue;
        }
        const uint64_t take = std::min(e.length - skip, want);
        out.push_back({e.zero ? e.disk_offset : e.disk_offset + skip, take, e.zero});
        skip = 0;
        want -= take;
    }
    return out;
}

}  // namespace vpipe::engine
