#include "files/cache_rule.h"

#include "files/page_state.h"

#include <vpipe/abi/ioctl.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace vpipe::agent {
namespace {

constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kMapWindow = 1ull << 30;       // mincore mapping window
constexpr uint64_t kDirtyProbeWindow = 2 * kMiB;  // granularity of the dirtiness probe

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

bool range_clean_resident(int fd, uint64_t offset, uint64_t length) {
    if (length == 0 || offset > UINT64_MAX - length) return false;
    const uint64_t ps = page_size();
    const uint64_t start = offset / ps * ps, end = (offset + length + ps - 1) / ps * ps;
    PageCounts pc;
    if (count_pages(fd, start, end - start, &pc) < 0) return false;
    return pc.cached * 8 >= (end - start) / ps * VPIPE_CACHE_RULE_EIGHTHS && pc.dirty == 0 &&
           pc.writeback == 0;
}

std::vector<Range> cached_runs_to_serve(int fd, uint64_t offset, uint64_t length,
                                        uint64_t file_size) {
    std::vector<Range> result;
    const uint64_t end = std::min(file_size, offset + std::min(length, UINT64_MAX - offset));
    if (end <= offset) return result;
    const uint64_t threshold = cache_rule_threshold(file_size);
    if (end - offset <= threshold) return result;  // no run inside can be long enough
    if (dirty_probe() == DirtyProbe::none) return result;  // can't tell clean from dirty: offload

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
            PageCounts pc;
            const bool clean =
                count_pages(fd, w, w_end - w, &pc) == 0 && pc.dirty == 0 && pc.writeback == 0;
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
        PageCounts pc;
        if (count_pages(fd, start, end - start, &pc) != 0) return 0;  // cannot tell: done
        if (pc.cached == 0) return 0;
    }
    return -EBUSY;
}

}  // namespace vpipe::agent
