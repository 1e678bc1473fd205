// fuzz_request: the engine's intake of one ring request, as VmService::handle drives it:
// check_request on the copied ring entry, then load_request (indirect pages, the descriptor
// stream, common/protocol/check.c, the bytes carried in socket rooms) over pages the guest
// controls entirely.
//
// Input: the 64-byte ring entry, then the guest's pages, 4096 bytes each (the last one padded
// with zeros). A page reference names one of those pages by index (as the shm transport does);
// any other reference is a page the guest cannot give (-EINVAL, bad_page). A request may name
// up to 10240 area pages (indirect) and carry tens of MiB in its rooms; copying all of that on
// every execution slowed fuzzing ~25x, so the harness gives at most kMaxCopies pages per request
// (the rest fail like a bad grant): every check still runs, only long copy loops are cut short.
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "request.h"

using namespace vpipe::engine;

namespace {
constexpr uint32_t kVdevRw = 51712, kVdevRo = 51728;
constexpr uint64_t kDiskSize = 1ull << 30;
constexpr unsigned kMaxCopies = 64;

[[noreturn]] void bug(const char* what) {
    __builtin_trap();
    (void)what;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < sizeof(vpipe_request)) return -1;
    vpipe_request req;
    std::memcpy(&req, data, sizeof(req));
    const uint8_t* pages = data + sizeof(req);
    const size_t bytes = size - sizeof(req);
    const size_t nr = (bytes + VPIPE_PAGE_SIZE - 1) / VPIPE_PAGE_SIZE;
    unsigned copies = 0;
    PageCopier copy = [&](uint32_t ref, void* dst) -> int {
        if (ref >= nr || ++copies > kMaxCopies) return -EINVAL;
        const size_t off = size_t{ref} * VPIPE_PAGE_SIZE;
        const size_t n = std::min<size_t>(VPIPE_PAGE_SIZE, bytes - off);
        std::memcpy(dst, pages + off, n);
        std::memset(static_cast<uint8_t*>(dst) + n, 0, VPIPE_PAGE_SIZE - n);
        return 0;
    };
    DiskLookup disks = [](uint32_t vdev) -> std::optional<DiskLimits> {
        if (vdev == kVdevRw) return DiskLimits{kDiskSize, true};
        if (vdev == kVdevRo) return DiskLimits{kDiskSize / 2, false};
        return std::nullopt;
    };
    const VmIdentity vm = VmIdentity::from_ip_string("10.0.0.2");

    if (check_request(req) < 0) return 0;   // what VmService::handle answers at once
    ParsedRequest p;
    bool bad_page = false;
    const int r = load_request(req, copy, disks, vm, &p, &bad_page);
    if (r > 0) bug("positive status");
    if (r < 0) {
        if (r != -EINVAL && r != -EPERM && r != -EROFS && r != -ERANGE) bug("unknown status");
        if (bad_page && r != -EINVAL) bug("bad page with another status");
        return 0;
    }
    // What the workers rely on once a request is accepted.
    if (p.op == VPIPE_OP_NOP) return 0;
    if (p.length == 0 || p.length > VPIPE_MAX_REQUEST_LENGTH) bug("length");
    const bool src_file = p.op == VPIPE_OP_FILE_TO_FILE || p.op == VPIPE_OP_FILE_TO_SOCKET;
    const bool dst_file = p.op == VPIPE_OP_FILE_TO_FILE || p.op == VPIPE_OP_SOCKET_TO_FILE;
    auto check_file = [&](const FileEndpoint& f, bool dst) {
        if (f.vdev != kVdevRw && f.vdev != kVdevRo) bug("foreign disk");
        if (dst && f.vdev != kVdevRw) bug("write to a read-only disk");
        const uint64_t size = f.vdev == kVdevRw ? kDiskSize : kDiskSize / 2;
        uint64_t total = 0;
        for (const auto& e : f.extents) {
            if (e.length == 0) bug("empty extent");
            if (!e.zero && (e.disk_offset > size || e.length > size - e.disk_offset)) bug("extent outside the disk");
            if (e.zero && dst) bug("zero extent in a destination");
            total += e.length;
        }
        if (total != p.length) bug("extents do not sum to the length");
    };
    auto check_sock = [&](const SocketEndpoint& s) {
        if (s.sndq.size() != s.tcp.sndq_len || s.rcvq.size() != s.tcp.rcvq_len || s.tail.size() != s.tail_len)
            bug("carried bytes");
        if (uint64_t{s.tcp.carry_offset} + s.room > p.area.size() * uint64_t{VPIPE_PAGE_SIZE})
            bug("room outside the area");
        if (uint64_t{s.tcp.sndq_len} + s.tcp.rcvq_len + s.tail_len > s.room) bug("room too small");
        if (std::memcmp(s.tcp.local_addr, "\x0a\x00\x00\x02", 4) != 0) bug("not the VM's address");
    };
    if (src_file) check_file(p.src_file, false); else check_sock(p.src_sock);
    if (dst_file) check_file(p.dst_file, true); else check_sock(p.dst_sock);
    if (p.area.empty()) bug("no area");
    return 0;
}
