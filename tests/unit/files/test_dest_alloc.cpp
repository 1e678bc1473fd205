#include <fcntl.h>
#include <sys/resource.h>
#include <linux/fs.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <iostream>

#include <vpipe/abi/ioctl.h>

#include "files/dest_alloc.h"
#include "files/disk_table.h"
#include "files/extent_map.h"
#include "files/file_hold.h"
#include "lab_fs.h"

namespace vpipe::test {
namespace {

using agent::DestPrep;
using agent::FileExtents;
using agent::FileHold;
using agent::finish_destination;
using agent::prepare_destination;

constexpr uint32_t kVdev = 51712;

uint64_t align_up(uint64_t v) { return (v + 4095) / 4096 * 4096; }

struct DestAllocTest : LabSuite<DestAllocTest> {
    static LoopFs::Options lab_options() { return {1 * kGiB, false}; }
    void SetUp() override {
        LabSuite::SetUp();
        if (IsSkipped() || HasFatalFailure()) return;
        ASSERT_EQ(table.add(kVdev, lab().loop), 0);
    }
    // Which allocation strategy the filesystem took (after a first prepare).
    uint32_t expected_path(int fd) {
        struct stat st;
        EXPECT_EQ(::fstat(fd, &st), 0);
        return agent::write_zeroes_support(st.st_dev) == agent::WriteZeroesSupport::kSupported
                   ? VPIPE_PATH_WRITE_ZEROES
                   : VPIPE_PATH_ZERO_FILL;
    }
    // Maps the prepared range (must be all written blocks) and plays the engine: writes
    // `data` (maybe only a prefix of the range) into the IMAGE at the mapped offsets.
    void engine_writes(int fd, uint64_t offset, uint64_t length, const std::string& data) {
        FileExtents ext;
        ASSERT_EQ(agent::map_file_range(fd, offset, length, table, &ext), 0);
        ASSERT_EQ(check_mapping(ext, length), "");
        uint64_t pos = 0;
        for (const auto& s : ext.segments) {
            ASSERT_FALSE(s.zero) << "a prepared destination must map to written blocks only";
            if (pos >= data.size()) break;
            const uint64_t n = std::min<uint64_t>(s.length, data.size() - pos);
            lab().write_disk(s.disk_offset, data.substr(pos, n));
            pos += n;
        }
        ASSERT_EQ(pos, data.size());
    }
    agent::DiskTable table;
};

TEST_F(DestAllocTest, NewEmptyFile) {
    const std::string path = lab().path("new");
    int fd = make_file(path, "");
    FileHold hold;
    ASSERT_EQ(FileHold::acquire_destination(fd, &hold), 0);
    const uint64_t len = 1 * kMiB + 123;
    const auto before = agent::dest_alloc_counters();
    DestPrep prep;
    ASSERT_EQ(prepare_destination(fd, 0, len, &prep), 0);
    EXPECT_EQ(prep.old_size, 0u);
    EXPECT_EQ(prep.zero_filled + prep.write_zeroes, align_up(len));
    EXPECT_EQ(prep.paths, expected_path(fd));
    const auto after = agent::dest_alloc_counters();
    EXPECT_EQ(after.zero_filled_bytes - before.zero_filled_bytes, prep.zero_filled);
    EXPECT_EQ(after.write_zeroes_bytes - before.write_zeroes_bytes, prep.write_zeroes);
    EXPECT_EQ(after.prepared_bytes - before.prepared_bytes, len);
    EXPECT_TRUE(inode_flags(fd) & FS_IMMUTABLE_FL);  // the hold is back after preparation

    const std::string data = random_bytes(len, 1);
    engine_writes(fd, 0, len, data);
    ASSERT_EQ(finish_destination(fd, 0, len, len, prep), 0);
    struct stat st;
    ASSERT_EQ(::fstat(fd, &st), 0);
    EXPECT_EQ(static_cast<uint64_t>(st.st_size), len);
    EXPECT_TRUE(inode_flags(fd) & FS_IMMUTABLE_FL);
    hold.release();
    EXPECT_TRUE(read_file_uncached(path, 0, len + 10) == data);
    ::close(fd);
}

TEST_F(DestAllocTest, AppendAfterUnalignedEofKeepsTheLastBlocksData) {
    const std::string path = lab().path("append");
    const std::string old_data = random_bytes(5000, 2);
    int fd = make_file(path, old_data);
    FileHold hold;
    ASSERT_EQ(FileHold::acquire_destination(fd, &hold), 0);
    const uint64_t off = 5000, len = 300000;
    DestPrep prep;
    ASSERT_EQ(prepare_destination(fd, off, len, &prep), 0);
    EXPECT_EQ(prep.old_size, 5000u);
    // zeros past the old EOF in its block (data block: kept), then the new blocks
    EXPECT_EQ(prep.zero_filled + prep.write_zeroes, (8192 - 5000) + (align_up(off + len) - 8192));
    EXPECT_EQ(read_file_uncached(path, 0, 5000), old_data);  // untouched so far

    FileExtents ext;
    ASSERT_EQ(agent::map_file_range(fd, off, len, table, &ext), 0);
    ASSERT_FALSE(ext.segments.empty());
    EXPECT_EQ(ext.segments[0].disk_offset % 4096, 5000u % 4096);  // starts inside the data block
    const std::string data = random_bytes(len, 3);
    engine_writes(fd, off, len, data);
    ASSERT_EQ(finish_destination(fd, off, len, len, prep), 0);
    hold.release();
    struct stat st;
    ASSERT_EQ(::fstat(fd, &st), 0);
    EXPECT_EQ(static_cast<uint64_t>(st.st_size), off + len);
    EXPECT_TRUE(read_file_uncached(path, 0, off + len + 10) == old_data + data);
    ::close(fd);
}

TEST_F(DestAllocTest, AppendWithAGapReadsZerosInTheGap) {
    const std::string path = lab().path("gap");
    const std::string old_data = random_bytes(5000, 4);
    int fd = make_file(path, old_data);
    const uint64_t off = 10000, len = 50000;
    DestPrep prep;
    ASSERT_EQ(prepare_destination(fd, off, len, &prep), 0);  // no hold: also allowed
    const std::string data = random_bytes(len, 5);
    engine_writes(fd, off, len, data);
    ASSERT_EQ(finish_destination(fd, off, len, len, prep), 0);
    const std::string expected = old_data + std::string(off - 5000, '\0') + data;
    EXPECT_TRUE(read_file_uncached(path, 0, off + len + 10) == expected);
    ::close(fd);
}

TEST_F(DestAllocTest, OverwriteAcrossHolesKeepsTheBytesAround) {
    const std::string path = lab().path("holes");
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, 1 * kMiB), 0);
    const std::string a = random_bytes(4096, 6), b = random_bytes(4096, 7);
    ASSERT_EQ(::pwrite(fd, a.data(), 4096, 0), 4096);
    ASSERT_EQ(::pwrite(fd, b.data(), 4096, 512 * kKiB), 4096);
    ASSERT_EQ(::fsync(fd), 0);
    std::string before(1 * kMiB, '\0');
    before.replace(0, 4096, a);
    before.replace(512 * kKiB, 4096, b);

