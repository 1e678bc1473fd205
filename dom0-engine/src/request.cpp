#include "request.h"

#include <cerrno>
#include <cstring>

namespace vpipe::engine {
namespace {

bool all_zero(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; ++i)
        if (b[i]) return false;
    return true;
}

uint32_t expected_kind(uint8_t op, bool source) {
    switch (op) {
    case VPIPE_OP_FILE_TO_FILE: return VPIPE_EP_FILE;
    case VPIPE_OP_FILE_TO_SOCKET: return source ? VPIPE_EP_FILE : VPIPE_EP_SOCKET;
    case VPIPE_OP_SOCKET_TO_FILE: return source ? VPIPE_EP_SOCKET : VPIPE_EP_FILE;
    case VPIPE_OP_SOCKET_TO_SOCKET: return VPIPE_EP_SOCKET;
    default: return 0;
    }
}

int parse_file_endpoint(const vpipe_endpoint& ep, bool source, uint64_t length,
                        std::span<const vpipe_segment> segs, const DiskLookup& disks,
                        FileEndpoint* out) {
    if (!all_zero(ep.reserved, sizeof(ep.reserved))) return -EINVAL;
    if (ep.nr_segments == 0) return -EINVAL;
    // 64-bit sum: both are u32 from the guest.
    if (uint64_t{ep.first_segment} + ep.nr_segments > segs.size()) return -EINVAL;
    auto limits = disks(ep.vdev);
    if (!limits) return -EPERM;
    if (!source && !limits->writable) return -EROFS;

    out->vdev = ep.vdev;
    out->extents.clear();
    out->extents.reserve(ep.nr_segments);
    uint64_t total = 0;
    for (uint32_t i = 0; i < ep.nr_segments; ++i) {
        const vpipe_segment& s = segs[ep.first_segment + i];
        if (s.length == 0 || s.reserved0 != 0 || (s.flags & ~VPIPE_SEG_ZERO) != 0) return -EINVAL;
        const bool zero = (s.flags & VPIPE_SEG_ZERO) != 0;
        if (zero) {
            if (!source || s.disk_offset != 0) return -EINVAL;
        } else {
            if (s.disk_offset > limits->size || s.length > limits->size - s.disk_offset)
                return -ERANGE;
            if (!source) {
                // Only the ends of a destination may fall inside a sector (alignment rule).
                if (i > 0 && s.disk_offset % VPIPE_SECTOR_SIZE != 0) return -EINVAL;
                if (i + 1 < ep.nr_segments && (s.disk_offset + s.length) % VPIPE_SECTOR_SIZE != 0)
                    return -EINVAL;
            }
        }
        total += s.length;  // <= 2543 * 2^32: no overflow
        out->extents.push_back(Extent{zero ? 0 : s.disk_offset, s.length, zero});
    }
    return total == length ? 0 : -EINVAL;
}

}  // namespace

int check_request(const vpipe_request& req) {
    if (req.flags != 0 || req.reserved0 != 0) return -EINVAL;
    if (req.op == VPIPE_OP_NOP) {
        bool empty = req.length == 0 && req.nr_pages == 0 && req.desc_bytes == 0 &&
                     all_zero(req.page, sizeof(req.page));
        return empty ? 0 : -EINVAL;
    }
    if (req.op >= VPIPE_OP_MAX_) return -EINVAL;
    if (req.length == 0 || req.length > VPIPE_MAX_REQUEST_LENGTH) return -EINVAL;
    if (req.nr_pages == 0 || req.nr_pages > VPIPE_DESC_MAX_PAGES) return -EINVAL;
    if (req.desc_bytes < sizeof(vpipe_desc_header) ||
        req.desc_bytes > uint32_t{req.nr_pages} * VPIPE_PAGE_SIZE)
        return -EINVAL;
    for (unsigned i = req.nr_pages; i < VPIPE_DESC_MAX_PAGES; ++i)
        if (req.page[i] != 0) return -EINVAL;
    return 0;
}

int parse_request(const vpipe_request& req, std::span<const uint8_t> desc,
                  const DiskLookup& disks, ParsedRequest* out) {
    if (int r = check_request(req); r < 0) return r;
    out->id = req.id;
    out->op = req.op;
    out->length = req.length;
    if (req.op == VPIPE_OP_NOP) return 0;
    if (desc.size() < req.desc_bytes) return -EINVAL;

    vpipe_desc_header h;
    std::memcpy(&h, desc.data(), sizeof(h));
    if (h.magic != VPIPE_DESC_MAGIC || h.version != VPIPE_PROTOCOL_VERSION ||
        h.header_bytes != sizeof(vpipe_desc_header) || h.reserved0 != 0)
        return -EINVAL;
    if (h.nr_segments > VPIPE_DESC_MAX_SEGMENTS ||
        sizeof(h) + uint64_t{h.nr_segments} * sizeof(vpipe_segment) > req.desc_bytes)
        return -EINVAL;
    if (h.src.kind != expected_kind(req.op, true) || h.dst.kind != expected_kind(req.op, false))
        return -EINVAL;

    // The descriptor stream is our private copy; segments may be unaligned in it.
    std::vector<vpipe_segment> segs(h.nr_segments);
    if (h.nr_segments)
        std::memcpy(segs.data(), desc.data() + sizeof(h), segs.size() * sizeof(vpipe_segment));

    const bool src_file = h.src.kind == VPIPE_EP_FILE, dst_file = h.dst.kind == VPIPE_EP_FILE;
    if (src_file && dst_file) {
        // Disjoint slices of the segment array: one segment cannot describe both ends.
        uint64_t a0 = h.src.first_segment, a1 = a0 + h.src.nr_segments;
        uint64_t b0 = h.dst.first_segment, b1 = b0 + h.dst.nr_segments;
        if (a0 < b1 && b0 < a1) return -EINVAL;
    }
    if (src_file) {
        if (int r = parse_file_endpoint(h.src, true, req.length, segs, disks, &out->src_file))
            return r;
    }
    if (dst_file) {
        if (int r = parse_file_endpoint(h.dst, false, req.length, segs, disks, &out->dst_file))
            return r;
    }
    if (!src_file || !dst_file) {
        // Socket endpoints arrive with the shadow-socket work; until then refuse cleanly.
        out->src_tcp = h.src.tcp;
        out->dst_tcp = h.dst.tcp;
        return -EOPNOTSUPP;
    }
    return 0;
}

}  // namespace vpipe::engine
