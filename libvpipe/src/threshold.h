// The offload threshold: operations shorter than this take the classic path by themselves
// (vpipe.h, "Threshold"). Read once from $VPIPE_MIN_OFFLOAD, else from the configuration file
// ($VPIPE_CONFIG, else /etc/vpipe/vpipe.conf: `[libvpipe] min_offload = "256K"` or a number of
// bytes), else VPIPE_MIN_OFFLOAD_DEFAULT.
#pragma once

#include <cstdint>
#include <string>

namespace vpipe::lib {

uint64_t min_offload();
uint64_t set_min_offload(uint64_t bytes);  // returns the previous value

// "262144", "256K", "1M", "2G" (binary multiples); false when it is none of those
bool parse_size(const std::string& text, uint64_t* out);

// The cache rule's pre-check for file -> socket (the guest component applies the rule itself;
// checked here first so that a cached range costs no round trip to it): whether every page of
// [off, off + len) of `fd` is in the page cache and clean (cachestat(2); false without it).
bool range_cached(int fd, uint64_t off, uint64_t len);

}  // namespace vpipe::lib
