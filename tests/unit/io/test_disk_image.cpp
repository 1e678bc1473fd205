#include <gtest/gtest.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>
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
    std::string why;
    auto loop = test::try_loop(file.path, false, &why);
    if (!loop) GTEST_SKIP() << why;
    auto d = DiskImage::open(loop->path, false);
    EXPECT_EQ(d->size(), 3u << 20);
    int logical_block = 0;
    ASSERT_EQ(::ioctl(d->fd(), BLKSSZGET, &logical_block), 0);
    EXPECT_EQ(d->alignment(), static_cast<uint32_t>(logical_block));
}

TEST(DiskImage, HostCacheIsRefusedForABlockDevice) {
    TempImage file(1 << 20, 5);
    std::string why;
    auto loop = test::try_loop(file.path, false, &why);
    if (!loop) GTEST_SKIP() << why;
    try {
        DiskImage::open(loop->path, false, true);
        FAIL() << "a block device was opened for reads through the page cache";
    } catch (const std::system_error& e) {
        EXPECT_EQ(e.code().value(), EINVAL);
        EXPECT_NE(std::string(e.what()).find("blkback"), std::string::npos) << e.what();
    }
}

// Reads 4 KiB of the image through the engine's page-cache descriptor.
std::vector<uint8_t> cached_read(const DiskImage& d, off_t off) {
    std::vector<uint8_t> got(4096);
    EXPECT_EQ(::pread(d.cached_fd(), got.data(), got.size(), off), 4096);
    return got;
}

// The coherence rule of docs/protocol.md 6: a VM whose disk is an image file on a loop device
// (buffered or direct I/O) writes through, or invalidates, the image's page cache; so do the
// engine's own O_DIRECT writes. A page dom0 cached before such a write is never read stale.
class HostCache : public testing::TestWithParam<bool> {};

