#include "file_ops.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <vector>

#include <spdlog/spdlog.h>

#include "files/cache_rule.h"
#include "files/dest_alloc.h"
#include "files/extent_map.h"
#include "files/file_hold.h"
#include "request_builder.h"

namespace vpipe::agent {
namespace {

struct Piece {
    uint64_t offset;    // in the operation's stream
    uint64_t length;
    bool from_cache;    // the guest copies it (paper's cache rule)
};

// Splits [0, length) into offloaded pieces and the cached runs the guest serves itself.
std::vector<Piece> plan_pieces(uint64_t in_offset, uint64_t length, const std::vector<Range>& runs) {
    std::vector<Piece> out;
    uint64_t pos = 0;
    for (const auto& r : runs) {
        uint64_t start = r.offset - in_offset, end = start + r.length;
        if (start > pos) out.push_back({pos, start - pos, false});
        out.push_back({start, end - start, true});
        pos = end;
    }
    if (pos < length) out.push_back({pos, length - pos, false});
    return out;
}

// Copies a range inside the guest (cache rule): the bytes are in the page cache already.
int guest_copy(int in_fd, uint64_t in_off, int out_fd, uint64_t out_off, uint64_t len,
               uint64_t* copied) {
    std::vector<char> buf(std::min<uint64_t>(len, 1 << 20));
    *copied = 0;
    while (*copied < len) {
        size_t want = static_cast<size_t>(std::min<uint64_t>(buf.size(), len - *copied));
        ssize_t n = ::pread(in_fd, buf.data(), want, static_cast<off_t>(in_off + *copied));
        if (n < 0) return -errno;
        if (n == 0) return -EIO;  // the source shrank under a hold: should not happen
        ssize_t done = 0;
        while (done < n) {
            ssize_t w = ::pwrite(out_fd, buf.data() + done, static_cast<size_t>(n - done),
                                 static_cast<off_t>(out_off + *copied + static_cast<uint64_t>(done)));
            if (w < 0) return -errno;
            done += w;
        }
        *copied += static_cast<uint64_t>(n);
    }
    return 0;
}

// One stage of the pipeline: a stretch of an offloaded piece whose destination blocks are
// prepared, mapped and handed to dom0 as ring requests while the next stage is prepared.
struct Stage {
    size_t piece = 0;        // index into pieces
    uint64_t offset = 0;     // in the operation's stream
    uint64_t length = 0;
    std::vector<RingChunk> chunks;
    std::vector<std::shared_ptr<EngineLink::Ticket>> tickets;
    int status = 0;
};

// Submits every chunk of a stage (the ring and descriptor pages bound how many are in flight).
void submit_stage(AgentContext& ctx, Stage* st) {
    st->tickets.resize(st->chunks.size());
    for (size_t i = 0; i < st->chunks.size(); ++i) {
        int r = ctx.link.submit(VPIPE_OP_FILE_TO_FILE, st->chunks[i].length, st->chunks[i].desc,
                                &st->tickets[i]);
        if (r < 0) {
            st->status = r;
            st->tickets.resize(i);
            return;
        }
        ctx.stats.ring_requests++;
    }
}

// Waits for a stage; returns the bytes of its leading run of fully completed requests.
uint64_t wait_stage(AgentContext& ctx, Stage* st) {
    uint64_t moved = 0;
    bool intact = true;
    for (size_t i = 0; i < st->tickets.size(); ++i) {
        uint64_t m = 0;
        int r = ctx.link.wait(st->tickets[i], &m);
        if (intact) {
            moved += m;
            if (r < 0 || m < st->chunks[i].length) intact = false;
        }
        if (r < 0 && st->status == 0) st->status = r;
    }
    if (st->status == 0 && moved < st->length) st->status = -EIO;
    return moved;
}

int check_access(int fd, bool want_read, bool want_write) {
    int fl = ::fcntl(fd, F_GETFL);
    if (fl < 0) return -errno;
    int acc = fl & O_ACCMODE;
    if (want_read && acc == O_WRONLY) return -EBADF;
    if (want_write && acc == O_RDONLY) return -EBADF;
    if (want_write && (fl & O_APPEND)) return -EINVAL;  // explicit offsets only
    if (fl & O_PATH) return -EBADF;
    return 0;
}

}  // namespace

int file_to_file(AgentContext& ctx, int in_fd, int out_fd, vpipe_ioc_op* op) {
    op->moved = op->offloaded = op->guest_copied = op->zero_filled = 0;
    op->paths = op->requests = 0;
    struct stat sst{}, dst_st{};
    if (::fstat(in_fd, &sst) < 0 || ::fstat(out_fd, &dst_st) < 0) return -errno;
    if (!S_ISREG(sst.st_mode) || !S_ISREG(dst_st.st_mode)) return -EINVAL;
    if (int r = check_access(in_fd, true, false); r < 0) return r;
    if (int r = check_access(out_fd, false, true); r < 0) return r;
    if (op->in_offset > static_cast<uint64_t>(INT64_MAX) ||
        op->out_offset > static_cast<uint64_t>(INT64_MAX))
        return -EINVAL;
    // "Everything that is left" is a normal request: clamp to what a file can address.
    op->length = std::min<uint64_t>(op->length, static_cast<uint64_t>(INT64_MAX) - op->out_offset);

    const DiskInfo* src_disk = ctx.disks.find_by_devno(sst.st_dev);
    const DiskInfo* dst_disk = ctx.disks.find_by_devno(dst_st.st_dev);
    if (!src_disk || !dst_disk) return -ENXIO;
    if (!ctx.link.connected()) return -EHOSTDOWN;

    // The source is held first: from here its size and blocks are stable.
    FileHold src_hold;
    if (int r = FileHold::acquire(in_fd, &src_hold); r < 0) return r;
    if (::fstat(in_fd, &sst) < 0) return -errno;
    const uint64_t size = static_cast<uint64_t>(sst.st_size);
    if (op->in_offset >= size || op->length == 0) return 0;
    const uint64_t len = std::min<uint64_t>(op->length, size - op->in_offset);
    const bool same_file = sst.st_dev == dst_st.st_dev && sst.st_ino == dst_st.st_ino;
    if (same_file && op->in_offset < op->out_offset + len && op->out_offset < op->in_offset + len)
        return -EINVAL;

    // The cache rule looks at the page cache as the application left it: runs that are
    // cached *and clean* are served by the guest; dirty data is flushed and offloaded (after
    // the flush every page would look clean, so the rule must be applied first).
    std::vector<Range> cached;
    if (ctx.cfg.cache_rule && ctx.cfg.cache_rule_file_to_file && !(op->flags & VPIPE_OPF_NO_CACHE_RULE))
        cached = cached_runs_to_serve(in_fd, op->in_offset, len, size);
    // The disk must hold what the page cache holds before dom0 reads it.
    if (int r = flush_range(in_fd, op->in_offset, len); r < 0) return r;
    const std::vector<Piece> pieces = plan_pieces(op->in_offset, len, cached);

    // The destination is held for the whole operation; preparing and finishing it lift the
    // hold briefly for their own fallocate/zero-fill/ftruncate.
    FileHold dst_hold;
    if (!same_file) {
        if (int r = FileHold::acquire_destination(out_fd, &dst_hold); r < 0) return r;
    }
    // Destination blocks the filesystem considers written, so dom0 can write into them. The
    // guest prepares stage k+1 (zero-fill costs guest disk writes, docs/append.md) while dom0
    // copies stage k, so the two overlap instead of adding up.
    // Finishing sets the size from the original one: take it before anything grows the file.
    DestPrep prep{};
    struct stat dst_now{};
    if (::fstat(out_fd, &dst_now) < 0) return -errno;
    prep.old_size = static_cast<uint64_t>(dst_now.st_size);
    auto prepare = [&](uint64_t off, uint64_t n) {
        DestPrep p{};
        int r = prepare_destination(out_fd, off, n, &p);
        prep.zero_filled += p.zero_filled;
        prep.write_zeroes += p.write_zeroes;
        prep.paths |= p.paths;
        ctx.stats.bytes_zero_filled += p.zero_filled;
        ctx.stats.bytes_write_zeroes += p.write_zeroes;
        return r;
    };
    std::vector<Stage> stages;
    const uint64_t stage_bytes = std::max<uint64_t>(ctx.cfg.chunk_bytes, 16ull << 20);
    for (size_t i = 0; i < pieces.size(); ++i) {
        if (pieces[i].from_cache) continue;
        for (uint64_t o = 0; o < pieces[i].length; o += stage_bytes)
            stages.push_back({i, pieces[i].offset + o, std::min(stage_bytes, pieces[i].length - o), {}, {}, 0});
    }

    // Bytes that reached the destination, per piece; the stream counts up to the first gap.
    std::vector<uint64_t> done(pieces.size(), 0);
    std::vector<bool> piece_broken(pieces.size(), false);
    int status = 0;
    size_t waited = 0;
    auto retire = [&](Stage& st) {
        uint64_t m = wait_stage(ctx, &st);
        op->offloaded += m;
        ctx.stats.bytes_offloaded += m;
        if (!piece_broken[st.piece]) done[st.piece] += m;
        if (st.status < 0) {
            piece_broken[st.piece] = true;
            if (status == 0) status = st.status;
        }
    };
    constexpr size_t kStagesInFlight = 2;
    for (size_t k = 0; k < stages.size() && status == 0; ++k) {
        Stage& st = stages[k];
        int r = prepare(op->out_offset + st.offset, st.length);
        FileExtents se, de;
        if (r == 0) r = map_file_range(in_fd, op->in_offset + st.offset, st.length, ctx.disks, &se);
        if (r == 0) r = map_file_range(out_fd, op->out_offset + st.offset, st.length, ctx.disks, &de);
        if (r == 0 && std::any_of(de.segments.begin(), de.segments.end(),
                                  [](const Segment& sg) { return sg.zero; }))
            r = -EIO;  // prepare_destination promised written blocks: never write into a hole
        if (r < 0) {
            status = r;
            break;
        }
        ctx.stats.extents_mapped += se.segments.size() + de.segments.size();
        st.chunks = build_file_to_file(se, de, st.length, ctx.cfg.chunk_bytes);
        op->requests += static_cast<uint32_t>(st.chunks.size());
        op->paths |= VPIPE_PATH_OFFLOAD;
        submit_stage(ctx, &st);
        // Keep one stage with dom0 while the guest prepares the next.
        while (k + 1 - waited >= kStagesInFlight) retire(stages[waited++]);
    }
    while (waited < stages.size() && (!stages[waited].tickets.empty() || stages[waited].status != 0))
        retire(stages[waited++]);
    op->zero_filled = prep.zero_filled;
    op->paths |= prep.paths;

    // Then the cached runs (cache rule), copied by the guest through its page cache.
    for (size_t i = 0; i < pieces.size() && status == 0; ++i) {
        if (!pieces[i].from_cache) continue;
        int r = FileHold::with_lifted(out_fd, [&] {
            return guest_copy(in_fd, op->in_offset + pieces[i].offset, out_fd,
                              op->out_offset + pieces[i].offset, pieces[i].length, &done[i]);
        });
        op->guest_copied += done[i];
        ctx.stats.bytes_guest_cache += done[i];
        op->paths |= VPIPE_PATH_GUEST_CACHE;
        if (r < 0) status = r;
    }
    // Make the guest-copied pages clean, so finishing can drop every cached page of the range.
    if (op->guest_copied && ::fdatasync(out_fd) < 0 && status == 0) status = -errno;
    uint64_t written = 0;
    for (size_t i = 0; i < pieces.size(); ++i) {
        written += done[i];
        if (done[i] < pieces[i].length) break;
    }

    if (int r = finish_destination(out_fd, op->out_offset, len, written, prep); r < 0 && status == 0)
        status = r;
    op->moved = written;
    if (status < 0 && written == 0) return status;
    if (status < 0)
        spdlog::warn("file_to_file: short after {} of {} bytes: {}", written, len, std::strerror(-status));
    return 0;
}

}  // namespace vpipe::agent
