#include "io/splice_read.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <vector>

namespace vpipe::engine {

namespace {

constexpr size_t kSpliceChunk = 1 << 20;  // one splice call at most (the pipe's size)

struct AlignedFree {
    void operator()(uint8_t* p) const { std::free(p); }
};
using AlignedBuf = std::unique_ptr<uint8_t, AlignedFree>;

AlignedBuf aligned_alloc_buf(size_t align, size_t n) {
    void* p = nullptr;
    if (posix_memalign(&p, align, n) != 0) return nullptr;
    return AlignedBuf(static_cast<uint8_t*>(p));
}

// all of buf into the pipe (blocking writes)
int write_all(int pipe_w, const uint8_t* buf, size_t n, const std::atomic<bool>& stop, uint64_t* done) {
    size_t at = 0;
    while (at < n) {
        if (stop.load(std::memory_order_relaxed)) return -ECANCELED;
        ssize_t w = ::write(pipe_w, buf + at, n - at);
        if (w > 0) {
            at += static_cast<size_t>(w);
            *done += static_cast<uint64_t>(w);
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        return w < 0 && errno == EPIPE ? -ECANCELED : (w < 0 ? -errno : -EIO);
    }
    return 0;
}

// bytes [off, off + n) of the image, all inside one aligned block, through the bounce block
int write_edge(DiskImage& d, uint8_t* bounce, uint64_t off, uint64_t n, int pipe_w, const std::atomic<bool>& stop,
               uint64_t* done) {
    const uint64_t a = d.alignment(), base = off / a * a;
    const uint64_t span = std::min<uint64_t>(a, d.size() - base);  // the image's last block may be short
    const uint64_t want = (span + a - 1) / a * a;
    ssize_t r;
    do {
        r = ::pread(d.fd(), bounce, want, static_cast<off_t>(base));
    } while (r < 0 && errno == EINTR);
    if (r < 0) return -errno;
    if (static_cast<uint64_t>(r) < off - base + n) return -EIO;
    d.bytes_read += static_cast<uint64_t>(r);
    d.read_ops++;
    return write_all(pipe_w, bounce + (off - base), n, stop, done);
}

int splice_run(DiskImage& d, uint64_t off, uint64_t n, int pipe_w, const std::atomic<bool>& stop, uint64_t* done) {
    while (n > 0) {
        if (stop.load(std::memory_order_relaxed)) return -ECANCELED;
        loff_t o = static_cast<loff_t>(off);
        ssize_t s = ::splice(d.fd(), &o, pipe_w, nullptr, std::min<uint64_t>(n, kSpliceChunk), SPLICE_F_MOVE);
        if (s > 0) {
            off += static_cast<uint64_t>(s);
            n -= static_cast<uint64_t>(s);
            *done += static_cast<uint64_t>(s);
            d.bytes_read += static_cast<uint64_t>(s);
            d.bytes_spliced += static_cast<uint64_t>(s);
            d.read_ops++;
            continue;
        }
        if (s < 0 && errno == EINTR) continue;
        if (s == 0) return -EIO;  // the image ended inside a validated extent
        return errno == EPIPE ? -ECANCELED : -errno;
    }
    return 0;
}

}  // namespace

bool splice_read_supported(DiskImage& d) {
    static std::mutex mu;
    std::lock_guard lk(mu);
    int v = d.splice_probe.load();
    if (v >= 0) return v == 1;
    v = 0;
    int p[2];
    if (d.size() >= d.alignment() && ::pipe2(p, O_CLOEXEC) == 0) {
        loff_t o = 0;
        v = ::splice(d.fd(), &o, p[1], nullptr, d.alignment(), SPLICE_F_NONBLOCK) ==
                    static_cast<ssize_t>(d.alignment())
                ? 1
                : 0;
        ::close(p[0]);
        ::close(p[1]);
    }
    d.splice_probe.store(v);
    return v == 1;
}

int splice_extents(DiskImage& d, std::span<const Extent> ext, int pipe_w, const std::atomic<bool>& stop,
                   uint64_t* done) {
    static const std::vector<uint8_t> zeros(64 << 10);
    const uint64_t a = d.alignment();
    AlignedBuf bounce = aligned_alloc_buf(a, a);
    if (!bounce) return -ENOMEM;
    for (const Extent& e : ext) {
        int r = 0;
        if (e.zero) {
            for (uint64_t z = 0; z < e.length && r == 0;) {
                const uint64_t k = std::min<uint64_t>(zeros.size(), e.length - z);
                r = write_all(pipe_w, zeros.data(), k, stop, done);
                z += k;
            }
        } else {
            if (e.disk_offset > d.size() || e.length > d.size() - e.disk_offset) return -EIO;  // belt and braces
            uint64_t off = e.disk_offset, left = e.length;
            // the head up to the first aligned offset, the aligned middle, the tail
            while (r == 0 && left > 0 && off % a != 0) {
                const uint64_t k = std::min(left, a - off % a);
                r = write_edge(d, bounce.get(), off, k, pipe_w, stop, done);
                off += k;
                left -= k;
            }
            const uint64_t mid = left / a * a;
            if (r == 0 && mid > 0) {
                r = splice_run(d, off, mid, pipe_w, stop, done);
                off += mid;
                left -= mid;
            }
            if (r == 0 && left > 0) r = write_edge(d, bounce.get(), off, left, pipe_w, stop, done);
        }
        if (r != 0) return r;
    }
    return 0;
}

}  // namespace vpipe::engine