TEST_P(HostCache, SeesEveryWriteOfTheVmAndOfTheEngine) {
    TempImage file(1 << 20, 6);
    std::string why;
    if (!test::open_direct(file.path, true, &why)) GTEST_SKIP() << why;
    auto loop = test::try_loop(file.path, GetParam(), &why);
    if (!loop) GTEST_SKIP() << why;
    auto d = DiskImage::open(file.path, true, true);
    ASSERT_GE(d->cached_fd(), 0);
    EXPECT_FALSE(::fcntl(d->cached_fd(), F_GETFL) & O_DIRECT);
    const off_t off = 64 << 10;
    ASSERT_EQ(cached_read(*d, off), std::vector<uint8_t>(file.model.begin() + off, file.model.begin() + off + 4096));

    // the VM writes the block (its filesystem's writeback: bios to its disk), then flushes
    void* buf = nullptr;
    ASSERT_EQ(::posix_memalign(&buf, 4096, 4096), 0);
    std::unique_ptr<void, decltype(&std::free)> hold(buf, &std::free);
    const std::vector<uint8_t> vm_data = test::random_bytes(4096, 7);
    std::memcpy(buf, vm_data.data(), 4096);
    const int dev = ::open(loop->path.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
    ASSERT_GE(dev, 0) << std::strerror(errno);
    ASSERT_EQ(::pwrite(dev, buf, 4096, off), 4096);
    ASSERT_EQ(::fsync(dev), 0);
    ::close(dev);
    EXPECT_EQ(cached_read(*d, off), vm_data) << "dom0 read a page cached before the VM's write";

    // the engine writes it (socket -> file, file -> file) through its O_DIRECT descriptor
    const std::vector<uint8_t> engine_data = test::random_bytes(4096, 8);
    std::memcpy(buf, engine_data.data(), 4096);
    ASSERT_EQ(::pwrite(d->fd(), buf, 4096, off), 4096);
    EXPECT_EQ(cached_read(*d, off), engine_data) << "dom0 read a page cached before its own write";
}

INSTANTIATE_TEST_SUITE_P(LoopDevice, HostCache, testing::Values(false, true),
                         [](const auto& p) { return p.param ? "DirectIo" : "Buffered"; });

// ---- only raw images (EMEDIUMTYPE) -------------------------------------------------------------

struct Format {
    const char* name;
    size_t offset;
    std::string magic;
};
class NonRawImage : public testing::TestWithParam<Format> {};

// A 1 MiB image whose first sector carries the format's real header magic (the bytes the
// format's own tools write): opened read-write and read-only, it is refused with EMEDIUMTYPE.
TEST_P(NonRawImage, IsRefusedWithEmediumtype) {
    const Format& f = GetParam();
    TempImage file(1 << 20, 7);
    {
        const int fd = ::open(file.path.c_str(), O_WRONLY | O_CLOEXEC);
        ASSERT_GE(fd, 0);
        ASSERT_EQ(::pwrite(fd, f.magic.data(), f.magic.size(), static_cast<off_t>(f.offset)),
                  static_cast<ssize_t>(f.magic.size()));
        ::fsync(fd);
        ::close(fd);
    }
    for (bool writable : {true, false}) {
        try {
            DiskImage::open(file.path, writable);
            FAIL() << f.name << " image opened (writable " << writable << ")";
        } catch (const std::system_error& e) {
            EXPECT_EQ(e.code().value(), EMEDIUMTYPE) << e.what();
            EXPECT_NE(std::string(e.what()).find(file.path), std::string::npos) << e.what();
        }
    }
}

INSTANTIATE_TEST_SUITE_P(
    Formats, NonRawImage,
    testing::Values(Format{"qcow2", 0, std::string("QFI\xfb\0\0\0\3", 8)},
                    Format{"vmdk", 0, std::string("KDMV\1\0\0\0", 8)},
                    Format{"vmdk_descriptor", 0, std::string("# Disk DescriptorFile\n")},
                    Format{"vdi", 0x40, std::string("\x7f\x10\xda\xbe", 4)},
                    Format{"vhdx", 0, std::string("vhdxfile")},
                    Format{"vhd", 0, std::string("conectix")},
                    Format{"qed", 0, std::string("QED\0", 4)}),
    [](const auto& p) { return std::string(p.param.name); });

// The same magic anywhere but where the format puts it is just data: a raw disk may hold it.
TEST(DiskImage, RawImageWithAMagicElsewhereOpens) {
    TempImage file(1 << 20, 8);
    const int fd = ::open(file.path.c_str(), O_WRONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::pwrite(fd, "\0\0\0\0\0\0\0\0", 8, 0), 8);
    ASSERT_EQ(::pwrite(fd, "QFI\xfb", 4, 4096), 4);
    ::fsync(fd);
    ::close(fd);
    std::string why;
    auto d = test::open_direct(file.path, true, &why);
    ASSERT_TRUE(d) << why;
    EXPECT_EQ(d->size(), 1u << 20);
}

// A qcow2 made by qemu-img itself, when qemu-utils is installed (the header-byte cases above
// run everywhere).
TEST(DiskImage, QemuImgQcow2IsRefused) {
    if (std::system("command -v qemu-img >/dev/null 2>&1") != 0)
        GTEST_SKIP() << "qemu-img not installed (the qcow2 header case of NonRawImage still ran)";
    const std::string path = "/var/tmp/vpipe-io-test-qemu.qcow2";
    ::unlink(path.c_str());
    ASSERT_EQ(std::system(("qemu-img create -q -f qcow2 " + path + " 16M").c_str()), 0);
    try {
        DiskImage::open(path, true);
        ADD_FAILURE() << "qcow2 image opened";
    } catch (const std::system_error& e) {
        EXPECT_EQ(e.code().value(), EMEDIUMTYPE) << e.what();
    }
    ::unlink(path.c_str());
}

}  // namespace
}  // namespace vpipe::engine
