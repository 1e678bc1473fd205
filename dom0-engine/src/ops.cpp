#include "ops.h"

#include <algorithm>
#include <cerrno>

#include "io/file_copy.h"

namespace vpipe::engine {

int execute_request(Vm& vm, BlockIo& io, PagePool& pool, const ParsedRequest& req,
                    uint64_t* moved, ShadowSockets* sockets, const DescWriter& write_back,
                    const DescWordReader& read_word, const WriteGate& may_write) {
    *moved = 0;
    // Credit is charged before each window's bytes move; they are counted once written.
    // copy_extents calls `charge` after window k is written, and it may already have read
    // window k+1 (it overlaps reading k+1 with writing k): so windows 0 and 1 are charged up
    // front and the callback for window k charges window k+2. Every read is charged before it
    // is issued; a failed copy leaves the unused prepayment charged (its VM's own loss).
    const uint64_t window = pool.buffer_bytes();
    uint64_t charged_until = 0;  // stream bytes charged so far
    auto prepay = [&](uint64_t upto) {
        upto = std::min<uint64_t>(upto, req.length);
        if (upto > charged_until) vm.reserve(req.op, upto - charged_until);
        charged_until = std::max(charged_until, upto);
    };
    uint64_t done = 0;
    ChargeFn charge = [&](uint64_t n) {
        vm.count(req.op, n);
        done += n;
        prepay(done + 2 * window);
    };
    switch (req.op) {
    case VPIPE_OP_FILE_TO_FILE: {
        DiskImage* src = vm.disk(req.src_file.vdev);
        DiskImage* dst = vm.disk(req.dst_file.vdev);
        if (!src || !dst) return -EPERM;  // validated already; disks never go away under us
        prepay(2 * window);
        int r = copy_extents(io, pool, *src, req.src_file.extents, *dst, req.dst_file.extents,
                             req.length, charge, moved, kCopyBufferWait, may_write);
        return r == -ENOMEM ? -ENOSPC : r;  // the protocol's "no buffers now"
    }
    case VPIPE_OP_FILE_TO_SOCKET:
    case VPIPE_OP_SOCKET_TO_FILE:
    case VPIPE_OP_SOCKET_TO_SOCKET: {
        if (!write_back) return -EOPNOTSUPP;
        int r = execute_socket_request(vm, io, pool, sockets, req, write_back, moved, read_word, may_write);
        return r == -ENOMEM ? -ENOSPC : r;
    }
    default:
        return -EOPNOTSUPP;
    }
}

}  // namespace vpipe::engine
