// Validation of ring requests. The guest is untrusted: a request is copied out of shared memory
// once (the ring entry by RING_COPY_REQUEST, the descriptor pages into a private buffer), and
// only that private copy is checked here and used afterwards, so the guest cannot change a
// field between check and use (XSA-155).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
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

struct ParsedRequest {
    uint64_t id = 0;
    uint8_t op = VPIPE_OP_NOP;
    uint64_t length = 0;
    FileEndpoint src_file, dst_file;          // for file endpoints
    vpipe_tcp_state src_tcp{}, dst_tcp{};     // for socket endpoints
};

// First look at a copied ring entry, before any descriptor page is touched.
// 0, or -EINVAL naming nothing more: the response carries only the status.
int check_request(const vpipe_request& req);

// Checks the descriptor stream (the private copy of the request's pages, `desc_bytes` long)
// and fills `out`. 0 or a negative status from vpipe/abi/ring.h:
// -EINVAL malformed, -EPERM a disk that is not the VM's, -ERANGE a segment outside its disk,
// -EROFS a write to a read-only disk, -EOPNOTSUPP an operation this engine does not do yet.
int parse_request(const vpipe_request& req, std::span<const uint8_t> desc,
                  const DiskLookup& disks, ParsedRequest* out);

}  // namespace vpipe::engine
