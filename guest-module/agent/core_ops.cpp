// The agent's OS steps for the guest core (vpipe_core_ops, guest-module/core/vpipe_core.h):
// descriptors are the application's, passed over the agent socket; files go through files/*
// (FIEMAP, immutable-flag holds, destination blocks, the cache rule), sockets through
// sockets.cpp (TCP_REPAIR + the nft flow block), requests through EngineLink.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <vector>

#include <spdlog/spdlog.h>

#include "files/cache_rule.h"
#include "files/dest_alloc.h"
#include "files/extent_map.h"
#include "files/file_hold.h"
#include "guest_flow_block.h"
#include "operation.h"
#include "sockets.h"
#include "tcp/tcp_repair.h"

namespace vpipe::agent {
namespace {

// The flow block, created on first use in the agent's netns, removed at exit.
GuestFlowBlock* flow_block() {
    static std::once_flag once;
    static std::unique_ptr<GuestFlowBlock> fb;
    std::call_once(once, [] { fb = GuestFlowBlock::create(); });
    return fb.get();
}

struct Env {
    AgentContext& ctx;
    std::vector<int> restored;   // sockets restored for the caller during this call
    const std::atomic<bool>* cancel = nullptr;  // an asynchronous operation's cancel request
    const std::atomic<bool>* gone = nullptr;    // the caller's connection is gone
};

Env& E(void* env) { return *static_cast<Env*>(env); }
int fd_of(vpipe_fh f) { return static_cast<int>(reinterpret_cast<intptr_t>(f)); }
vpipe_fh fh_of(int fd) { return reinterpret_cast<vpipe_fh>(static_cast<intptr_t>(fd)); }

void* op_alloc(void*, size_t n) { return std::malloc(n ? n : 1); }
void op_free(void*, void* p) { std::free(p); }

int op_file_regular(void*, vpipe_fh f) {
    struct stat st;
    if (::fstat(fd_of(f), &st) < 0) return -EBADF;
    return S_ISREG(st.st_mode) ? 0 : -EINVAL;
}

int op_file_access(void*, vpipe_fh f, int write) {
    const int fl = ::fcntl(fd_of(f), F_GETFL);
    if (fl < 0) return -errno;
    const int acc = fl & O_ACCMODE;
    if (fl & O_PATH) return -EBADF;
    if (!write && acc == O_WRONLY) return -EBADF;
    if (write && acc == O_RDONLY) return -EBADF;
    if (write && (fl & O_APPEND)) return -EINVAL;  // explicit offsets only
    return 0;
}

int op_file_disk(void* env, vpipe_fh f) {
    struct stat st;
    if (::fstat(fd_of(f), &st) < 0) return -EBADF;
    return E(env).ctx.disks.find_by_devno(st.st_dev) ? 0 : -ENXIO;
}

int op_file_same(void*, vpipe_fh a, vpipe_fh b) {
    struct stat sa, sb;
    if (::fstat(fd_of(a), &sa) < 0 || ::fstat(fd_of(b), &sb) < 0) return 0;
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

int op_file_size(void*, vpipe_fh f, uint64_t* size) {
    struct stat st;
    if (::fstat(fd_of(f), &st) < 0) return -errno;
    *size = static_cast<uint64_t>(st.st_size);
    return 0;
}

int op_hold(void*, vpipe_fh f, int destination, void** hold) {
    auto h = std::make_unique<FileHold>();
    int r = destination ? FileHold::acquire_destination(fd_of(f), h.get()) : FileHold::acquire(fd_of(f), h.get());
    if (r < 0) return r;
    *hold = h.release();
    return 0;
}

void op_unhold(void*, void* hold) { delete static_cast<FileHold*>(hold); }

int op_flush(void*, vpipe_fh f, uint64_t off, uint64_t len) { return flush_range(fd_of(f), off, len); }

int map_range(void* env, vpipe_fh f, uint64_t off, uint64_t len, vpipe_extents* out, bool unwritten_as_data) {
    FileExtents fe;
    if (int r = map_file_range(fd_of(f), off, len, E(env).ctx.disks, &fe, unwritten_as_data); r < 0) return r;
    auto* segs = static_cast<vpipe_seg*>(std::calloc(std::max<size_t>(fe.segments.size(), 1), sizeof(vpipe_seg)));
    if (!segs) return -ENOMEM;
    for (size_t i = 0; i < fe.segments.size(); ++i) {
        segs[i].disk_offset = fe.segments[i].disk_offset;
        segs[i].length = fe.segments[i].length;
        segs[i].zero = fe.segments[i].zero ? 1 : 0;
    }
    out->vdev = fe.vdev;
    out->nr = static_cast<uint32_t>(fe.segments.size());
    out->segs = segs;
    return 0;
}

int op_map(void* env, vpipe_fh f, uint64_t off, uint64_t len, vpipe_extents* out) {
    return map_range(env, f, off, len, out, false);
}

int op_map_allocated(void* env, vpipe_fh f, uint64_t off, uint64_t len, vpipe_extents* out) {
    return map_range(env, f, off, len, out, true);
}

void op_unmap(void*, vpipe_extents* x) {
    std::free(x->segs);
    x->segs = nullptr;
}

int op_cached_runs(void*, vpipe_fh f, uint64_t off, uint64_t len, uint64_t size, vpipe_range* out, int max) {
    const std::vector<Range> runs = cached_runs_to_serve(fd_of(f), off, len, size);
    int n = 0;
    for (const auto& r : runs) {
        if (n == max) break;
        out[n++] = vpipe_range{r.offset, r.length};
    }
    return n;
}

// a guest copy of a range the page cache holds (cache rule), the destination's hold lifted
int op_range_cached(void*, vpipe_fh f, uint64_t off, uint64_t len) {
    return range_clean_resident(fd_of(f), off, len) ? 1 : 0;
}

int op_guest_copy(void*, vpipe_fh in, uint64_t in_off, vpipe_fh out, uint64_t out_off, uint64_t len,
                  uint64_t* copied) {
    return FileHold::with_lifted(fd_of(out), [&] {
        std::vector<char> buf(std::min<uint64_t>(len, 1 << 20));
        while (*copied < len) {
            const size_t want = static_cast<size_t>(std::min<uint64_t>(buf.size(), len - *copied));
            ssize_t n = ::pread(fd_of(in), buf.data(), want, static_cast<off_t>(in_off + *copied));
            if (n < 0) return -errno;
            if (n == 0) return -EIO;  // the source shrank under a hold: should not happen
            for (ssize_t done = 0; done < n;) {
                ssize_t w = ::pwrite(fd_of(out), buf.data() + done, static_cast<size_t>(n - done),
                                     static_cast<off_t>(out_off + *copied + static_cast<uint64_t>(done)));
                if (w < 0) return -errno;
                done += w;
            }
            *copied += static_cast<uint64_t>(n);
        }
        return 0;
    });
}

int op_sync(void*, vpipe_fh f) { return ::fdatasync(fd_of(f)) < 0 ? -errno : 0; }

DestPrep to_prep(const vpipe_dprep& p) { return DestPrep{p.old_size, p.zero_filled, p.write_zeroes, p.paths}; }

void from_prep(const DestPrep& d, vpipe_dprep* p) {
    p->old_size = d.old_size;
    p->zero_filled = d.zero_filled;
    p->write_zeroes = d.write_zeroes;
    p->paths = d.paths;
}

int op_dest_prepare(void*, vpipe_fh f, uint64_t off, uint64_t len, vpipe_dprep* p) {
    DestPrep d{};
    int r = prepare_destination(fd_of(f), off, len, &d);
    from_prep(d, p);
    return r;
}

int op_dest_allocate(void*, vpipe_fh f, uint64_t off, uint64_t len, vpipe_dprep* p) {
    DestPrep d{};
    int r = prepare_destination_allocated(fd_of(f), off, len, &d);
    from_prep(d, p);
    return r;
}

int op_dest_fill(void*, vpipe_fh f, uint64_t off, uint64_t len, vpipe_dprep* p) {
    DestPrep d = to_prep(*p);
    int r = fill_destination(fd_of(f), off, len, &d);
    from_prep(d, p);
    return r;
}

int op_dest_commit(void*, vpipe_fh f, uint64_t off, uint64_t len) { return commit_destination(fd_of(f), off, len); }

int op_dest_finish(void*, vpipe_fh f, uint64_t off, uint64_t len, uint64_t written, const vpipe_dprep* p) {
    return finish_destination(fd_of(f), off, len, written, to_prep(*p));
}

int op_sock_check(void*, vpipe_fh s, int* peer_fin) { return check_socket(fd_of(s), peer_fin); }

int op_sock_freeze(void*, vpipe_fh s, vpipe_frozen* fz) { return freeze_socket(flow_block(), fd_of(s), fz); }

int op_sock_restore(void* env, vpipe_frozen* fz, const vpipe_restore* r, int* new_fd) {
    int rr = restore_socket(flow_block(), fz, *r, new_fd);
    if (*new_fd >= 0) E(env).restored.push_back(*new_fd);
    return rr;
}

// the agent's descriptor of the application's socket now refers to the restored one (the
// restored descriptor itself still goes back to the application)
int op_sock_adopt(void*, vpipe_fh* s, int new_fd) { return tcp::replace_fd(fd_of(*s), new_fd); }

void op_fd_close(void* env, int fd) {
    auto& v = E(env).restored;
    v.erase(std::remove(v.begin(), v.end(), fd), v.end());
    ::close(fd);
}

int op_local_drain(void*, vpipe_fh src, vpipe_fh dst, int dst_is_file, uint64_t out_off, uint64_t length,
                   uint64_t* moved) {
    return drain_closed_source(fd_of(src), fd_of(dst), dst_is_file != 0, out_off, length, moved);
}

int op_connected(void* env) { return E(env).ctx.link.connected() ? 1 : 0; }

using TicketRef = std::shared_ptr<EngineLink::Ticket>;

int op_submit(void* env, const vpipe_submit* s, void** ticket) {
    auto t = std::make_unique<TicketRef>();
    if (int r = E(env).ctx.link.submit(*s, t.get()); r < 0) return r;
    *ticket = t.release();
    return 0;
}

// a caller that is gone is the kernel's killed caller: its wait is bounded by request_timeout_ms
int op_wait(void* env, void* ticket, uint64_t* moved, int* killed) {
    return E(env).ctx.link.wait(*static_cast<TicketRef*>(ticket), moved, E(env).gone, killed);
}

int op_readback(void* env, void* ticket, uint64_t off, void* buf, uint64_t len) {
    return E(env).ctx.link.readback(*static_cast<TicketRef*>(ticket), off, buf, len);
}

int op_publish(void* env, void* ticket, uint64_t off, uint64_t value) {
    return E(env).ctx.link.publish(*static_cast<TicketRef*>(ticket), off, value);
}

void op_put(void* env, void* ticket) {
    auto* t = static_cast<TicketRef*>(ticket);
    E(env).ctx.link.release(*t);
    delete t;
}

void op_count(void* env, vpipe_counter c, uint64_t n) {
    AgentStats& s = E(env).ctx.stats;
    switch (c) {
    case VPIPE_CNT_OFFLOADED: s.bytes_offloaded += n; break;
    case VPIPE_CNT_GUEST_CACHE: s.bytes_guest_cache += n; break;
    case VPIPE_CNT_ZERO_FILLED: s.bytes_zero_filled += n; break;
    case VPIPE_CNT_WRITE_ZEROES: s.bytes_write_zeroes += n; break;
    case VPIPE_CNT_EXTENTS: s.extents_mapped += n; break;
    case VPIPE_CNT_REQUESTS: s.ring_requests += n; break;
    }
}

// The agent serves a socket, not the caller's process: no signal ends a call, but a caller whose
// connection closed (killed, or exited) and a cancelled asynchronous operation stop where the
// kernel stops for a dying caller.
int op_fatal_signal(void* env) {
    auto set = [](const std::atomic<bool>* f) { return f && f->load(std::memory_order_acquire); };
    return set(E(env).cancel) || set(E(env).gone) ? 1 : 0;
}

const vpipe_core_ops kOps = {
    op_alloc,        op_free,         op_file_regular, op_file_access,  op_file_disk,
    op_file_same,    op_file_size,    op_hold,         op_unhold,       op_flush,
    op_map,          op_unmap,        op_cached_runs,  op_range_cached, op_guest_copy,   op_sync,
    op_dest_prepare, op_dest_finish,  op_sock_check,   op_sock_freeze,  op_sock_restore,
    op_sock_adopt,   op_fd_close,     op_local_drain,  op_connected,    op_submit,
    op_wait,         op_readback,     op_put,          op_count,        op_fatal_signal,
    op_dest_allocate, op_map_allocated, op_dest_fill,  op_dest_commit,  op_publish,
};

}  // namespace

int run_operation(AgentContext& ctx, int in_fd, int out_fd, vpipe_ioc_op* op, const uint8_t* head,
                  const uint8_t* tail, int* new_in, int* new_out, const std::atomic<bool>* cancel,
                  const std::atomic<bool>* gone) {
    Env env{ctx, {}, cancel, gone};
    vpipe_core core{};
    core.ops = &kOps;
    core.env = &env;
    core.cfg.chunk_mib = ctx.cfg.chunk_mib;
    core.cfg.room_max = ctx.cfg.room_max;
    core.cfg.cache_rule_f2f = ctx.cfg.cache_rule_file_to_file ? 1 : 0;
    core.cfg.cache_rule_f2s = ctx.cfg.cache_rule_file_to_socket ? 1 : 0;
    core.cfg.prepare_ahead = ctx.cfg.prepare_ahead ? 1 : 0;
    vpipe_core_call call{};
    call.in = fh_of(in_fd);
    call.out = fh_of(out_fd);
    call.op = op;
    call.head = head;
    call.tail = tail;
    int r = vpipe_core_op(&core, &call);
    *new_in = call.new_in;
    *new_out = call.new_out;
    // restored sockets the caller does not get (none should be left) are closed here
    for (int fd : env.restored)
        if (fd != call.new_in && fd != call.new_out) ::close(fd);
    return r;
}

int blocked_flows() {
    GuestFlowBlock* fb = flow_block();
    return fb ? fb->blocked() : 0;
}

}  // namespace vpipe::agent
