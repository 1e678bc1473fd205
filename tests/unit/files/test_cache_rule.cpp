#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <vector>

#include "files/cache_rule.h"
#include "files/page_state.h"
#include "lab_fs.h"

namespace vpipe::test {
namespace {

using agent::cached_runs_to_serve;
using agent::Range;

// Probe types for the typed suite: every cache-rule test runs once per dirtiness probe, so the
// page-flags path (the one Debian 12's 6.1 kernel uses) is proven on kernels that also have
// cachestat, and a kernel without cachestat skips only that probe, saying why.
struct Cachestat {
    static constexpr agent::DirtyProbe probe = agent::DirtyProbe::cachestat;
};
struct PageFlags {
    static constexpr agent::DirtyProbe probe = agent::DirtyProbe::page_flags;
};

template <class Probe>
struct CacheRuleTest : LabSuite<CacheRuleTest<Probe>> {
    using Base = LabSuite<CacheRuleTest<Probe>>;
    void SetUp() override {
        Base::SetUp();
        if (this->IsSkipped() || this->HasFatalFailure()) return;
        const char* why = "";
        if (!agent::dirty_probe_usable(Probe::probe, &why)) GTEST_SKIP() << why;
        previous_ = agent::dirty_probe();
        agent::force_dirty_probe(Probe::probe);
    }
    void TearDown() override { agent::force_dirty_probe(previous_); }
    agent::DirtyProbe previous_ = agent::DirtyProbe::none;
    static LoopFs& lab() { return Base::lab(); }
    // A flushed file of `size` bytes with nothing of it in the page cache.
    int uncached_file(const std::string& name, uint64_t size) {
        data = random_bytes(size, static_cast<uint32_t>(size));
        int fd = make_file(lab().path(name), data);
        EXPECT_EQ(::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
        return fd;
    }
    // Puts [off, off+len) (page-aligned) in the cache as CLEAN pages: full-page writes need no
    // read (so no readahead around them), and the fsync cleans them.
    void cache_clean(int fd, uint64_t off, uint64_t len) {
        ASSERT_EQ(::pwrite(fd, data.data() + off, len, static_cast<off_t>(off)),
                  static_cast<ssize_t>(len));
        ASSERT_EQ(::fsync(fd), 0);
    }
    std::string data;
};

using Probes = ::testing::Types<Cachestat, PageFlags>;
struct ProbeName {
    template <class T>
    static std::string GetName(int) {
        return agent::dirty_probe_name(T::probe);
    }
};
TYPED_TEST_SUITE(CacheRuleTest, Probes, ProbeName);

std::vector<std::pair<uint64_t, uint64_t>> pairs(const std::vector<Range>& v) {
    std::vector<std::pair<uint64_t, uint64_t>> out;
    for (const Range& r : v) out.emplace_back(r.offset, r.length);
    return out;
}
using Pairs = std::vector<std::pair<uint64_t, uint64_t>>;

TEST(CacheRuleThreshold, IsMaxOfOneMiBAndTenPercent) {
    EXPECT_EQ(agent::cache_rule_threshold(0), 1 * kMiB);
    EXPECT_EQ(agent::cache_rule_threshold(10 * kMiB), 1 * kMiB);
    EXPECT_EQ(agent::cache_rule_threshold(64 * kMiB), 64 * kMiB / 10);
    EXPECT_EQ(agent::cache_rule_threshold(100 * kMiB), 10 * kMiB);
}

TYPED_TEST(CacheRuleTest, CleanCachedFileIsServedFromCache) {
    const uint64_t size = 8 * kMiB;
    int fd = make_file(this->lab().path("clean"), random_bytes(size, 1));  // written + fsync: clean
    EXPECT_EQ(pairs(cached_runs_to_serve(fd, 0, size, size)), (Pairs{{0, size}}));
    // clipped to the requested range
    EXPECT_EQ(pairs(cached_runs_to_serve(fd, 1 * kMiB + 100, 3 * kMiB, size)),
              (Pairs{{1 * kMiB + 100, 3 * kMiB}}));
    // a range past EOF is clipped to the file
    EXPECT_EQ(pairs(cached_runs_to_serve(fd, 6 * kMiB, 10 * kMiB, size)),
              (Pairs{{6 * kMiB, 2 * kMiB}}));
    ::close(fd);
}

TYPED_TEST(CacheRuleTest, DirtyFileIsOffloadedNotServed) {
    const uint64_t size = 8 * kMiB;
    int fd = make_file(this->lab().path("dirty"), random_bytes(size, 2), /*flushed=*/false);
    EXPECT_TRUE(cached_runs_to_serve(fd, 0, size, size).empty());
    ASSERT_EQ(::fsync(fd), 0);  // once clean, the same pages qualify
    EXPECT_EQ(pairs(cached_runs_to_serve(fd, 0, size, size)), (Pairs{{0, size}}));
    ::close(fd);
}

TYPED_TEST(CacheRuleTest, DirtyWindowSplitsACleanRun) {
    const uint64_t size = 8 * kMiB;
    int fd = make_file(this->lab().path("partly"), random_bytes(size, 3));
    ASSERT_EQ(::pwrite(fd, "x", 1, 4 * kMiB + 10), 1);  // one dirty page in [4 MiB, 6 MiB)
    EXPECT_EQ(pairs(cached_runs_to_serve(fd, 0, size, size)),
              (Pairs{{0, 4 * kMiB}, {6 * kMiB, 2 * kMiB}}));
    ::close(fd);
}

TYPED_TEST(CacheRuleTest, ShortRunsAreNotServed) {
    const uint64_t size = 8 * kMiB;  // threshold 1 MiB
    int fd = this->uncached_file("short", size);
    EXPECT_TRUE(cached_runs_to_serve(fd, 0, size, size).empty());
    this->cache_clean(fd, 2 * kMiB, 512 * kKiB);
    EXPECT_TRUE(cached_runs_to_serve(fd, 0, size, size).empty());
    this->cache_clean(fd, 2 * kMiB, 1 * kMiB);  // exactly 1 MiB: must EXCEED the threshold
    EXPECT_TRUE(cached_runs_to_serve(fd, 0, size, size).empty());
    this->cache_clean(fd, 3 * kMiB, 4 * kKiB);  // now 1 MiB + 4 KiB
    EXPECT_EQ(pairs(cached_runs_to_serve(fd, 0, size, size)), (Pairs{{2 * kMiB, 1 * kMiB + 4 * kKiB}}));
    // the same run cut by the requested range to 1 MiB no longer qualifies
    EXPECT_TRUE(cached_runs_to_serve(fd, 2 * kMiB + 4 * kKiB, 4 * kMiB, size).empty());
    ::close(fd);
}

TYPED_TEST(CacheRuleTest, TenPercentOfTheFileRule) {
    const uint64_t size = 64 * kMiB;  // threshold 6.4 MiB
    int fd = this->uncached_file("tenpct", size);
    this->cache_clean(fd, 0, 6 * kMiB);
    EXPECT_TRUE(cached_runs_to_serve(fd, 0, size, size).empty());
    this->cache_clean(fd, 6 * kMiB, 1 * kMiB);
    EXPECT_EQ(pairs(cached_runs_to_serve(fd, 0, size, size)), (Pairs{{0, 7 * kMiB}}));
    ::close(fd);
}

TYPED_TEST(CacheRuleTest, PageCountsFollowWritesFlushesAndDrops) {
    const uint64_t size = 4 * kMiB, pages = size / 4096;
    int fd = make_file(this->lab().path("counts"), random_bytes(size, 5), /*flushed=*/false);
    agent::PageCounts pc;
    ASSERT_EQ(agent::count_pages(fd, 0, size, &pc), 0);
    EXPECT_EQ(pc.cached, pages);
    EXPECT_EQ(pc.dirty + pc.writeback, pages) << "written, not flushed: every page dirty or in flight";
    ASSERT_EQ(::fsync(fd), 0);
    ASSERT_EQ(agent::count_pages(fd, 0, size, &pc), 0);
    EXPECT_EQ(pc.cached, pages);
    EXPECT_EQ(pc.dirty, 0u);
    EXPECT_EQ(pc.writeback, 0u);
    // One byte dirties its page, and with large folios the whole folio it sits in (up to
    // 2 MiB, 2 MiB-aligned: seen on CI, where one byte made 512 pages dirty).
    ASSERT_EQ(::pwrite(fd, "x", 1, 2 * kMiB + 1), 1);
    ASSERT_EQ(agent::count_pages(fd, 0, size, &pc), 0);
    EXPECT_GE(pc.dirty + pc.writeback, 1u);
    EXPECT_LE(pc.dirty + pc.writeback, 512u);
    const uint64_t dirty_total = pc.dirty + pc.writeback;
    ASSERT_EQ(agent::count_pages(fd, 2 * kMiB, 2 * kMiB, &pc), 0);  // all of it in the 2nd half
    EXPECT_EQ(pc.dirty + pc.writeback, dirty_total);
    ASSERT_EQ(agent::count_pages(fd, 0, 2 * kMiB, &pc), 0);  // the range excludes it
    EXPECT_EQ(pc.cached, pages / 2);
    EXPECT_EQ(pc.dirty, 0u);
    ASSERT_EQ(::fsync(fd), 0);
    ASSERT_EQ(::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
    ASSERT_EQ(agent::count_pages(fd, 0, size, &pc), 0);
    EXPECT_EQ(pc.cached, 0u);
    ASSERT_EQ(agent::count_pages(fd, 0, 0, &pc), 0);
    EXPECT_EQ(pc.cached, 0u);
    EXPECT_EQ(agent::count_pages(fd, UINT64_MAX - 10, 100, &pc), -EINVAL);
    ::close(fd);
}

TYPED_TEST(CacheRuleTest, DropRoundsOutToWholePages) {
    const uint64_t size = 1 * kMiB;
    int fd = make_file(this->lab().path("drop"), random_bytes(size, 4));
    ASSERT_EQ(agent::drop_cached_range(fd, 100, 5000), 0);  // touches pages 0 and 1
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    ASSERT_NE(p, MAP_FAILED);
    std::vector<unsigned char> vec(size / 4096);
    ASSERT_EQ(::mincore(p, size, vec.data()), 0);
    ::munmap(p, size);
    EXPECT_EQ(vec[0] & 1, 0);
    EXPECT_EQ(vec[1] & 1, 0);  // the partial page at the end went too
    // (pages past the range may go as well: large folios are evicted whole)
    EXPECT_EQ(agent::drop_cached_range(fd, 0, 0), 0);
    ::close(fd);
}

}  // namespace
}  // namespace vpipe::test
