#include "request_builder.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace vpipe::agent {
namespace {

// Stream end positions of each segment (prefix sums), for finding segments by position.
std::vector<uint64_t> stream_ends(const std::vector<Segment>& segs) {
    std::vector<uint64_t> ends;
    ends.reserve(segs.size());
    uint64_t pos = 0;
    for (const auto& s : segs) ends.push_back(pos += s.length);
    return ends;
}

// Index of the segment holding stream byte `pos`.
size_t find_segment(const std::vector<uint64_t>& ends, uint64_t pos) {
    return static_cast<size_t>(std::upper_bound(ends.begin(), ends.end(), pos) - ends.begin());
}

void append_pieces(const std::vector<Segment>& segs, const std::vector<uint64_t>& ends,
                   uint64_t from, uint64_t to, std::vector<vpipe_segment>* out) {
    for (size_t i = find_segment(ends, from); i < segs.size() && from < to; ++i) {
        const uint64_t seg_start = ends[i] - segs[i].length;
        const uint64_t piece_end = std::min(ends[i], to);
        vpipe_segment v{};
        v.length = static_cast<uint32_t>(piece_end - from);  // <= chunk_bytes <= 1 GiB
        if (segs[i].zero) {
            v.flags = VPIPE_SEG_ZERO;
        } else {
            v.disk_offset = segs[i].disk_offset + (from - seg_start);
        }
        out->push_back(v);
        from = piece_end;
    }
}

}  // namespace

std::vector<Segment> coalesce(const std::vector<Segment>& segs) {
    std::vector<Segment> out;
    for (const auto& s : segs) {
        if (s.length == 0) continue;
        if (!out.empty()) {
            Segment& last = out.back();
            bool joinable = last.zero == s.zero &&
                            (s.zero || last.disk_offset + last.length == s.disk_offset);
            if (joinable) {
                last.length += s.length;
                continue;
            }
        }
        out.push_back(s);
    }
    return out;
}

std::vector<RingChunk> build_file_to_file(const FileExtents& src_in, const FileExtents& dst_in,
                                          uint64_t length, uint64_t chunk_bytes,
                                          size_t max_segments) {
    if (chunk_bytes == 0 || chunk_bytes > (1ull << 30) || max_segments < 4)
        throw std::invalid_argument("build_file_to_file: bad limits");
    const std::vector<Segment> src = coalesce(src_in.segments), dst = coalesce(dst_in.segments);
    const auto src_ends = stream_ends(src), dst_ends = stream_ends(dst);
    if ((src_ends.empty() ? 0 : src_ends.back()) != length ||
        (dst_ends.empty() ? 0 : dst_ends.back()) != length)
        throw std::invalid_argument("build_file_to_file: extents do not cover the length");

    std::vector<RingChunk> chunks;
    for (uint64_t p = 0; p < length;) {
        uint64_t q = std::min(length, p + chunk_bytes);
        const size_t si = find_segment(src_ends, p), di = find_segment(dst_ends, p);
        auto touched = [&](uint64_t end) {
            return find_segment(src_ends, end - 1) - si + 1 + find_segment(dst_ends, end - 1) - di + 1;
        };
        if (touched(q) > max_segments) {
            // Cut where neither side needs more than half the descriptor's segments.
            const size_t half = max_segments / 2;
            uint64_t cut = q;
            if (si + half - 1 < src_ends.size()) cut = std::min(cut, src_ends[si + half - 1]);
            if (di + half - 1 < dst_ends.size()) cut = std::min(cut, dst_ends[di + half - 1]);
            q = cut;
        }
        std::vector<vpipe_segment> pieces;
        append_pieces(src, src_ends, p, q, &pieces);
        const uint32_t nsrc = static_cast<uint32_t>(pieces.size());
        append_pieces(dst, dst_ends, p, q, &pieces);
        const uint32_t ndst = static_cast<uint32_t>(pieces.size()) - nsrc;

        vpipe_desc_header h{};
        h.magic = VPIPE_DESC_MAGIC;
        h.version = VPIPE_PROTOCOL_VERSION;
        h.header_bytes = sizeof(h);
        h.nr_segments = nsrc + ndst;
        h.src.kind = VPIPE_EP_FILE;
        h.src.vdev = src_in.vdev;
        h.src.first_segment = 0;
        h.src.nr_segments = nsrc;
        h.dst.kind = VPIPE_EP_FILE;
        h.dst.vdev = dst_in.vdev;
        h.dst.first_segment = nsrc;
        h.dst.nr_segments = ndst;

        RingChunk c;
        c.stream_offset = p;
        c.length = q - p;
        c.desc.resize(sizeof(h) + pieces.size() * sizeof(vpipe_segment));
        std::memcpy(c.desc.data(), &h, sizeof(h));
        std::memcpy(c.desc.data() + sizeof(h), pieces.data(), pieces.size() * sizeof(vpipe_segment));
        chunks.push_back(std::move(c));
        p = q;
    }
    return chunks;
}

