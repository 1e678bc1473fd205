#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <fstream>
#include <iostream>

#include "files/disk_table.h"
#include "files/extent_map.h"
#include "lab_fs.h"

namespace vpipe::test {
namespace {

using agent::DiskTable;
using agent::FileExtents;
using agent::Segment;
using agent::map_file_range;

constexpr uint32_t kVdev = 51712;

struct ExtentMapTest : LabSuite<ExtentMapTest> {
    static LoopFs::Options lab_options() { return {4 * kGiB, false}; }  // sparse image
    void SetUp() override {
        LabSuite::SetUp();
        if (IsSkipped() || HasFatalFailure()) return;
        ASSERT_EQ(table.add(kVdev, lab().loop), 0);
        ASSERT_EQ(table.disks()[0].partition_offset, 0u);  // partition-less disk: offset 0
    }
    // Maps [offset, offset+length) and compares the image bytes at the extents with `expected`.
    void expect_maps_to(int fd, uint64_t offset, uint64_t length, const std::string& expected,
                        FileExtents* out = nullptr) {
        FileExtents ext;
        ASSERT_EQ(map_file_range(fd, offset, length, table, &ext), 0);
        EXPECT_EQ(ext.vdev, kVdev);
        EXPECT_EQ(check_mapping(ext, length), "");
        ASSERT_EQ(expected.size(), length);
        EXPECT_TRUE(lab().read_extents(ext) == expected) << "image bytes differ from the file";
        if (out) *out = ext;
    }
    DiskTable table;
};

TEST_F(ExtentMapTest, ZeroLengthYieldsNoSegments) {
    int fd = make_file(lab().path("zero"), "0123456789");
    FileExtents ext;
    ext.segments.push_back(Segment{1, 1, false});  // must be cleared
    EXPECT_EQ(map_file_range(fd, 0, 0, table, &ext), 0);
    EXPECT_TRUE(ext.segments.empty());
    EXPECT_EQ(ext.vdev, kVdev);
    EXPECT_EQ(map_file_range(fd, 10, 0, table, &ext), 0);  // at EOF
    EXPECT_EQ(map_file_range(fd, 11, 0, table, &ext), -EINVAL);
    ::close(fd);
}

TEST_F(ExtentMapTest, SmallSizes) {
    for (uint64_t size : {uint64_t{1}, 4 * kKiB - 1, 4 * kKiB, 1 * kMiB + 1}) {
        SCOPED_TRACE(size);
        const std::string data = random_bytes(size, static_cast<uint32_t>(size));
        int fd = make_file(lab().path("small" + std::to_string(size)), data);
        FileExtents ext;
        expect_maps_to(fd, 0, size, data, &ext);
        if (size <= 4 * kKiB) {
            ASSERT_EQ(ext.segments.size(), 1u);
            EXPECT_EQ(ext.segments[0].length, size);
            EXPECT_EQ(ext.segments[0].disk_offset % 4096, 0u);
        }
        ::close(fd);
    }
}

TEST_F(ExtentMapTest, UnalignedOffsetAndLength) {
    const std::string data = random_bytes(3 * kMiB, 2);
    int fd = make_file(lab().path("unaligned"), data);
    const uint64_t off = 12345, len = 1 * kMiB + 777;
    FileExtents ext;
    expect_maps_to(fd, off, len, data.substr(off, len), &ext);
    ASSERT_FALSE(ext.segments.empty());
    EXPECT_EQ(ext.segments.front().disk_offset % 4096, off % 4096);
    EXPECT_EQ((ext.segments.back().disk_offset + ext.segments.back().length) % 4096,
              (off + len) % 4096);
    // one byte in the middle of a block
    expect_maps_to(fd, 4097, 1, data.substr(4097, 1));
    ::close(fd);
}

TEST_F(ExtentMapTest, RangePastEofIsEINVAL) {
    int fd = make_file(lab().path("eof"), random_bytes(10000, 3));
    FileExtents ext;
    EXPECT_EQ(map_file_range(fd, 0, 10001, table, &ext), -EINVAL);
    EXPECT_EQ(map_file_range(fd, 10000, 1, table, &ext), -EINVAL);
    EXPECT_EQ(map_file_range(fd, UINT64_MAX - 1, 4, table, &ext), -EINVAL);
    EXPECT_EQ(map_file_range(fd, 9999, 1, table, &ext), 0);
    int dir = ::open(lab().mount_dir.c_str(), O_RDONLY | O_DIRECTORY);
    EXPECT_EQ(map_file_range(dir, 0, 0, table, &ext), -EINVAL);
    ::close(dir);
    ::close(fd);
}

TEST_F(ExtentMapTest, HolesBecomeZeroSegments) {
    const std::string path = lab().path("sparse");
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, 2 * kMiB), 0);
    const std::string a = random_bytes(64 * kKiB, 4), b = random_bytes(64 * kKiB, 5);
    ASSERT_EQ(::pwrite(fd, a.data(), a.size(), 0), static_cast<ssize_t>(a.size()));
    ASSERT_EQ(::pwrite(fd, b.data(), b.size(), 1 * kMiB), static_cast<ssize_t>(b.size()));
    ASSERT_EQ(agent::flush_range(fd, 0, 2 * kMiB), 0);
    std::string expected(2 * kMiB, '\0');
    expected.replace(0, a.size(), a);
    expected.replace(1 * kMiB, b.size(), b);
    FileExtents ext;
    expect_maps_to(fd, 0, 2 * kMiB, expected, &ext);
    ASSERT_EQ(ext.segments.size(), 4u);
    EXPECT_FALSE(ext.segments[0].zero);
    EXPECT_EQ(ext.segments[0].length, 64 * kKiB);
    EXPECT_TRUE(ext.segments[1].zero);
    EXPECT_EQ(ext.segments[1].length, 1 * kMiB - 64 * kKiB);
    EXPECT_FALSE(ext.segments[2].zero);
    EXPECT_EQ(ext.segments[2].length, 64 * kKiB);
    EXPECT_TRUE(ext.segments[3].zero);  // trailing hole up to EOF
    EXPECT_EQ(ext.segments[3].length, 1 * kMiB - 64 * kKiB);
    // a range entirely inside a hole
    expect_maps_to(fd, 100000, 5000, std::string(5000, '\0'), &ext);
    ASSERT_EQ(ext.segments.size(), 1u);
    EXPECT_TRUE(ext.segments[0].zero);
    ::close(fd);
}