    const uint64_t off = 100, len = 600000;
    DestPrep prep;
    ASSERT_EQ(prepare_destination(fd, off, len, &prep), 0);
    EXPECT_EQ(prep.old_size, 1 * kMiB);
    // only the holes of the covered blocks [0, 602112) were allocated
    EXPECT_EQ(prep.zero_filled + prep.write_zeroes, (512 * kKiB - 4096) + (align_up(off + len) - 516 * kKiB));
    EXPECT_TRUE(read_file_uncached(path, 0, 1 * kMiB) == before);  // content unchanged
    const std::string data = random_bytes(len, 8);
    engine_writes(fd, off, len, data);
    ASSERT_EQ(finish_destination(fd, off, len, len, prep), 0);
    std::string expected = before;
    expected.replace(off, len, data);
    struct stat st;
    ASSERT_EQ(::fstat(fd, &st), 0);
    EXPECT_EQ(static_cast<uint64_t>(st.st_size), 1 * kMiB);
    EXPECT_TRUE(read_file_uncached(path, 0, 1 * kMiB + 10) == expected);
    ::close(fd);
}

TEST_F(DestAllocTest, ShortWriteShrinksBackAndGivesBlocksBack) {
    const std::string path = lab().path("short");
    const std::string old_data = random_bytes(8192, 9);
    int fd = make_file(path, old_data);
    FileHold hold;
    ASSERT_EQ(FileHold::acquire_destination(fd, &hold), 0);
    const uint64_t off = 8192, len = 1 * kMiB, written = 100000;
    DestPrep prep;
    ASSERT_EQ(prepare_destination(fd, off, len, &prep), 0);
    struct stat st;
    ASSERT_EQ(::fstat(fd, &st), 0);
    EXPECT_EQ(static_cast<uint64_t>(st.st_blocks) * 512, off + len);  // fully allocated
    const std::string data = random_bytes(written, 10);
    engine_writes(fd, off, len, data);  // the engine stopped after `written` bytes
    ASSERT_EQ(finish_destination(fd, off, len, written, prep), 0);
    ASSERT_EQ(::fstat(fd, &st), 0);
    EXPECT_EQ(static_cast<uint64_t>(st.st_size), off + written);
    EXPECT_EQ(static_cast<uint64_t>(st.st_blocks) * 512, align_up(off + written));
    hold.release();
    EXPECT_TRUE(read_file_uncached(path, 0, 2 * kMiB) == old_data + data);
    ::close(fd);
}

