#include "ops.h"

#include <cerrno>

#include "io/file_copy.h"

namespace vpipe::engine {

int execute_request(Vm& vm, BlockIo& io, PagePool& pool, const ParsedRequest& req,
                    uint64_t* moved, SocketEngine* sockets, const DescWriter& write_back) {
    *moved = 0;
    // Bytes are counted as they move, not at the end: this is where credits will be charged.
    auto& bytes = vm.counters().bytes[req.op];
    ChargeFn charge = [&bytes](uint64_t n) { bytes.fetch_add(n, std::memory_order_relaxed); };

    switch (req.op) {
    case VPIPE_OP_FILE_TO_FILE: {
        DiskImage* src = vm.disk(req.src_file.vdev);
        DiskImage* dst = vm.disk(req.dst_file.vdev);
        if (!src || !dst) return -EPERM;  // validated already; disks never go away under us
        int r = copy_extents(io, pool, *src, req.src_file.extents, *dst, req.dst_file.extents,
                             req.length, charge, moved);
        return r == -ENOMEM ? -ENOSPC : r;  // the protocol's "no buffers now"
    }
    case VPIPE_OP_FILE_TO_SOCKET:
    case VPIPE_OP_SOCKET_TO_FILE:
    case VPIPE_OP_SOCKET_TO_SOCKET: {
        if (!write_back) return -EOPNOTSUPP;
        int r = execute_socket_request(vm, io, pool, sockets, req, write_back, moved);
        return r == -ENOMEM ? -ENOSPC : r;
    }
    default:
        return -EOPNOTSUPP;
    }
}

}  // namespace vpipe::engine
