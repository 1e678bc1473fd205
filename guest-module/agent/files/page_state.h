// How many pages of a file range are in the page cache, dirty, or under writeback: what the
// cache rule (cache_rule.h) and the post-write cache drop (dest_alloc.cpp) need to know.
//
// Two probes, chosen once per process:
//  - cachestat(2) (Linux 6.5+): one syscall per range, counts taken from the page-cache xarray.
//  - page flags (any kernel, needs CAP_SYS_ADMIN, as the agent has): residency from mincore(2)
//    on a read-only shared mapping; each resident page is then touched once (a minor fault that
//    maps the page already in the cache, no I/O), its frame number read from /proc/self/pagemap
//    and its flags from /proc/kpageflags (KPF_DIRTY, KPF_WRITEBACK). This is the path on
//    Debian 12's own 6.1 kernel, where cachestat does not exist.
// Both see what the kernel's page flags say: a page dirtied through another process's writable
// mapping is counted dirty only once the kernel has moved the PTE's dirty bit to the page (at
// writeback or unmap); the agent flushes ranges before it offloads them, which does that.
#pragma once

#include <cstdint>

namespace vpipe::agent {

struct PageCounts {
    uint64_t cached = 0;     // pages of the range in the page cache
    uint64_t dirty = 0;      // ... of which dirty
    uint64_t writeback = 0;  // ... of which under writeback
};

enum class DirtyProbe {
    none,        // neither works: clean and dirty cached pages cannot be told apart
    cachestat,   // cachestat(2)
    page_flags,  // mincore + /proc/self/pagemap + /proc/kpageflags
};

// The probe this process uses (the best one available, decided at the first call).
DirtyProbe dirty_probe();
const char* dirty_probe_name(DirtyProbe p);
// Whether `p` works here (kernel and privileges), with the reason when it does not.
bool dirty_probe_usable(DirtyProbe p, const char** why = nullptr);
// Tests: use `p` from now on (both probes are then exercised on kernels that have both).
void force_dirty_probe(DirtyProbe p);

// Counts over the pages overlapping [offset, offset+length). 0, or -errno (-ENOSYS: no probe).
int count_pages(int fd, uint64_t offset, uint64_t length, PageCounts* out);

}  // namespace vpipe::agent