TEST_F(DestAllocTest, FailedWriteRestoresTheOldFile) {
    const std::string path = lab().path("failed");
    const std::string old_data = random_bytes(5000, 11);
    int fd = make_file(path, old_data);
    struct stat st0;
    ASSERT_EQ(::fstat(fd, &st0), 0);
    DestPrep prep;
    ASSERT_EQ(prepare_destination(fd, 5000, 4 * kMiB, &prep), 0);
    ASSERT_EQ(finish_destination(fd, 5000, 4 * kMiB, 0, prep), 0);
    struct stat st;
    ASSERT_EQ(::fstat(fd, &st), 0);
    EXPECT_EQ(st.st_size, 5000);
    EXPECT_EQ(st.st_blocks, st0.st_blocks);
    EXPECT_TRUE(read_file_uncached(path, 0, 10000) == old_data);
    ::close(fd);
}

TEST_F(DestAllocTest, RefusesWhatMustNotBeWritten) {
    const std::string path = lab().path("refused");
    int fd = make_file(path, "data");
    const uint32_t base = inode_flags(fd);
    DestPrep prep;
    set_inode_flags(fd, base | FS_IMMUTABLE_FL);  // immutable, not by our hold
    EXPECT_EQ(prepare_destination(fd, 4, 100, &prep), -EPERM);
    set_inode_flags(fd, base | FS_APPEND_FL);
    EXPECT_EQ(prepare_destination(fd, 4, 100, &prep), -EPERM);
    set_inode_flags(fd, base);
    int ro = ::open(path.c_str(), O_RDONLY);
    EXPECT_EQ(prepare_destination(ro, 4, 100, &prep), -EBADF);
    ::close(ro);
    int app = ::open(path.c_str(), O_WRONLY | O_APPEND);
    EXPECT_EQ(prepare_destination(app, 0, 100, &prep), -EINVAL);  // O_APPEND: only at EOF
    EXPECT_EQ(prepare_destination(app, 4, 100, &prep), 0);
    EXPECT_EQ(finish_destination(app, 4, 100, 0, prep), 0);
    ::close(app);
    EXPECT_EQ(prepare_destination(fd, UINT64_MAX - 10, 100, &prep), -EINVAL);
    EXPECT_EQ(prepare_destination(fd, 0, 0, &prep), 0);
    EXPECT_EQ(prep.old_size, 4u);
    EXPECT_EQ(prep.paths, 0u);
    ::close(fd);
    // not ext4/XFS: /dev/shm (tmpfs)
    int shm = ::open("/dev/shm/vpipe-files-dest-test", O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (shm >= 0) {
        EXPECT_EQ(prepare_destination(shm, 0, 100, &prep), -EOPNOTSUPP);
        ::close(shm);
        ::unlink("/dev/shm/vpipe-files-dest-test");
    }
}

TEST_F(DestAllocTest, ZeroFillCostFor256MiB) {
    const std::string path = lab().path("cost");
    int fd = make_file(path, "");
    const uint64_t len = 256 * kMiB;
    DestPrep prep;
    auto cpu = [] {
        struct rusage ru;
        ::getrusage(RUSAGE_SELF, &ru);
        return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
               (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    };
    const double cpu0 = cpu();
    auto t0 = std::chrono::steady_clock::now();
    ASSERT_EQ(prepare_destination(fd, 0, len, &prep), 0);
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double cpu_secs = cpu() - cpu0;
    EXPECT_EQ(prep.zero_filled + prep.write_zeroes, len);
    struct stat st;
    ASSERT_EQ(::fstat(fd, &st), 0);
    const char* how = agent::write_zeroes_support(st.st_dev) == agent::WriteZeroesSupport::kSupported
                          ? "FALLOC_FL_WRITE_ZEROES"
                          : "zero-fill (FALLOC_FL_WRITE_ZEROES unsupported here)";
    std::cout << "[ measure  ] prepare_destination 256 MiB via " << how << ": " << secs << " s, "
              << (len / 1e6) / secs << " MB/s (loop direct-io " << (lab().direct_io ? "on" : "off")
              << "), guest CPU " << cpu_secs << " s\n";
    RecordProperty("prepare_256MiB_seconds", std::to_string(secs));
    RecordProperty("prepare_256MiB_cpu_seconds", std::to_string(cpu_secs));
    RecordProperty("prepare_strategy", how);

    FileExtents ext;
    t0 = std::chrono::steady_clock::now();
    ASSERT_EQ(agent::map_file_range(fd, 0, len, table, &ext), 0);
    const double map_us =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(check_mapping(ext, len), "");
    for (const auto& s : ext.segments) EXPECT_FALSE(s.zero);
    std::cout << "[ measure  ] map_file_range 256 MiB prepared: " << ext.segments.size()
              << " segment(s), " << ext.fiemap_extents << " extent(s), " << map_us << " us\n";
    ASSERT_EQ(finish_destination(fd, 0, len, 0, prep), 0);  // nothing written: all given back
    ASSERT_EQ(::fstat(fd, &st), 0);
    EXPECT_EQ(st.st_size, 0);
    EXPECT_EQ(st.st_blocks, 0);
    ::close(fd);
}


// ---- readied while the engine works (socket -> file, VPIPE_REQF_PREPARING) ---------------------

TEST_F(DestAllocTest, ReadiedInPiecesWhileTheEngineWritesKeepsEveryByte) {
    // Allocated only, then filled a piece at a time, the "engine" writing each piece right after
    // it was filled -- as dom0 does below the watermark. Piece ends are deliberately not
    // block-aligned: filling piece k+1 must not zero the block piece k's data already went to.
    const std::string path = lab().path("pieces");
    const std::string old_data = random_bytes(5000, 21);
    int fd = make_file(path, old_data);
    FileHold hold;
    ASSERT_EQ(FileHold::acquire_destination(fd, &hold), 0);
    const uint64_t off = 5000, len = 3 * kMiB + 777;
    DestPrep prep;
    ASSERT_EQ(agent::prepare_destination_allocated(fd, off, len, &prep), 0);
    EXPECT_EQ(prep.old_size, 5000u);
    const uint64_t eof_fill = prep.zero_filled;  // only the old EOF block's tail, if anything
    EXPECT_LE(eof_fill, 8192u - 5000);
    EXPECT_TRUE(inode_flags(fd) & FS_IMMUTABLE_FL);
    struct stat st;
    ASSERT_EQ(::fstat(fd, &st), 0);
    EXPECT_GE(static_cast<uint64_t>(st.st_size), off + len);  // mappable
    EXPECT_EQ(read_file_uncached(path, 0, 5000), old_data);

    FileExtents plain, allocated;
    ASSERT_EQ(agent::map_file_range(fd, off, len, table, &plain), 0);
    bool some_zero = false;
    for (const auto& s : plain.segments) some_zero = some_zero || s.zero;
    EXPECT_TRUE(some_zero) << "unwritten blocks map as zeros until they are filled";
    ASSERT_EQ(agent::map_file_range(fd, off, len, table, &allocated, true), 0);
    ASSERT_EQ(check_mapping(allocated, len), "");
    for (const auto& s : allocated.segments) ASSERT_FALSE(s.zero);

    const std::string data = random_bytes(len, 22);
    const uint64_t piece = 1 * kMiB + 100;
    for (uint64_t a = 0; a < len; a += piece) {
        const uint64_t n = std::min(piece, len - a);
        ASSERT_EQ(agent::fill_destination(fd, off + a, n, &prep), 0);
        // the engine writes [a, a + n) of the stream at the mapped blocks
        uint64_t pos = 0;
        for (const auto& s : allocated.segments) {
            const uint64_t s0 = pos, s1 = pos + s.length;
            pos = s1;
            const uint64_t from = std::max(s0, a), to = std::min(s1, a + n);
            if (from < to) lab().write_disk(s.disk_offset + (from - s0), data.substr(from, to - from));
        }
    }
    ASSERT_EQ(agent::commit_destination(fd, off, len), 0);
    EXPECT_EQ(prep.zero_filled + prep.write_zeroes - eof_fill, align_up(off + len) - 8192);
    ASSERT_EQ(finish_destination(fd, off, len, len, prep), 0);
    hold.release();
    ASSERT_EQ(::fstat(fd, &st), 0);
    EXPECT_EQ(static_cast<uint64_t>(st.st_size), off + len);
    EXPECT_TRUE(read_file_uncached(path, 0, off + len + 10) == old_data + data);
    ::close(fd);
}

TEST_F(DestAllocTest, CommitRefusesARangeLeftPartlyUnfilled) {
    const std::string path = lab().path("unfilled");
    int fd = make_file(path, "");
    const uint64_t len = 2 * kMiB, filled = 1 * kMiB;
    DestPrep prep;
    ASSERT_EQ(agent::prepare_destination_allocated(fd, 0, len, &prep), 0);
    ASSERT_EQ(agent::fill_destination(fd, 0, filled, &prep), 0);
    EXPECT_EQ(prep.zero_filled + prep.write_zeroes, filled);
    EXPECT_EQ(agent::commit_destination(fd, 0, len), -EIO);  // the second MiB reads as zeros
    EXPECT_EQ(agent::commit_destination(fd, 0, filled), 0);
    // what the engine wrote below the watermark stays; the rest is given back
    FileExtents ext;
    ASSERT_EQ(agent::map_file_range(fd, 0, filled, table, &ext), 0);
    const std::string data = random_bytes(filled, 23);
    uint64_t pos = 0;
    for (const auto& s : ext.segments) {
        ASSERT_FALSE(s.zero);
        lab().write_disk(s.disk_offset, data.substr(pos, s.length));
        pos += s.length;
    }
    ASSERT_EQ(finish_destination(fd, 0, len, filled, prep), 0);
    struct stat st;
    ASSERT_EQ(::fstat(fd, &st), 0);
    EXPECT_EQ(static_cast<uint64_t>(st.st_size), filled);
    EXPECT_EQ(static_cast<uint64_t>(st.st_blocks) * 512, filled);
    EXPECT_TRUE(read_file_uncached(path, 0, len) == data);
    ::close(fd);
}

}  // namespace
}  // namespace vpipe::test