TEST_F(ExtentMapTest, UnwrittenExtentsBecomeZeroSegments) {
    const std::string path = lab().path("unwritten");
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::fallocate(fd, 0, 0, 1 * kMiB), 0);
    FileExtents ext;
    expect_maps_to(fd, 0, 1 * kMiB, std::string(1 * kMiB, '\0'), &ext);
    ASSERT_EQ(ext.segments.size(), 1u);
    EXPECT_TRUE(ext.segments[0].zero);
    EXPECT_EQ(ext.segments[0].length, 1 * kMiB);
    // The disk under the unwritten extent may hold anything; the mapping must not expose it.
    const std::string d = random_bytes(4 * kKiB, 6);
    ASSERT_EQ(::pwrite(fd, d.data(), d.size(), 512 * kKiB), 4096);
    ASSERT_EQ(agent::flush_range(fd, 512 * kKiB, 4 * kKiB), 0);
    std::string expected(1 * kMiB, '\0');
    expected.replace(512 * kKiB, d.size(), d);
    expect_maps_to(fd, 0, 1 * kMiB, expected, &ext);
    ASSERT_EQ(ext.segments.size(), 3u);
    EXPECT_TRUE(ext.segments[0].zero);
    EXPECT_EQ(ext.segments[0].length, 512 * kKiB);
    EXPECT_FALSE(ext.segments[1].zero);
    EXPECT_EQ(ext.segments[1].length, 4 * kKiB);
    EXPECT_TRUE(ext.segments[2].zero);
    EXPECT_EQ(ext.segments[2].length, 508 * kKiB);
    ::close(fd);
}

