#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <vector>

#include "files/cache_rule.h"
#include "lab_fs.h"

namespace vpipe::test {
namespace {

using agent::cached_runs_to_serve;
using agent::Range;

struct CacheRuleTest : LabSuite<CacheRuleTest> {
    void SetUp() override {
        LabSuite::SetUp();
        if (IsSkipped() || HasFatalFailure()) return;
        if (!agent::cachestat_available()) GTEST_SKIP() << "kernel without cachestat(2)";
    }
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

TEST_F(CacheRuleTest, CleanCachedFileIsServedFromCache) {
    const uint64_t size = 8 * kMiB;
    int fd = make_file(lab().path("clean"), random_bytes(size, 1));  // written + fsync: clean
    EXPECT_EQ(pairs(cached_runs_to_serve(fd, 0, size, size)), (Pairs{{0, size}}));
    // clipped to the requested range
    EXPECT_EQ(pairs(cached_runs_to_serve(fd, 1 * kMiB + 100, 3 * kMiB, size)),
              (Pairs{{1 * kMiB + 100, 3 * kMiB}}));
    // a range past EOF is clipped to the file
    EXPECT_EQ(pairs(cached_runs_to_serve(fd, 6 * kMiB, 10 * kMiB, size)),
              (Pairs{{6 * kMiB, 2 * kMiB}}));
    ::close(fd);
}

TEST_F(CacheRuleTest, DirtyFileIsOffloadedNotServed) {
    const uint64_t size = 8 * kMiB;
    int fd = make_file(lab().path("dirty"), random_bytes(size, 2), /*flushed=*/false);
    EXPECT_TRUE(cached_runs_to_serve(fd, 0, size, size).empty());
    ASSERT_EQ(::fsync(fd), 0);  // once clean, the same pages qualify
    EXPECT_EQ(pairs(cached_runs_to_serve(fd, 0, size, size)), (Pairs{{0, size}}));
    ::close(fd);
}

TEST_F(CacheRuleTest, DirtyWindowSplitsACleanRun) {
    const uint64_t size = 8 * kMiB;
    int fd = make_file(lab().path("partly"), random_bytes(size, 3));
    ASSERT_EQ(::pwrite(fd, "x", 1, 4 * kMiB + 10), 1);  // one dirty page in [4 MiB, 6 MiB)
    EXPECT_EQ(pairs(cached_runs_to_serve(fd, 0, size, size)),
              (Pairs{{0, 4 * kMiB}, {6 * kMiB, 2 * kMiB}}));
    ::close(fd);
}

TEST_F(CacheRuleTest, ShortRunsAreNotServed) {
    const uint64_t size = 8 * kMiB;  // threshold 1 MiB
    int fd = uncached_file("short", size);
    EXPECT_TRUE(cached_runs_to_serve(fd, 0, size, size).empty());
    cache_clean(fd, 2 * kMiB, 512 * kKiB);
    EXPECT_TRUE(cached_runs_to_serve(fd, 0, size, size).empty());
    cache_clean(fd, 2 * kMiB, 1 * kMiB);  // exactly 1 MiB: must EXCEED the threshold
    EXPECT_TRUE(cached_runs_to_serve(fd, 0, size, size).empty());
    cache_clean(fd, 3 * kMiB, 4 * kKiB);  // now 1 MiB + 4 KiB
    EXPECT_EQ(pairs(cached_runs_to_serve(fd, 0, size, size)), (Pairs{{2 * kMiB, 1 * kMiB + 4 * kKiB}}));
    // the same run cut by the requested range to 1 MiB no longer qualifies
    EXPECT_TRUE(cached_runs_to_serve(fd, 2 * kMiB + 4 * kKiB, 4 * kMiB, size).empty());
    ::close(fd);
}

TEST_F(CacheRuleTest, TenPercentOfTheFileRule) {
    const uint64_t size = 64 * kMiB;  // threshold 6.4 MiB
    int fd = uncached_file("tenpct", size);
    cache_clean(fd, 0, 6 * kMiB);
    EXPECT_TRUE(cached_runs_to_serve(fd, 0, size, size).empty());
    cache_clean(fd, 6 * kMiB, 1 * kMiB);
    EXPECT_EQ(pairs(cached_runs_to_serve(fd, 0, size, size)), (Pairs{{0, 7 * kMiB}}));
    ::close(fd);
}

TEST_F(CacheRuleTest, DropRoundsOutToWholePages) {
    const uint64_t size = 1 * kMiB;
    int fd = make_file(lab().path("drop"), random_bytes(size, 4));
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