size_t max_socket_segments() {
    return (VPIPE_DESC_MAX_BYTES - 2 * kMinCarryRoom - sizeof(vpipe_desc_header)) / sizeof(vpipe_segment);
}

SocketChunk build_socket_request(uint8_t op, const FileExtents* file, uint64_t file_offset,
                                 uint64_t length, const vpipe_tcp_state* src,
                                 const vpipe_tcp_state* dst) {
    std::vector<vpipe_segment> pieces;
    if (file) {
        const std::vector<Segment> segs = coalesce(file->segments);
        const auto ends = stream_ends(segs);
        if ((ends.empty() ? 0 : ends.back()) < file_offset + length)
            throw std::invalid_argument("build_socket_request: extents do not cover the range");
        append_pieces(segs, ends, file_offset, file_offset + length, &pieces);
        if (pieces.size() > max_socket_segments())
            throw std::invalid_argument("build_socket_request: too many segments");
    }
    vpipe_desc_header h{};
    h.magic = VPIPE_DESC_MAGIC;
    h.version = VPIPE_PROTOCOL_VERSION;
    h.header_bytes = sizeof(h);
    h.nr_segments = static_cast<uint32_t>(pieces.size());
    const uint32_t stream = static_cast<uint32_t>(sizeof(h) + pieces.size() * sizeof(vpipe_segment));
    const uint32_t carry = (stream + 7u) & ~7u;
    const uint32_t end = VPIPE_DESC_MAX_BYTES;
    auto sock = [](vpipe_endpoint& ep, const vpipe_tcp_state& st, uint32_t off) {
        ep.kind = VPIPE_EP_SOCKET;
        ep.tcp = st;
        ep.tcp.sndq_len = ep.tcp.rcvq_len = 0;
        ep.tcp.carry_offset = off;
        ep.tcp.reserved[0] = ep.tcp.reserved[1] = 0;
    };
    auto filep = [&](vpipe_endpoint& ep) {
        ep.kind = VPIPE_EP_FILE;
        ep.vdev = file->vdev;
        ep.first_segment = 0;
        ep.nr_segments = static_cast<uint32_t>(pieces.size());
    };
    switch (op) {
    case VPIPE_OP_FILE_TO_SOCKET:
        filep(h.src);
        sock(h.dst, *dst, carry);
        break;
    case VPIPE_OP_SOCKET_TO_FILE:
        sock(h.src, *src, carry);
        filep(h.dst);
        break;
    case VPIPE_OP_SOCKET_TO_SOCKET: {
        const uint32_t half = ((carry + (end - carry) / 2) + 7u) & ~7u;
        sock(h.src, *src, carry);
        sock(h.dst, *dst, half);
        break;
    }
    default: throw std::invalid_argument("build_socket_request: not a socket op");
    }
    SocketChunk c;
    c.desc.resize(stream);
    std::memcpy(c.desc.data(), &h, sizeof(h));
    if (!pieces.empty())
        std::memcpy(c.desc.data() + sizeof(h), pieces.data(), pieces.size() * sizeof(vpipe_segment));
    return c;
}

int read_socket_result(std::span<const uint8_t> pages, bool source, SocketResult* out) {
    *out = SocketResult{};
    if (pages.size() < sizeof(vpipe_desc_header)) return -EPROTO;
    vpipe_desc_header h;
    std::memcpy(&h, pages.data(), sizeof(h));
    const vpipe_endpoint& ep = source ? h.src : h.dst;
    out->flags = VPIPE_EP_RESULT_FLAGS(&ep);
    if (!(out->flags & VPIPE_EPF_VALID)) return 0;
    out->st = ep.tcp;
    const uint64_t off = ep.tcp.carry_offset;
    const uint64_t n = uint64_t{ep.tcp.sndq_len} + ep.tcp.rcvq_len;
    if (off > pages.size() || n > pages.size() - off) return -EPROTO;
    out->sndq.assign(pages.begin() + off, pages.begin() + off + ep.tcp.sndq_len);
    out->rcvq.assign(pages.begin() + off + ep.tcp.sndq_len, pages.begin() + off + n);
    return 0;
}

}  // namespace vpipe::agent