TEST_F(ExtentMapTest, FragmentedFileWithHundredsOfExtents) {
    // Make ext4 serve every allocation from the shared locality-group pool, so two files written
    // alternately (fsync after each 4 KiB) interleave block by block.
    const std::string knob =
        "/sys/fs/ext4/" + lab().fs_device.substr(lab().fs_device.rfind('/') + 1) + "/mb_stream_req";
    { std::ofstream(knob) << 100000; }
    const size_t chunks = 300;
    const std::string a = random_bytes(chunks * 4096, 7), b = random_bytes(chunks * 4096, 8);
    int fa = ::open(lab().path("fragA").c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
    int fb = ::open(lab().path("fragB").c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(fa, 0);
    ASSERT_GE(fb, 0);
    for (size_t i = 0; i < chunks; ++i) {
        ASSERT_EQ(::pwrite(fa, a.data() + i * 4096, 4096, static_cast<off_t>(i * 4096)), 4096);
        ASSERT_EQ(::fsync(fa), 0);
        ASSERT_EQ(::pwrite(fb, b.data() + i * 4096, 4096, static_cast<off_t>(i * 4096)), 4096);
        ASSERT_EQ(::fsync(fb), 0);
    }
    { std::ofstream(knob) << 16; }
    FileExtents ext;
    expect_maps_to(fa, 0, a.size(), a, &ext);
    EXPECT_GE(ext.segments.size(), 100u);
    EXPECT_EQ(ext.segments.size(), ext.fiemap_extents);  // real extents never merge
    expect_maps_to(fb, 0, b.size(), b);
    // an unaligned sub-range through the fragments
    expect_maps_to(fa, 5000, 700000, a.substr(5000, 700000));

    const int iters = 200;
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) ASSERT_EQ(map_file_range(fa, 0, a.size(), table, &ext), 0);
    const double us =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() /
        iters;
    std::cout << "[ measure  ] map_file_range of a " << ext.segments.size()
              << "-extent file: " << us << " us per call\n";
    RecordProperty("fiemap_us_per_call", std::to_string(us));
    RecordProperty("fiemap_extents", std::to_string(ext.segments.size()));
    ::close(fa);
    ::close(fb);
}

TEST_F(ExtentMapTest, RunsLongerThanOneGiBAreSplit) {
    int fd = ::open(lab().path("big").c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::fallocate(fd, 0, 0, 2 * kGiB + 512 * kMiB), 0);
    FileExtents ext;
    ASSERT_EQ(map_file_range(fd, 0, 2 * kGiB + 512 * kMiB, table, &ext), 0);
    EXPECT_EQ(check_mapping(ext, 2 * kGiB + 512 * kMiB), "");
    ASSERT_EQ(ext.segments.size(), 3u);
    for (const Segment& s : ext.segments) EXPECT_TRUE(s.zero);
    EXPECT_EQ(ext.segments[0].length, 1 * kGiB);
    EXPECT_EQ(ext.segments[1].length, 1 * kGiB);
    EXPECT_EQ(ext.segments[2].length, 512 * kMiB);
    ::close(fd);
    ::unlink(lab().path("big").c_str());
}

TEST(NormalizeSegments, MergesSplitsAndOffsets) {
    using agent::normalize_segments;
    // contiguous data merges, zero runs merge, data/zero boundaries stay
    auto m = normalize_segments({{4096, 4096, false}, {8192, 100, false}, {0, 10, true},
                                 {0, 5, true}, {20000, 8, false}},
                                0);
    ASSERT_EQ(m.size(), 3u);
    EXPECT_EQ(m[0].disk_offset, 4096u);
    EXPECT_EQ(m[0].length, 4196u);
    EXPECT_TRUE(m[1].zero);
    EXPECT_EQ(m[1].length, 15u);
    EXPECT_EQ(m[2].disk_offset, 20000u);

    // a 2.5 GiB data run starting at an unaligned offset: inner cuts 4 KiB-aligned, then the
    // partition offset is added
    const uint64_t start = 1000, len = 2 * kGiB + 512 * kMiB;
    auto s = normalize_segments({{start, len, false}}, 1 * kMiB);
    ASSERT_EQ(s.size(), 3u);
    EXPECT_EQ(s[0].disk_offset, start + 1 * kMiB);
    EXPECT_EQ(s[0].length, 1 * kGiB - start);
    EXPECT_EQ(s[1].disk_offset, 1 * kGiB + 1 * kMiB);
    EXPECT_EQ(s[1].length, 1 * kGiB);
    EXPECT_EQ(s[2].disk_offset, 2 * kGiB + 1 * kMiB);
    EXPECT_EQ(s[2].length, 512 * kMiB + start);
    EXPECT_EQ(s[0].length + s[1].length + s[2].length, len);
}

TEST_F(ExtentMapTest, DirtyDataIsEAGAINUntilFlushed) {
    const std::string data = random_bytes(256 * kKiB, 9);
    int fd = make_file(lab().path("dirty"), data, /*flushed=*/false);
    FileExtents ext;
    EXPECT_EQ(map_file_range(fd, 0, data.size(), table, &ext), -EAGAIN);  // delayed allocation
    ASSERT_EQ(agent::flush_range(fd, 0, data.size()), 0);
    expect_maps_to(fd, 0, data.size(), data);
    ::close(fd);
}

TEST_F(ExtentMapTest, OverwriteReachesTheDiskOnlyAfterFlush) {
    const std::string old_data = random_bytes(64 * kKiB, 10);
    int fd = make_file(lab().path("overwrite"), old_data);
    const std::string patch = random_bytes(8 * kKiB, 11);
    ASSERT_EQ(::pwrite(fd, patch.data(), patch.size(), 20000), static_cast<ssize_t>(patch.size()));
    std::string now = old_data;
    now.replace(20000, patch.size(), patch);
    // blocks are allocated, so the mapping succeeds -- but the disk still has the old bytes
    FileExtents ext;
    ASSERT_EQ(map_file_range(fd, 0, now.size(), table, &ext), 0);
    EXPECT_TRUE(lab().read_extents(ext) == old_data);
    ASSERT_EQ(agent::flush_range(fd, 20000, patch.size()), 0);
    expect_maps_to(fd, 0, now.size(), now);
    EXPECT_EQ(agent::flush_range(fd, 0, 0), 0);
    ::close(fd);
}

}  // namespace
}  // namespace vpipe::test
