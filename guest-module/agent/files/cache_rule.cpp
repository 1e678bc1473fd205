#include "files/cache_rule.h"

#include <vpipe/abi/ioctl.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>

namespace vpipe::agent {
namespace {

constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kMapWindow = 1ull << 30;       // mincore mapping window
constexpr uint64_t kDirtyProbeWindow = 2 * kMiB;  // cachestat granularity for dirtiness

#ifndef SYS_cachestat
#define SYS_cachestat 451  // same number on every architecture (unified syscall table)
#endif

// Our own copies of the uapi structs (older headers lack them).
struct CachestatRange {
    uint64_t off;
    uint64_t len;
};
struct CachestatResult {
    uint64_t nr_cache;
    uint64_t nr_dirty;
    uint64_t nr_writeback;
    uint64_t nr_evicted;
    uint64_t nr_recently_evicted;
};

// 0 unknown, 1 available, 2 ENOSYS
std::atomic<int> g_cachestat_state{0};

int cachestat(int fd, uint64_t off, uint64_t len, CachestatResult* cs) {
    CachestatRange range{off, len};
    *cs = {};
    long r = ::syscall(SYS_cachestat, fd, &range, cs, 0u);
    if (r != 0) {
        if (errno == ENOSYS) g_cachestat_state.store(2);
        return -errno;
    }
    g_cachestat_state.store(1);
    return 0;
}

uint64_t page_size() {
    static const uint64_t ps = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    return ps;
}

// Runs of resident pages in [start, end) (byte offsets, page-aligned start), appended to `out`.
int resident_runs(int fd, uint64_t start, uint64_t end, std::vector<Range>* out) {
    const uint64_t ps = page_size();
    std::vector<unsigned char> vec;
    bool in_run = false;
    uint64_t run_start = 0;
    for (uint64_t w = start; w < end; w += kMapWindow) {
        const uint64_t wlen = std::min(kMapWindow, end - w);
        void* addr = ::mmap(nullptr, wlen, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(w));
        if (addr == MAP_FAILED) return -errno;
        const uint64_t pages = (wlen + ps - 1) / ps;
        vec.assign(pages, 0);
        int r = ::mincore(addr, wlen, vec.data());
        int err = errno;
        ::munmap(addr, wlen);
        if (r != 0) return -err;
        for (uint64_t i = 0; i < pages; ++i) {
            const bool resident = vec[i] & 1;
            const uint64_t pos = w + i * ps;
            if (resident && !in_run) {
                run_start = pos;
                in_run = true;
            } else if (!resident && in_run) {
                out->push_back(Range{run_start, pos - run_start});
                in_run = false;
            }
        }
    }
    if (in_run) out->push_back(Range{run_start, end - run_start});
    return 0;
}

}  // namespace

uint64_t cache_rule_threshold(uint64_t file_size) { return std::max(kMiB, file_size / 10); }

bool cachestat_available() {
    int state = g_cachestat_state.load();
    if (state == 0) {
        // Probe on an fd that always exists; EBADF etc. still prove the syscall is there.
        CachestatResult cs;
        int fd = ::open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
        int r = cachestat(fd, 0, 4096, &cs);
        if (fd >= 0) ::close(fd);
        if (r == -ENOSYS) return false;
        g_cachestat_state.store(1);
        return true;
    }
    return state == 1;
}

bool range_clean_resident(int fd, uint64_t offset, uint64_t length) {
    if (length == 0 || offset > UINT64_MAX - length || !cachestat_available()) return false;
    const uint64_t ps = page_size();
    const uint64_t start = offset / ps * ps, end = (offset + length + ps - 1) / ps * ps;
    CachestatResult cs;
    if (cachestat(fd, start, end - start, &cs) < 0) return false;
    return cs.nr_cache * 8 >= (end - start) / ps * VPIPE_CACHE_RULE_EIGHTHS && cs.nr_dirty == 0 &&
           cs.nr_writeback == 0;
}

std::vector<Range> cached_runs_to_serve(int fd, uint64_t offset, uint64_t length,
                                        uint64_t file_size) {
    std::vector<Range> result;
    const uint64_t end = std::min(file_size, offset + std::min(length, UINT64_MAX - offset));
    if (end <= offset) return result;
    const uint64_t threshold = cache_rule_threshold(file_size);
    if (end - offset <= threshold) return result;  // no run inside can be long enough
    if (!cachestat_available()) return result;     // can't tell clean from dirty: offload

    const uint64_t ps = page_size();
    std::vector<Range> resident;
    if (resident_runs(fd, offset / ps * ps, end, &resident) < 0) return result;

    for (const Range& run : resident) {
        // Clip to the requested range first: the rule is about what this operation would move.
        const uint64_t r_start = std::max(run.offset, offset);
        const uint64_t r_end = std::min(run.offset + run.length, end);
        if (r_end <= r_start || r_end - r_start <= threshold) continue;

        // Split the run at dirty (or writeback) 2 MiB windows; keep the long clean pieces.
        uint64_t clean_start = r_start;
        auto flush_clean = [&](uint64_t clean_end) {
            if (clean_end > clean_start && clean_end - clean_start > threshold)
                result.push_back(Range{clean_start, clean_end - clean_start});
        };
        for (uint64_t w = r_start; w < r_end;) {
            const uint64_t w_end = std::min(r_end, (w / kDirtyProbeWindow + 1) * kDirtyProbeWindow);
            CachestatResult cs;
            const bool clean =
                cachestat(fd, w, w_end - w, &cs) == 0 && cs.nr_dirty == 0 && cs.nr_writeback == 0;
            if (!clean) {
                flush_clean(w);
                clean_start = w_end;
            }
            w = w_end;
        }
        flush_clean(r_end);
    }
    return result;
}

int drop_cached_range(int fd, uint64_t offset, uint64_t length) {
    if (length == 0) return 0;
    const uint64_t ps = page_size();
    const uint64_t start = offset / ps * ps;
    const uint64_t end = (std::min(offset + length, UINT64_MAX - kMiB) + ps - 1) / ps * ps;
    // The page cache evicts whole folios only, and a large folio (up to 2 MiB) straddling an end
    // of the range survives a page-exact fadvise. So widen step by step: pages, 2 MiB, whole file.
    // Dropping clean pages outside the range costs a re-read at most.
    const uint64_t wide_start = start / kDirtyProbeWindow * kDirtyProbeWindow;
    const uint64_t wide_end = (end + kDirtyProbeWindow - 1) / kDirtyProbeWindow * kDirtyProbeWindow;
    const Range attempts[] = {{start, end - start}, {wide_start, wide_end - wide_start}, {0, 0}};
    for (const Range& a : attempts) {
        int err = ::posix_fadvise(fd, static_cast<off_t>(a.offset), static_cast<off_t>(a.length),
                                  POSIX_FADV_DONTNEED);
        if (err != 0) return -err;
        CachestatResult cs;
        if (!cachestat_available() || cachestat(fd, start, end - start, &cs) != 0) return 0;
        if (cs.nr_cache == 0) return 0;
    }
    return -EBUSY;
}

}  // namespace vpipe::agent
