#include "threshold.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdlib>

#include <toml++/toml.h>

#include <vpipe/abi/ioctl.h>
#include <vpipe/vpipe.h>

namespace vpipe::lib {
namespace {

std::atomic<int64_t> g_min{-1};  // -1: not read yet

uint64_t from_config(uint64_t fallback) {
    const char* env = std::getenv("VPIPE_CONFIG");
    const std::string path = (env && *env) ? env : "/etc/vpipe/vpipe.conf";
    try {
        toml::table t = toml::parse_file(path);
        auto node = t["libvpipe"]["min_offload"];
        uint64_t v = 0;
        if (auto i = node.value<int64_t>(); i && *i >= 0) return static_cast<uint64_t>(*i);
        if (auto str = node.value<std::string>(); str && parse_size(*str, &v)) return v;
    } catch (const std::exception&) {
        // no file, or not ours to judge: the default applies
    }
    return fallback;
}

uint64_t read_once() {
    uint64_t v = VPIPE_MIN_OFFLOAD_DEFAULT;
    const char* env = std::getenv("VPIPE_MIN_OFFLOAD");
    if (!(env && *env && parse_size(env, &v))) v = from_config(v);
    return v;
}

}  // namespace

bool parse_size(const std::string& text, uint64_t* out) {
    size_t i = 0;
    uint64_t v = 0;
    while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
        if (v > (UINT64_MAX - 9) / 10) return false;
        v = v * 10 + static_cast<uint64_t>(text[i++] - '0');
    }
    if (i == 0) return false;
    unsigned shift = 0;
    if (i < text.size()) {
        switch (std::toupper(static_cast<unsigned char>(text[i]))) {
        case 'K': shift = 10; break;
        case 'M': shift = 20; break;
        case 'G': shift = 30; break;
        default: return false;
        }
        ++i;
        if (i < text.size() && (text[i] == 'i' || text[i] == 'I')) ++i;  // "KiB"-ish
        if (i < text.size() && (text[i] == 'b' || text[i] == 'B')) ++i;
    }
    if (i != text.size() || (shift && v > (UINT64_MAX >> shift))) return false;
    *out = v << shift;
    return true;
}

uint64_t min_offload() {
    int64_t v = g_min.load();
    if (v < 0) {
        int64_t expected = -1;
        g_min.compare_exchange_strong(expected, static_cast<int64_t>(read_once()));
        v = g_min.load();
    }
    return static_cast<uint64_t>(v);
}

uint64_t set_min_offload(uint64_t bytes) {
    const uint64_t prev = min_offload();
    g_min = static_cast<int64_t>(bytes > INT64_MAX ? INT64_MAX : bytes);
    return prev;
}

}  // namespace vpipe::lib

namespace vpipe::lib {

bool range_cached(int fd, uint64_t off, uint64_t len) {
#ifndef SYS_cachestat
    constexpr long kSysCachestat = 451;  // the same on every architecture
#else
    constexpr long kSysCachestat = SYS_cachestat;
#endif
    static std::atomic<bool> missing{false};
    if (len == 0 || off > UINT64_MAX - len || missing.load(std::memory_order_relaxed)) return false;
    struct {
        uint64_t off, len;
    } range;
    struct {
        uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
    } cs{};
    const uint64_t ps = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    range.off = off / ps * ps;
    range.len = (off + len + ps - 1) / ps * ps - range.off;
    if (::syscall(kSysCachestat, fd, &range, &cs, 0u) != 0) {
        if (errno == ENOSYS) missing.store(true, std::memory_order_relaxed);
        return false;
    }
    return cs.nr_cache * 8 >= (range.len / ps) * VPIPE_CACHE_RULE_EIGHTHS && cs.nr_dirty == 0 &&
           cs.nr_writeback == 0;
}

}  // namespace vpipe::lib
