// Validation of ring requests. The guest is untrusted: a request is copied out of shared memory
// once (the ring entry by RING_COPY_REQUEST; indirect pages, the descriptor stream and the bytes
// carried in socket rooms into private buffers), and only those private copies are checked and
// used afterwards, so the guest cannot change a field between check and use (XSA-155).
//
// The checks themselves are common/protocol/check.c, the one validator of the protocol (the
// kernel module's test engine runs the same code); this file turns a checked request into the
// engine's own structures.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <vpipe/abi/ring.h>

#include "io/extent.h"

namespace vpipe::engine {

// What validation needs to know about one of the requesting VM's disks.
struct DiskLimits {
    uint64_t size = 0;
    bool writable = false;
};
// Resolves a vdev of the requesting VM; nullopt when the VM has no such disk.
using DiskLookup = std::function<std::optional<DiskLimits>(uint32_t vdev)>;

struct FileEndpoint {
    uint32_t vdev = 0;
    std::vector<Extent> extents;   // stream order, validated against the disk
};

// A socket endpoint: the frozen connection, its carry room and what it carried in.
struct SocketEndpoint {
    vpipe_tcp_state tcp{};        // as the guest froze it (queue lengths, carry_offset)
    uint32_t room = 0;            // bytes of its room in the area, from tcp.carry_offset
    uint32_t tail_len = 0;        // destination: bytes to send after the data
    // the carried bytes (load_request copies them; parse_request leaves them empty)
    std::vector<uint8_t> sndq, rcvq, tail;
};

// The requesting VM's network identity: socket endpoints must use these addresses.
struct VmIdentity {
    std::optional<std::array<uint8_t, 4>> ipv4;   // from the toolstack (lab config / xenstore)
    static VmIdentity from_ip_string(const std::string& ip);  // empty / invalid: no address
};

struct ParsedRequest {
    uint64_t id = 0;
    uint8_t op = VPIPE_OP_NOP;
    uint64_t length = 0;
    // socket -> file: the guest readies the destination while dom0 works; dom0 receives only
    // below the watermark it publishes (vpipe/abi/ring.h, VPIPE_REQF_PREPARING)
    bool preparing = false;
    FileEndpoint src_file, dst_file;          // for file endpoints
    SocketEndpoint src_sock, dst_sock;        // for socket endpoints
    // where results go back (socket endpoints): the references of the area's pages, in order
    std::vector<uint32_t> area;
};

// First look at a copied ring entry, before any page is touched.
// 0, or -EINVAL naming nothing more: the response carries only the status.
int check_request(const vpipe_request& req);

// Checks the descriptor stream `desc` (the private copy of the first desc_bytes of the area)
// and fills `out` (carried bytes excepted). `refs`: the area's page references an indirect
// request's indirect pages listed (every slot they offer), empty for a direct request.
// 0 or a negative status from vpipe/abi/ring.h: -EINVAL malformed, -EPERM a disk or an address
// that is not the VM's, -ERANGE a segment outside its disk, -EROFS a write to a read-only disk.
int parse_request(const vpipe_request& req, std::span<const uint8_t> desc,
                  const DiskLookup& disks, ParsedRequest* out, const VmIdentity& vm = {},
                  std::span<const uint32_t> refs = {});

// Copies a page of the guest's (`ref`: grant reference / area index) into `dst`
// (VPIPE_PAGE_SIZE bytes): 0, or -EINVAL when the guest named a page it cannot give us.
using PageCopier = std::function<int(uint32_t ref, void* dst)>;

// The whole intake of one request: the ring entry, the indirect pages, the descriptor stream,
// validation, then the bytes carried in the socket rooms. Each page is copied once.
// 0 or a status as parse_request's (a page the guest cannot give: -EINVAL, *bad_page set).
int load_request(const vpipe_request& req, const PageCopier& copy, const DiskLookup& disks,
                 const VmIdentity& vm, ParsedRequest* out, bool* bad_page = nullptr);

}  // namespace vpipe::engine
