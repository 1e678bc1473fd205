// BlockIo: reads and writes the stream bytes of an extent list on a DiskImage with O_DIRECT and
// libaio, keeping up to queue_depth requests in flight. One per engine worker thread (it owns
// an io_context and bounce buffers and is not thread-safe); any number may share a DiskImage.
//
// All data-path calls return 0 or a negative errno and never throw:
//   -EINVAL  a zero extent in a write (zero extents are source-only)
//   -EROFS   write to a read-only image
//   -ERANGE  an extent lies outside the image (writes: outside its whole blocks)
//   -EIO     the kernel reported an error, or a read hit the end of the image
// On an error the buffer / image range is partially transferred; nothing says how far.
#pragma once

#include <libaio.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "io/disk_image.h"
#include "io/extent.h"

namespace vpipe::engine {

class BlockIo {
public:
    static constexpr size_t kMaxIoBytes = 1 << 20;    // largest single request
    static constexpr unsigned kBounceSlots = 4;       // bounce buffers in flight at once
    static constexpr size_t kBounceBytes = 1 << 20;   // size of one bounce buffer

    // Throws std::system_error if the io_context cannot be set up (see /proc/sys/fs/aio-max-nr).
    explicit BlockIo(unsigned queue_depth);
    ~BlockIo();
    BlockIo(const BlockIo&) = delete;
    BlockIo& operator=(const BlockIo&) = delete;

    // Fills buf[0, total_length(ext)) with the stream: zero extents as zeros, others from d.
    int read(DiskImage& d, std::span<const Extent> ext, uint8_t* buf) noexcept;
    // Writes buf[0, total_length(ext)) to the extents of d. Partial blocks are updated by
    // read-modify-write under d.block_lock(), so concurrent writers of different bytes of one
    // block both land. Not durable until flush().
    int write(DiskImage& d, std::span<const Extent> ext, const uint8_t* buf) noexcept;
    // Several writes at once on the shared queue (their requests interleave, up to queue_depth
    // in flight): one stream buffer and its extents each. Returns the first job's error, or 0.
    struct WriteJob {
        std::span<const Extent> ext;
        const uint8_t* buf;
    };
    int write_many(DiskImage& d, std::span<const WriteJob> writes) noexcept;
    // The same for reads (file -> socket's windows read ahead).
    struct ReadJob {
        std::span<const Extent> ext;
        uint8_t* buf;
    };
    int read_many(DiskImage& d, std::span<const ReadJob> reads) noexcept;
    // fdatasync: makes completed writes to d durable.
    int flush(DiskImage& d) noexcept;

    // read() and write() at once on a shared queue (file_copy pipelines windows with it).
    struct Statuses {
        int read;
        int write;
    };
    Statuses read_and_write(DiskImage& rd, std::span<const Extent> rext, uint8_t* rbuf,
                            DiskImage& wd, std::span<const Extent> wext, const uint8_t* wbuf) noexcept;

    unsigned queue_depth() const { return queue_depth_; }

private:
    struct Job;
    struct Request;
    enum class Issue { queued, blocked, finished };

    void run(std::span<Job> jobs);
    // write_many / read_many: one job per element, run together; the first job's error, or 0
    template <class Batch>
    int run_batch(DiskImage& d, std::span<const Batch> batch, bool write) noexcept;
    Issue issue_next(Job& job, Request& req);
    int read_modify_write(DiskImage& d, uint64_t disk_offset, const uint8_t* src, uint64_t n);
    void submit_pending();
    void reap();
    void complete(Request& req, long result);
    void fail(Job& job, int err);
    void release(Request& req);

    const unsigned queue_depth_;
    io_context_t ctx_ = nullptr;
    uint8_t* bounce_ = nullptr;     // kBounceSlots bounce buffers, then one block for RMW
    uint8_t* rmw_block_ = nullptr;  // DiskImage::kMaxAlignment bytes
    std::vector<Request> requests_;
    std::vector<Request*> free_requests_;
    std::vector<Request*> pending_;  // prepared, not yet accepted by io_submit
    std::vector<unsigned> free_slots_;
    std::vector<iocb*> submit_batch_;
    std::vector<io_event> events_;
    unsigned submitted_ = 0;         // requests the kernel holds
};

}  // namespace vpipe::engine
