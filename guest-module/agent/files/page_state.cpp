#include "files/page_state.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <vector>

namespace vpipe::agent {
namespace {

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

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22  // Linux 5.14+
#endif

// include/uapi/linux/kernel-page-flags.h
constexpr uint64_t kKpfDirty = 1ull << 4;
constexpr uint64_t kKpfWriteback = 1ull << 8;
// Documentation/admin-guide/mm/pagemap.rst
constexpr uint64_t kPmPresent = 1ull << 63;
constexpr uint64_t kPmPfnMask = (1ull << 55) - 1;

constexpr uint64_t kMapWindow = 1ull << 30;  // bytes mapped at a time by the page-flags probe

uint64_t page_size() {
    static const uint64_t ps = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    return ps;
}

int do_cachestat(int fd, uint64_t off, uint64_t len, PageCounts* out) {
    CachestatRange range{off, len};
    CachestatResult cs{};
    if (::syscall(SYS_cachestat, fd, &range, &cs, 0u) != 0) return -errno;
    *out = PageCounts{cs.nr_cache, cs.nr_dirty, cs.nr_writeback};
    return 0;
}

struct Fd {
    int fd;
    explicit Fd(int f) : fd(f) {}
    ~Fd() {
        if (fd >= 0) ::close(fd);
    }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
};

bool cachestat_works(const char** why) {
    // Any answer but ENOSYS proves the syscall exists (the fd may be of any kind).
    Fd fd(::open("/proc/self/exe", O_RDONLY | O_CLOEXEC));
    PageCounts pc;
    if (do_cachestat(fd.fd, 0, 4096, &pc) == -ENOSYS) {
        if (why) *why = "kernel without cachestat(2) (Linux 6.5+)";
        return false;
    }
    return true;
}

// /proc/kpageflags must be readable and pagemap must give frame numbers (CAP_SYS_ADMIN): checked
// on a page of our own stack, which is certainly present.
bool page_flags_work(const char** why) {
    Fd flags(::open("/proc/kpageflags", O_RDONLY | O_CLOEXEC));
    if (flags.fd < 0) {
        if (why) *why = "/proc/kpageflags not readable (needs CAP_SYS_ADMIN, CONFIG_PROC_PAGE_MONITOR)";
        return false;
    }
    Fd map(::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
    volatile char probe = 1;
    const uint64_t vpn = reinterpret_cast<uintptr_t>(&probe) / page_size();
    uint64_t entry = 0;
    if (map.fd < 0 || ::pread(map.fd, &entry, sizeof entry, static_cast<off_t>(vpn * 8)) != 8 ||
        !(entry & kPmPresent) || (entry & kPmPfnMask) == 0) {
        if (why) *why = "/proc/self/pagemap gives no frame numbers (needs CAP_SYS_ADMIN)";
        return false;
    }
    return true;
}

// Residency, dirtiness and writeback of [start, end) (page-aligned start) from page flags.
int page_flags_count(int fd, uint64_t start, uint64_t end, PageCounts* out) {
    const uint64_t ps = page_size();
    Fd map(::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
    Fd flags(::open("/proc/kpageflags", O_RDONLY | O_CLOEXEC));
    if (map.fd < 0 || flags.fd < 0) return -errno;
    PageCounts pc;
    std::vector<unsigned char> resident;
    std::vector<uint64_t> entries;
    for (uint64_t w = start; w < end; w += kMapWindow) {
        const uint64_t wlen = std::min(kMapWindow, end - w);
        const uint64_t pages = (wlen + ps - 1) / ps;
        auto* base = static_cast<char*>(
            ::mmap(nullptr, wlen, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(w)));
        if (base == MAP_FAILED) return -errno;
        resident.assign(pages, 0);
        int rc = ::mincore(base, wlen, resident.data()) == 0 ? 0 : -errno;
        // Map the resident runs into our page table so pagemap can name their frames.
        // MADV_POPULATE_READ rather than touching them: a file truncated meanwhile gives an error
        // here, not SIGBUS. A page evicted since mincore is read back in: harmless.
        for (uint64_t i = 0; rc == 0 && i < pages;) {
            uint64_t n = 0;
            while (i + n < pages && (resident[i + n] & 1)) ++n;
            if (n > 0 && ::madvise(base + i * ps, n * ps, MADV_POPULATE_READ) != 0)
                rc = -errno;
            i += n + 1;
        }
        entries.assign(pages, 0);
        const uint64_t vpn = reinterpret_cast<uintptr_t>(base) / ps;
        const auto want = static_cast<ssize_t>(pages * sizeof(uint64_t));
        if (rc == 0 && ::pread(map.fd, entries.data(), static_cast<size_t>(want),
                               static_cast<off_t>(vpn * sizeof(uint64_t))) != want)
            rc = errno ? -errno : -EIO;
        ::munmap(base, wlen);
        if (rc != 0) return rc;
        // Read the flags of physically contiguous frames with one pread.
        for (uint64_t i = 0; i < pages;) {
            if (!(resident[i] & 1) || !(entries[i] & kPmPresent)) {
                ++i;
                continue;
            }
            const uint64_t pfn0 = entries[i] & kPmPfnMask;
            if (pfn0 == 0) return -EPERM;  // frame numbers hidden: no privilege
            uint64_t n = 1;
            while (i + n < pages && (resident[i + n] & 1) && (entries[i + n] & kPmPresent) &&
                   (entries[i + n] & kPmPfnMask) == pfn0 + n && n < 512)
                ++n;
            uint64_t f[512];
            const auto fwant = static_cast<ssize_t>(n * sizeof(uint64_t));
            if (::pread(flags.fd, f, static_cast<size_t>(fwant),
                        static_cast<off_t>(pfn0 * sizeof(uint64_t))) != fwant)
                return errno ? -errno : -EIO;
            for (uint64_t k = 0; k < n; ++k) {
                ++pc.cached;
                if (f[k] & kKpfDirty) ++pc.dirty;
                if (f[k] & kKpfWriteback) ++pc.writeback;
            }
            i += n;
        }
    }
    *out = pc;
    return 0;
}

std::atomic<int> g_probe{-1};  // -1 undecided, else a DirtyProbe

}  // namespace

const char* dirty_probe_name(DirtyProbe p) {
    switch (p) {
        case DirtyProbe::cachestat: return "cachestat";
        case DirtyProbe::page_flags: return "page-flags";
        case DirtyProbe::none: break;
    }
    return "none";
}

bool dirty_probe_usable(DirtyProbe p, const char** why) {
    switch (p) {
        case DirtyProbe::cachestat: return cachestat_works(why);
        case DirtyProbe::page_flags: return page_flags_work(why);
        case DirtyProbe::none: break;
    }
    return true;
}

DirtyProbe dirty_probe() {
    int p = g_probe.load();
    if (p < 0) {
        DirtyProbe best = dirty_probe_usable(DirtyProbe::cachestat)    ? DirtyProbe::cachestat
                          : dirty_probe_usable(DirtyProbe::page_flags) ? DirtyProbe::page_flags
                                                                       : DirtyProbe::none;
        p = static_cast<int>(best);
        g_probe.store(p);
    }
    return static_cast<DirtyProbe>(p);
}

void force_dirty_probe(DirtyProbe p) { g_probe.store(static_cast<int>(p)); }

int count_pages(int fd, uint64_t offset, uint64_t length, PageCounts* out) {
    *out = {};
    if (length == 0) return 0;
    if (offset > UINT64_MAX - length) return -EINVAL;
    const uint64_t ps = page_size();
    const uint64_t start = offset / ps * ps, end = (offset + length + ps - 1) / ps * ps;
    switch (dirty_probe()) {
        case DirtyProbe::cachestat: return do_cachestat(fd, start, end - start, out);
        case DirtyProbe::page_flags: return page_flags_count(fd, start, end, out);
        case DirtyProbe::none: break;
    }
    return -ENOSYS;
}

}  // namespace vpipe::agent
