// Validation of ring requests. The guest is untrusted: a request is copied out of shared memory
// once (the ring entry by RING_COPY_REQUEST, the descriptor pages into a private buffer), and
// only that private copy is checked here and used afterwards, so the guest cannot change a
// field between check and use (XSA-155).
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

// The requesting VM's network identity: socket endpoints must use these addresses.
struct VmIdentity {
    std::optional<std::array<uint8_t, 4>> ipv4;   // from the toolstack (lab config / xenstore)
    static VmIdentity from_ip_string(const std::string& ip);  // empty / invalid: no address
};

struct ParsedRequest {
    uint64_t id = 0;
    uint8_t op = VPIPE_OP_NOP;
    uint64_t length = 0;
    FileEndpoint src_file, dst_file;          // for file endpoints
    vpipe_tcp_state src_tcp{}, dst_tcp{};     // for socket endpoints
    // where results go back (socket endpoints): the descriptor pages and each endpoint's carry
    // room [tcp.carry_offset, tcp.carry_offset + room) in the descriptor stream
    uint8_t nr_pages = 0;
    std::array<uint32_t, VPIPE_DESC_MAX_PAGES> pages{};
    uint32_t src_room = 0, dst_room = 0;
};

// First look at a copied ring entry, before any descriptor page is touched.
// 0, or -EINVAL naming nothing more: the response carries only the status.
int check_request(const vpipe_request& req);

// Checks the descriptor stream (the private copy of the request's pages, `desc_bytes` long)
// and fills `out`. 0 or a negative status from vpipe/abi/ring.h:
// -EINVAL malformed, -EPERM a disk that is not the VM's, -ERANGE a segment outside its disk,
// -EROFS a write to a read-only disk, -EOPNOTSUPP an operation this engine does not do yet.
// Socket endpoints (-EPERM unless `vm` names the address) are checked against `vm`: family
// IPv4, local address = the VM's, ports non-zero, the remote a unicast address, reserved
// fields and queue lengths 0, window scales / MSS / options sane, carry rooms inside the pages.
int parse_request(const vpipe_request& req, std::span<const uint8_t> desc,
                  const DiskLookup& disks, ParsedRequest* out, const VmIdentity& vm = {});

}  // namespace vpipe::engine
