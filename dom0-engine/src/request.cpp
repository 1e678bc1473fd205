#include "request.h"

#include <arpa/inet.h>

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

bool valid_remote_ipv4(const uint8_t* a) {
    if (a[0] == 0 || a[0] == 127 || a[0] >= 224) return false;  // 0/8, loopback, multicast+
    for (int i = 4; i < 16; ++i)
        if (a[i]) return false;
    return true;
}

int parse_socket_endpoint(const vpipe_endpoint& ep, const VmIdentity& vm) {
    if (ep.vdev || ep.first_segment || ep.nr_segments) return -EINVAL;
    if (!all_zero(ep.reserved, sizeof(ep.reserved))) return -EINVAL;
    const vpipe_tcp_state& t = ep.tcp;
    if (!all_zero(t.reserved, sizeof(t.reserved))) return -EINVAL;
    if (t.family != VPIPE_AF_INET && t.family != VPIPE_AF_INET6) return -EINVAL;
    if (t.local_port == 0 || t.remote_port == 0) return -EINVAL;
    if (t.options & ~(VPIPE_TCPOPT_SACK | VPIPE_TCPOPT_TIMESTAMP | VPIPE_TCPOPT_WSCALE)) return -EINVAL;
    if (t.options & VPIPE_TCPOPT_WSCALE) {
        if (t.snd_wscale > 14 || t.rcv_wscale > 14) return -EINVAL;
    } else if (t.snd_wscale || t.rcv_wscale) {
        return -EINVAL;
    }
    if (t.mss < 64 || t.mss > 65535) return -EINVAL;
    if (t.sndq_len != 0 || t.rcvq_len != 0) return -EINVAL;  // requests carry no queues
    if (t.carry_offset % 8 != 0) return -EINVAL;
    // the addresses: the VM's own, towards a unicast peer
    if (t.family == VPIPE_AF_INET6) return -EPERM;  // the VM has no IPv6 identity configured
    if (!vm.ipv4) return -EPERM;
    if (std::memcmp(t.local_addr, vm.ipv4->data(), 4) != 0 || !all_zero(t.local_addr + 4, 12))
        return -EPERM;
    if (!valid_remote_ipv4(t.remote_addr)) return -EPERM;
    if (std::memcmp(t.remote_addr, t.local_addr, 4) == 0) return -EPERM;
    return 0;
}

}  // namespace

VmIdentity VmIdentity::from_ip_string(const std::string& ip) {
    VmIdentity id;
    std::array<uint8_t, 4> a{};
    if (!ip.empty() && ::inet_pton(AF_INET, ip.c_str(), a.data()) == 1) id.ipv4 = a;
    return id;
}

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
                  const DiskLookup& disks, ParsedRequest* out, const VmIdentity& vm) {
    if (int r = check_request(req); r < 0) return r;
    out->id = req.id;
    out->op = req.op;
    out->length = req.length;
    out->nr_pages = req.nr_pages;
    for (unsigned i = 0; i < VPIPE_DESC_MAX_PAGES; ++i) out->pages[i] = req.page[i];
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
        // Socket endpoints: the flow must be the VM's own; the carry rooms lie inside the
        // pages, after the stream in use, in endpoint order, each at least VPIPE_CARRY_MIN.
        const uint64_t end = uint64_t{req.nr_pages} * VPIPE_PAGE_SIZE;
        uint64_t prev = req.desc_bytes;
        const vpipe_endpoint* eps[2] = {&h.src, &h.dst};
        uint64_t starts[2] = {0, 0};
        for (int i = 0; i < 2; ++i) {
            if (eps[i]->kind != VPIPE_EP_SOCKET) continue;
            if (int r = parse_socket_endpoint(*eps[i], vm)) return r;
            starts[i] = eps[i]->tcp.carry_offset;
            if (starts[i] < prev || starts[i] >= end) return -EINVAL;
            prev = starts[i] + VPIPE_CARRY_MIN;
        }
        if (prev > end) return -EINVAL;
        const bool src_sock = h.src.kind == VPIPE_EP_SOCKET, dst_sock = h.dst.kind == VPIPE_EP_SOCKET;
        if (src_sock) {
            out->src_tcp = h.src.tcp;
            out->src_room = static_cast<uint32_t>((dst_sock ? starts[1] : end) - starts[0]);
        }
        if (dst_sock) {
            out->dst_tcp = h.dst.tcp;
            out->dst_room = static_cast<uint32_t>(end - starts[1]);
        }
        if (src_sock && dst_sock &&
            std::memcmp(&h.src.tcp.local_port, &h.dst.tcp.local_port, 2 + 2) == 0 &&
            std::memcmp(h.src.tcp.remote_addr, h.dst.tcp.remote_addr, 16) == 0)
            return -EINVAL;  // one connection cannot be both ends
        // the segment array holds exactly the file endpoint's segments
        const uint32_t file_segs = src_file ? h.src.nr_segments : dst_file ? h.dst.nr_segments : 0;
        if (h.nr_segments != file_segs) return -EINVAL;
        if ((src_file && h.src.first_segment != 0) || (dst_file && h.dst.first_segment != 0))
            return -EINVAL;
    }
    return 0;
}

}  // namespace vpipe::engine
