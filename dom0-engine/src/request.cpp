#include "request.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "protocol/check.h"

namespace vpipe::engine {
namespace {

struct LookupArg {
    const DiskLookup* disks;
};

int disk_cb(void* arg, uint32_t vdev, vpipe_check_disk* out) {
    auto limits = (*static_cast<LookupArg*>(arg)->disks)(vdev);
    if (!limits) return -EPERM;
    out->size = limits->size;
    out->writable = limits->writable ? 1 : 0;
    return 0;
}

FileEndpoint file_endpoint(std::span<const uint8_t> desc, const vpipe_checked_ep& ep) {
    FileEndpoint f;
    f.vdev = ep.vdev;
    f.extents.reserve(ep.nr_segments);
    for (uint32_t i = 0; i < ep.nr_segments; ++i) {
        vpipe_segment s;
        vpipe_desc_segment(desc.data(), ep.first_segment + i, &s);
        const bool zero = (s.flags & VPIPE_SEG_ZERO) != 0;
        f.extents.push_back(Extent{zero ? 0 : s.disk_offset, s.length, zero});
    }
    return f;
}

// Copies [off, off + n) of the area (pages named by `area`) into `out`.
int copy_area(const std::vector<uint32_t>& area, const PageCopier& copy, uint64_t off, uint64_t n,
              std::vector<uint8_t>* out, bool* bad_page) {
    out->resize(static_cast<size_t>(n));
    std::vector<uint8_t> page(VPIPE_PAGE_SIZE);
    uint64_t done = 0;
    while (done < n) {
        const uint64_t at = off + done;
        const size_t idx = static_cast<size_t>(at / VPIPE_PAGE_SIZE);
        const uint32_t in = static_cast<uint32_t>(at % VPIPE_PAGE_SIZE);
        const uint64_t m = std::min<uint64_t>(n - done, VPIPE_PAGE_SIZE - in);
        if (idx >= area.size()) return -EINVAL;
        if (copy(area[idx], page.data()) < 0) {
            if (bad_page) *bad_page = true;
            return -EINVAL;
        }
        std::memcpy(out->data() + done, page.data() + in, static_cast<size_t>(m));
        done += m;
    }
    return 0;
}

}  // namespace

VmIdentity VmIdentity::from_ip_string(const std::string& ip) {
    VmIdentity id;
    std::array<uint8_t, 4> a{};
    if (!ip.empty() && ::inet_pton(AF_INET, ip.c_str(), a.data()) == 1) id.ipv4 = a;
    return id;
}

int check_request(const vpipe_request& req) { return vpipe_check_request(&req); }

int parse_request(const vpipe_request& req, std::span<const uint8_t> desc,
                  const DiskLookup& disks, ParsedRequest* out, const VmIdentity& vm,
                  std::span<const uint32_t> refs) {
    if (int r = check_request(req); r < 0) return r;
    out->id = req.id;
    out->op = req.op;
    out->length = req.length;
    out->preparing = (req.flags & VPIPE_REQF_PREPARING) != 0;
    if (req.op == VPIPE_OP_NOP) return 0;
    if (desc.size() < req.desc_bytes) return -EINVAL;

    LookupArg arg{&disks};
    vpipe_check_ctx ctx{};
    ctx.disk = disk_cb;
    ctx.arg = &arg;
    if (vm.ipv4) {
        ctx.have_ipv4 = 1;
        std::memcpy(ctx.ipv4, vm.ipv4->data(), 4);
    }
    vpipe_checked c{};
    int r = vpipe_check_desc(&req, desc.data(), refs.empty() ? nullptr : refs.data(),
                             static_cast<uint32_t>(refs.size()), &ctx, &c);
    if (r < 0) return r;

    vpipe_desc_header h;
    std::memcpy(&h, desc.data(), sizeof(h));
    out->area.clear();
    if (req.flags & VPIPE_REQF_INDIRECT)
        out->area.assign(refs.begin(), refs.begin() + c.area_pages);
    else
        out->area.assign(req.page, req.page + req.nr_pages);
    if (c.src.kind == VPIPE_EP_FILE) out->src_file = file_endpoint(desc, c.src);
    if (c.dst.kind == VPIPE_EP_FILE) out->dst_file = file_endpoint(desc, c.dst);
    if (c.src.kind == VPIPE_EP_SOCKET) {
        out->src_sock = SocketEndpoint{};
        out->src_sock.tcp = h.src.tcp;
        out->src_sock.room = c.src.room;
    }
    if (c.dst.kind == VPIPE_EP_SOCKET) {
        out->dst_sock = SocketEndpoint{};
        out->dst_sock.tcp = h.dst.tcp;
        out->dst_sock.room = c.dst.room;
        out->dst_sock.tail_len = h.dst.tail_len;
    }
    return 0;
}

int load_request(const vpipe_request& req, const PageCopier& copy, const DiskLookup& disks,
                 const VmIdentity& vm, ParsedRequest* out, bool* bad_page) {
    if (bad_page) *bad_page = false;
    if (int r = check_request(req); r < 0) return r;
    if (req.op == VPIPE_OP_NOP) return parse_request(req, {}, disks, out, vm);
    // The area's page references: page[] itself, or the indirect pages' lists.
    std::vector<uint32_t> refs;
    if (req.flags & VPIPE_REQF_INDIRECT) {
        std::vector<uint8_t> ind(size_t{req.nr_pages} * VPIPE_PAGE_SIZE);
        for (unsigned i = 0; i < req.nr_pages; ++i) {
            if (copy(req.page[i], ind.data() + size_t{i} * VPIPE_PAGE_SIZE) < 0) {
                if (bad_page) *bad_page = true;
                return -EINVAL;
            }
        }
        refs.resize(size_t{req.nr_pages} * VPIPE_REFS_PER_PAGE);
        uint32_t n = 0;
        if (vpipe_check_indirect(&req, ind.data(), refs.data(), &n) < 0) return -EINVAL;
        refs.resize(n);
    } else {
        refs.assign(req.page, req.page + req.nr_pages);
    }
    // The descriptor stream: the first desc_bytes of the area.
    std::vector<uint8_t> desc;
    if (int r = copy_area(refs, copy, 0, req.desc_bytes, &desc, bad_page); r < 0) return r;
    int r = parse_request(req, desc, disks, out, vm,
                          (req.flags & VPIPE_REQF_INDIRECT) ? std::span<const uint32_t>(refs)
                                                            : std::span<const uint32_t>());
    if (r < 0) return r;
    // What the socket rooms carry in: send queue, receive queue, (destination) tail.
    for (SocketEndpoint* s : {&out->src_sock, &out->dst_sock}) {
        if (s->room == 0) continue;
        uint64_t off = s->tcp.carry_offset;
        if ((r = copy_area(out->area, copy, off, s->tcp.sndq_len, &s->sndq, bad_page)) < 0) return r;
        off += s->tcp.sndq_len;
        if ((r = copy_area(out->area, copy, off, s->tcp.rcvq_len, &s->rcvq, bad_page)) < 0) return r;
        off += s->tcp.rcvq_len;
        if ((r = copy_area(out->area, copy, off, s->tail_len, &s->tail, bad_page)) < 0) return r;
    }
    return 0;
}

}  // namespace vpipe::engine
