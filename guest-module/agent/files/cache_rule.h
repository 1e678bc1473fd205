// The paper's cache rule (SoCC'14 section 3.2): a source range whose pages the guest already
// holds in its page cache is cheaper to serve from the guest than to offload -- but only when the
// contiguous cached run is long enough to pay for splitting the operation, i.e. longer than
// max{1 MiB, 10 % of the file}.
//
// Only CLEAN cached pages count. Dirty data is flushed and offloaded instead (after flush_range
// the disk holds it), which is why a file that was just written is offloaded, not served from
// cache. Residency comes from mincore(2) on a read-only mapping of the range (mapped in 1 GiB
// windows); dirtiness from page_state.h (cachestat(2) on Linux 6.5+, page flags on older
// kernels), probed per run in 2 MiB windows: a window with any dirty or writeback page is not
// clean.
//
// Without either probe (no cachestat and no CAP_SYS_ADMIN) clean and dirty resident pages cannot
// be told apart, so every resident page is treated as possibly dirty and no run is returned: the
// operation is offloaded after a flush, which is always correct, merely slower for cached files.
#pragma once

#include <cstdint>
#include <vector>

namespace vpipe::agent {

struct Range {
    uint64_t offset;
    uint64_t length;
};

// max{1 MiB, file_size / 10}: a run must be strictly longer than this to be served from cache.
uint64_t cache_rule_threshold(uint64_t file_size);

// The runs of clean resident pages within [offset, offset+length) (clipped to file_size) that are
// longer than cache_rule_threshold(file_size), in order, clipped to the range. Empty when nothing
// qualifies, when the fd cannot be mapped for reading, or when no dirtiness probe works.
std::vector<Range> cached_runs_to_serve(int fd, uint64_t offset, uint64_t length,
                                        uint64_t file_size);

// The file -> socket cache rule: whether at least VPIPE_CACHE_RULE_EIGHTHS eighths of the pages
// overlapping [offset, offset+length) are in the page cache and none is dirty or under writeback
// (page_state.h: one cachestat call, or the page-flags walk). false without a probe.
bool range_clean_resident(int fd, uint64_t offset, uint64_t length);

// Drops the page cache of every page overlapping [offset, offset+length) (rounded OUT to pages:
// posix_fadvise alone keeps partial pages at the ends). Used after dom0 wrote the range, so stale
// pages neither shadow nor overwrite what dom0 wrote. Clean pages only: the caller flushed before
// the engine ran. Large folios are evicted whole only, so when pages of the range survive (checked
// with count_pages) the drop widens to 2 MiB alignment, then to the whole file -- clean pages
// outside the range may go too. Returns 0, or -EBUSY when pages of the range stay resident
// (e.g. mapped by a process), or -errno. length 0: no-op.
int drop_cached_range(int fd, uint64_t offset, uint64_t length);

}  // namespace vpipe::agent
