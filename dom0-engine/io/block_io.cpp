#include "io/block_io.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <system_error>

namespace vpipe::engine {

// One read() or write() in progress: the extent list and how far requests have been issued.
struct BlockIo::Job {
    bool is_write;
    DiskImage* disk;
    std::span<const Extent> ext;
    uint8_t* mem;  // the caller's stream buffer (only reads store into it)
    int status = 0;
    size_t index = 0;     // extent being issued
    uint64_t within = 0;  // bytes of ext[index] already issued
    uint64_t stream = 0;  // stream position of (index, within)

    bool generating() const { return status == 0 && index < ext.size(); }
    void consume(uint64_t n) {
        within += n;
        stream += n;
        if (within == ext[index].length) {
            ++index;
            within = 0;
        }
    }
};

// One iocb and what to do when it completes.
struct BlockIo::Request {
    iocb cb;
    Job* job;
    uint64_t offset;       // next disk offset to transfer (aligned)
    uint8_t* mem;          // next memory address to transfer (aligned)
    uint64_t remaining;    // bytes left in the aligned transfer
    uint64_t transferred;  // bytes done so far
    uint64_t needed;       // bytes that must arrive; a read may end short of `remaining` at EOF
    int slot;              // bounce slot, or -1 when transferring to/from the caller's buffer
    uint8_t* copy_to;      // bounced read: where the wanted bytes go in the caller's buffer
    uint64_t copy_skip;    // bounced read: offset of the wanted bytes in the slot
    uint64_t copy_len;     // bounced read: how many (0 for no copy-out)
};

namespace {

uint64_t round_down(uint64_t v, uint64_t a) { return v - v % a; }
uint64_t round_up(uint64_t v, uint64_t a) { return round_down(v + a - 1, a); }

int validate(const DiskImage& d, std::span<const Extent> ext, bool is_write) {
    if (is_write && !d.writable()) return -EROFS;
    if (is_write && std::any_of(ext.begin(), ext.end(), [](const Extent& e) { return e.zero; }))
        return -EINVAL;
    // A write touches whole blocks, so a trailing partial block of the image is out of reach.
    const uint64_t limit = is_write ? round_down(d.size(), d.alignment()) : d.size();
    for (const Extent& e : ext) {
        if (e.zero) continue;
        if (e.disk_offset > limit || e.length > limit - e.disk_offset) return -ERANGE;
    }
    return 0;
}

void prepare(iocb& cb, bool is_write, int fd, uint8_t* mem, uint64_t len, uint64_t offset) {
    if (is_write)
        io_prep_pwrite(&cb, fd, mem, len, static_cast<long long>(offset));
    else
        io_prep_pread(&cb, fd, mem, len, static_cast<long long>(offset));
}

// pread/pwrite of exactly `len` bytes; false on error or EOF.
bool transfer_fully(bool is_write, int fd, uint8_t* mem, size_t len, uint64_t offset) {
    size_t done = 0;
    while (done < len) {
        const auto pos = static_cast<off_t>(offset + done);
        const ssize_t n = is_write ? ::pwrite(fd, mem + done, len - done, pos)
                                   : ::pread(fd, mem + done, len - done, pos);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        done += static_cast<size_t>(n);
    }
    return true;
}

}  // namespace

BlockIo::BlockIo(unsigned queue_depth) : queue_depth_(queue_depth), requests_(queue_depth) {
    if (queue_depth == 0) throw std::invalid_argument("BlockIo: queue depth must be > 0");
    if (const int r = io_setup(static_cast<int>(queue_depth), &ctx_); r < 0)
        throw std::system_error(-r, std::generic_category(),
                                "BlockIo: io_setup(" + std::to_string(queue_depth) + ")");
    bounce_ = static_cast<uint8_t*>(std::aligned_alloc(
        DiskImage::kMaxAlignment, kBounceSlots * kBounceBytes + DiskImage::kMaxAlignment));
    if (!bounce_) {
        io_destroy(ctx_);
        throw std::bad_alloc();
    }
    rmw_block_ = bounce_ + kBounceSlots * kBounceBytes;

    // Everything the data path pushes onto is reserved here: it never allocates.
    free_requests_.reserve(queue_depth);
    for (Request& req : requests_) free_requests_.push_back(&req);
    pending_.reserve(queue_depth);
    submit_batch_.reserve(queue_depth);
    events_.resize(queue_depth);
    free_slots_.reserve(kBounceSlots);
    for (unsigned s = 0; s < kBounceSlots; ++s) free_slots_.push_back(s);
}

BlockIo::~BlockIo() {
    io_destroy(ctx_);
    std::free(bounce_);
}

int BlockIo::read(DiskImage& d, std::span<const Extent> ext, uint8_t* buf) noexcept {
    Job job{false, &d, ext, buf, validate(d, ext, false)};
    run({&job, 1});
    return job.status;
}

int BlockIo::write(DiskImage& d, std::span<const Extent> ext, const uint8_t* buf) noexcept {
    // The job never stores through `mem` when writing.
    Job job{true, &d, ext, const_cast<uint8_t*>(buf), validate(d, ext, true)};
    run({&job, 1});
    return job.status;
}

int BlockIo::write_many(DiskImage& d, std::span<const WriteJob> writes) noexcept {
    return run_batch(d, writes, true);
}

int BlockIo::read_many(DiskImage& d, std::span<const ReadJob> reads) noexcept {
    return run_batch(d, reads, false);
}

template <class Batch>
int BlockIo::run_batch(DiskImage& d, std::span<const Batch> batch, bool write) noexcept {
    std::vector<Job> jobs;
    try {
        jobs.reserve(batch.size());
    } catch (...) {
        return -ENOMEM;
    }
    // (a write job never stores through its buffer)
    for (const Batch& b : batch)
        jobs.push_back({write, &d, b.ext, const_cast<uint8_t*>(b.buf), validate(d, b.ext, write)});
    run(jobs);
    for (const Job& j : jobs)
        if (j.status != 0) return j.status;
    return 0;
}

BlockIo::Statuses BlockIo::read_and_write(DiskImage& rd, std::span<const Extent> rext,
                                          uint8_t* rbuf, DiskImage& wd,
                                          std::span<const Extent> wext,
                                          const uint8_t* wbuf) noexcept {
    Job jobs[2] = {{false, &rd, rext, rbuf, validate(rd, rext, false)},
                   {true, &wd, wext, const_cast<uint8_t*>(wbuf), validate(wd, wext, true)}};
    run(jobs);
    return {jobs[0].status, jobs[1].status};
}

int BlockIo::flush(DiskImage& d) noexcept {
    if (::fdatasync(d.fd()) == 0) return 0;
    spdlog::warn("disk image {}: fdatasync failed: {}", d.path(), std::strerror(errno));
    return -EIO;
}

void BlockIo::run(std::span<Job> jobs) {
    for (;;) {
        // Fill the queue taking one request from each job in turn, so a read and a write overlap.
        bool issued = true;
        while (issued && !free_requests_.empty()) {
            issued = false;
            for (Job& job : jobs) {
                if (free_requests_.empty()) break;
                Request& req = *free_requests_.back();
                if (issue_next(job, req) == Issue::queued) {
                    free_requests_.pop_back();
                    pending_.push_back(&req);
                    issued = true;
                }
            }
        }
        submit_pending();
        // With nothing in flight every job has issued all it can (a job only blocks on
        // requests or bounce slots, which are all free then): done.
        if (submitted_ == 0 && pending_.empty()) return;
        reap();
    }
}

BlockIo::Issue BlockIo::issue_next(Job& job, Request& req) {
    while (job.generating()) {
        const Extent& e = job.ext[job.index];
        const uint64_t rem = e.length - job.within;
        uint8_t* mem = job.mem + job.stream;
        if (rem == 0) {
            job.consume(0);
            continue;
        }
        if (e.zero) {  // reads only: writes with zero extents were refused
            std::memset(mem, 0, rem);
            job.consume(rem);
            continue;
        }

        DiskImage& d = *job.disk;
        const uint64_t align = d.alignment();
        const uint64_t disk = e.disk_offset + job.within;
        const uint64_t disk_phase = disk % align;
        const uint64_t mem_phase = reinterpret_cast<uintptr_t>(mem) % align;
        req = Request{};
        req.job = &job;
        req.slot = -1;

        if (disk_phase == 0 && mem_phase == 0 && rem >= align) {
            // Fast path: whole blocks straight between the image and the caller's buffer.
            const uint64_t n = std::min<uint64_t>(round_down(rem, align), kMaxIoBytes);
            req.offset = disk;
            req.mem = mem;
            req.remaining = req.needed = n;
            job.consume(n);
        } else if (job.is_write && (disk_phase != 0 || rem < align)) {
            // Partial block: read-modify-write now, synchronously (only at the ends of a range).
            const uint64_t n = std::min(rem, align - disk_phase);
            if (const int r = read_modify_write(d, disk, mem, n); r != 0) {
                fail(job, r);
                break;
            }
            job.consume(n);
            continue;
        } else {
            // Through a bounce buffer: a partial block, or memory out of phase with the disk.
            if (free_slots_.empty()) return Issue::blocked;
            req.slot = static_cast<int>(free_slots_.back());
            free_slots_.pop_back();
            uint8_t* slot = bounce_ + static_cast<size_t>(req.slot) * kBounceBytes;
            if (job.is_write) {  // disk aligned, memory not: whole blocks via the slot
                const uint64_t n = std::min<uint64_t>(round_down(rem, align), kBounceBytes);
                std::memcpy(slot, mem, n);
                req.offset = disk;
                req.remaining = req.needed = n;
                job.consume(n);
            } else {
                // In phase, only the partial block needs the bounce and the rest goes direct;
                // out of phase, everything is shifted through the slot.
                const uint64_t n = disk_phase == mem_phase
                                       ? std::min(rem, align - disk_phase)
                                       : std::min<uint64_t>(rem, kBounceBytes - disk_phase);
                req.offset = disk - disk_phase;
                req.remaining = round_up(disk_phase + n, align);
                req.needed = disk_phase + n;
                req.copy_to = mem;
                req.copy_skip = disk_phase;
                req.copy_len = n;
                job.consume(n);
            }
            req.mem = slot;
        }
        prepare(req.cb, job.is_write, d.fd(), req.mem, req.remaining, req.offset);
        req.cb.data = &req;
        return Issue::queued;
    }
    return Issue::finished;
}

int BlockIo::read_modify_write(DiskImage& d, uint64_t disk_offset, const uint8_t* src,
                               uint64_t n) {
    const uint64_t align = d.alignment();
    const uint64_t block = round_down(disk_offset, align);
    std::lock_guard lock(d.block_lock(block / align));
    if (!transfer_fully(false, d.fd(), rmw_block_, align, block)) {
        spdlog::warn("disk image {}: read-modify-write: read of block at {} failed: {}",
                     d.path(), block, std::strerror(errno));
        return -EIO;
    }
    d.bytes_read += align;
    ++d.read_ops;
    std::memcpy(rmw_block_ + (disk_offset - block), src, n);
    if (!transfer_fully(true, d.fd(), rmw_block_, align, block)) {
        spdlog::warn("disk image {}: read-modify-write: write of block at {} failed: {}",
                     d.path(), block, std::strerror(errno));
        return -EIO;
    }
    d.bytes_written += align;
    ++d.write_ops;
    return 0;
}

void BlockIo::submit_pending() {
    // Resubmissions of a job that has failed meanwhile are dropped.
    std::erase_if(pending_, [this](Request* req) {
        if (req->job->status == 0) return false;
        release(*req);
        return true;
    });
    size_t accepted = 0;
    while (accepted < pending_.size()) {
        submit_batch_.clear();
        for (size_t i = accepted; i < pending_.size(); ++i) submit_batch_.push_back(&pending_[i]->cb);
        const int r = io_submit(ctx_, static_cast<long>(submit_batch_.size()), submit_batch_.data());
        if (r > 0) {
            accepted += static_cast<size_t>(r);
            submitted_ += static_cast<unsigned>(r);
        } else if (r == -EINTR) {
            continue;
        } else if (r == -EAGAIN && submitted_ > 0) {
            break;  // the kernel is full: retry after reaping
        } else {
            // The first request was refused outright.
            Request& req = *pending_[accepted++];
            spdlog::warn("disk image {}: io_submit failed: {}", req.job->disk->path(),
                         std::strerror(-r));
            fail(*req.job, -EIO);
            release(req);
        }
    }
    pending_.erase(pending_.begin(), pending_.begin() + static_cast<ptrdiff_t>(accepted));
}

void BlockIo::reap() {
    int n;
    do {
        n = io_getevents(ctx_, 1, static_cast<long>(submitted_), events_.data(), nullptr);
    } while (n == -EINTR);
    if (n < 0) {
        // Only a bug gets here; returning would let the kernel write into freed buffers.
        spdlog::critical("BlockIo: io_getevents failed: {}", std::strerror(-n));
        std::abort();
    }
    submitted_ -= static_cast<unsigned>(n);
    for (int i = 0; i < n; ++i)
        complete(*static_cast<Request*>(events_[i].data), static_cast<long>(events_[i].res));
}

void BlockIo::complete(Request& req, long result) {
    Job& job = *req.job;
    DiskImage& d = *job.disk;
    if (result < 0) {
        spdlog::warn("disk image {}: {} of {} bytes at {} failed: {}", d.path(),
                     job.is_write ? "write" : "read", req.remaining, req.offset,
                     std::strerror(static_cast<int>(-result)));
        fail(job, -EIO);
        release(req);
        return;
    }
    const auto n = static_cast<uint64_t>(result);
    if (job.is_write) {
        d.bytes_written += n;
        ++d.write_ops;
    } else {
        d.bytes_read += n;
        ++d.read_ops;
    }
    req.transferred += n;
    if (req.transferred >= req.needed) {
        if (req.copy_len != 0 && job.status == 0)
            std::memcpy(req.copy_to,
                        bounce_ + static_cast<size_t>(req.slot) * kBounceBytes + req.copy_skip,
                        req.copy_len);
        release(req);
        return;
    }
    if (n == 0 || n % d.alignment() != 0) {  // end of the image before the bytes we need
        spdlog::warn("disk image {}: short {} at {} ({} of {} bytes)", d.path(),
                     job.is_write ? "write" : "read", req.offset, n, req.remaining);
        fail(job, -EIO);
        release(req);
        return;
    }
    // A short transfer on a block boundary: send the remainder again.
    req.offset += n;
    req.mem += n;
    req.remaining -= n;
    prepare(req.cb, job.is_write, d.fd(), req.mem, req.remaining, req.offset);
    req.cb.data = &req;
    pending_.push_back(&req);
}

void BlockIo::fail(Job& job, int err) {
    if (job.status == 0) job.status = err;
}

void BlockIo::release(Request& req) {
    if (req.slot >= 0) free_slots_.push_back(static_cast<unsigned>(req.slot));
    req.slot = -1;
    free_requests_.push_back(&req);
}

}  // namespace vpipe::engine
