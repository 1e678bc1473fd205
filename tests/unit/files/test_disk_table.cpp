#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "files/disk_table.h"
#include "files/extent_map.h"
#include "lab_fs.h"

namespace vpipe::test {
namespace {

using agent::DiskInfo;
using agent::DiskTable;
using agent::FileExtents;

constexpr uint32_t kVdev = 51712;  // xvda

struct DiskTableTest : LabSuite<DiskTableTest> {};

TEST_F(DiskTableTest, WholeLoopDeviceHasOffsetZeroAndResolvesItsFiles) {
    DiskTable table;
    ASSERT_EQ(table.add(kVdev, lab().loop), 0);
    struct stat dev;
    ASSERT_EQ(::stat(lab().loop.c_str(), &dev), 0);
    ASSERT_EQ(table.disks().size(), 1u);
    const DiskInfo& d = table.disks()[0];
    EXPECT_EQ(d.vdev, kVdev);
    EXPECT_EQ(d.device, lab().loop);
    EXPECT_EQ(d.devno, dev.st_rdev);
    EXPECT_EQ(d.partition_offset, 0u);
    EXPECT_EQ(d.disk_devno, dev.st_rdev);

    int fd = make_file(lab().path("whole"), "x");
    struct stat st;
    ASSERT_EQ(::fstat(fd, &st), 0);
    EXPECT_EQ(table.find_by_devno(st.st_dev), &table.disks()[0]);
    ::close(fd);
}

TEST_F(DiskTableTest, RefusesWhatIsNotANewBlockDevice) {
    DiskTable table;
    EXPECT_EQ(table.add(1, "/var/tmp"), -ENOTBLK);
    EXPECT_EQ(table.add(1, "/dev/null"), -ENOTBLK);
    EXPECT_EQ(table.add(1, "/nonexistent/disk"), -ENOENT);
    ASSERT_EQ(table.add(1, lab().loop), 0);
    EXPECT_EQ(table.add(1, lab().loop), -EEXIST);  // same vdev
    EXPECT_EQ(table.add(2, lab().loop), -EEXIST);  // same device
    EXPECT_EQ(table.disks().size(), 1u);
}

TEST_F(DiskTableTest, FileOnAnotherFilesystemIsENXIO) {
    DiskTable table;
    ASSERT_EQ(table.add(kVdev, lab().loop), 0);
    char path[] = "/var/tmp/vpipe-files-enxio-XXXXXX";
    int fd = ::mkstemp(path);
    ASSERT_GE(fd, 0);
    ::unlink(path);
    ASSERT_EQ(::write(fd, "hello", 5), 5);
    ASSERT_EQ(::fsync(fd), 0);
    struct stat st;
    ASSERT_EQ(::fstat(fd, &st), 0);
    EXPECT_EQ(table.find_by_devno(st.st_dev), nullptr);
    FileExtents ext;
    EXPECT_EQ(agent::map_file_range(fd, 0, 5, table, &ext), -ENXIO);
    EXPECT_TRUE(ext.segments.empty());
    ::close(fd);
}

// The filesystem inside an MBR partition starting at 1 MiB of the virtual disk.
struct PartitionTest : LabSuite<PartitionTest> {
    static LoopFs::Options lab_options() { return {128 * kMiB, true}; }
};

TEST_F(PartitionTest, WholeDiskResolvesThePartitionWithItsStart) {
    DiskTable table;
    ASSERT_EQ(table.add(kVdev, lab().loop), 0);
    struct stat disk;
    ASSERT_EQ(::stat(lab().loop.c_str(), &disk), 0);
    const std::string data = random_bytes(300 * kKiB + 17, 1);
    int fd = make_file(lab().path("inpart"), data);
    struct stat st;
    ASSERT_EQ(::fstat(fd, &st), 0);
    const DiskInfo* d = table.find_by_devno(st.st_dev);
    ASSERT_NE(d, nullptr);
    EXPECT_EQ(d->vdev, kVdev);
    EXPECT_EQ(d->devno, st.st_dev);
    EXPECT_EQ(d->partition_offset, 1 * kMiB);
    EXPECT_EQ(d->disk_devno, disk.st_rdev);
    EXPECT_EQ(d->device, lab().fs_device);

    FileExtents ext;
    ASSERT_EQ(agent::map_file_range(fd, 0, data.size(), table, &ext), 0);
    EXPECT_EQ(ext.vdev, kVdev);
    EXPECT_EQ(check_mapping(ext, data.size()), "");
    for (const auto& s : ext.segments) EXPECT_GE(s.disk_offset, 1 * kMiB);
    // offsets are on the WHOLE disk: the image read at them gives the file's bytes
    EXPECT_TRUE(lab().read_extents(ext) == data);
    ::close(fd);
}

TEST_F(PartitionTest, PartitionAddedDirectlyKnowsItsParent) {
    DiskTable table;
    ASSERT_EQ(table.add(7, lab().fs_device), 0);
    struct stat disk, part;
    ASSERT_EQ(::stat(lab().loop.c_str(), &disk), 0);
    ASSERT_EQ(::stat(lab().fs_device.c_str(), &part), 0);
    ASSERT_EQ(table.disks().size(), 1u);
    EXPECT_EQ(table.disks()[0].devno, part.st_rdev);
    EXPECT_EQ(table.disks()[0].partition_offset, 1 * kMiB);
    EXPECT_EQ(table.disks()[0].disk_devno, disk.st_rdev);
    EXPECT_EQ(table.find_by_devno(disk.st_rdev), nullptr);  // the whole disk is not in this table
}

}  // namespace
}  // namespace vpipe::test
