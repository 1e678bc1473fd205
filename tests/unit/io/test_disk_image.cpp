#include <gtest/gtest.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <string>
#include <system_error>

#include "io/disk_image.h"
#include "io_test_util.h"

namespace vpipe::engine {
namespace {

using test::TempImage;

TEST(DiskImage, OpensRegularFileForDirectIo) {
    TempImage file(1 << 20, 1);
    std::string why;
    auto d = test::open_direct(file.path, true, &why);
    if (!d) GTEST_SKIP() << why;
    EXPECT_EQ(d->size(), 1u << 20);
    EXPECT_EQ(d->path(), file.path);
    EXPECT_TRUE(d->writable());
    EXPECT_GE(d->alignment(), 512u);
    EXPECT_LE(d->alignment(), 4096u);
    EXPECT_EQ(d->alignment() & (d->alignment() - 1), 0u);
    const int flags = ::fcntl(d->fd(), F_GETFL);
    EXPECT_TRUE(flags & O_DIRECT);
    EXPECT_EQ(flags & O_ACCMODE, O_RDWR);
    EXPECT_TRUE(::fcntl(d->fd(), F_GETFD) & FD_CLOEXEC);
    EXPECT_EQ(d->bytes_read.load(), 0u);
    EXPECT_EQ(d->write_ops.load(), 0u);
}

TEST(DiskImage, OpensReadOnly) {
    TempImage file(64 * 1024, 2);
    std::string why;
    auto d = test::open_direct(file.path, false, &why);
    if (!d) GTEST_SKIP() << why;
    EXPECT_FALSE(d->writable());
    EXPECT_EQ(::fcntl(d->fd(), F_GETFL) & O_ACCMODE, O_RDONLY);
}

TEST(DiskImage, MissingFileThrowsWithPathInMessage) {
    const std::string path = "/var/tmp/vpipe-io-test-does-not-exist";
    try {
        DiskImage::open(path, false);
        FAIL() << "open succeeded";
    } catch (const std::system_error& e) {
        EXPECT_EQ(e.code().value(), ENOENT);
        EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
}

TEST(DiskImage, RefusesADirectory) {
    // O_DIRECT on a directory fails at open (EISDIR) or is refused as neither file nor device.
    EXPECT_THROW(DiskImage::open("/var/tmp", false), std::system_error);
}

TEST(DiskImage, BlockLockStripes) {
    TempImage file(64 * 1024, 3);
    std::string why;
    auto d = test::open_direct(file.path, true, &why);
    if (!d) GTEST_SKIP() << why;
    EXPECT_EQ(&d->block_lock(7), &d->block_lock(7));
    EXPECT_NE(&d->block_lock(7), &d->block_lock(8));  // neighbours never contend
}

TEST(DiskImage, OpensLoopBlockDevice) {
    TempImage file(3 << 20, 4);
    std::unique_ptr<test::LoopDevice> loop;
    try {
        loop = std::make_unique<test::LoopDevice>(file.path);
    } catch (const std::system_error& e) {
        GTEST_SKIP() << "no loop device available: " << e.what();
    }
    auto d = DiskImage::open(loop->path, false);
    EXPECT_EQ(d->size(), 3u << 20);
    int logical_block = 0;
    ASSERT_EQ(::ioctl(d->fd(), BLKSSZGET, &logical_block), 0);
    EXPECT_EQ(d->alignment(), static_cast<uint32_t>(logical_block));
}

}  // namespace
}  // namespace vpipe::engine
