#include "io/disk_image.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <system_error>

namespace vpipe::engine {

namespace {

constexpr uint32_t kDefaultFileAlignment = 512;
constexpr uint32_t kFallbackFileAlignment = 4096;

[[noreturn]] void fail(int err, const std::string& path, const std::string& what) {
    throw std::system_error(err, std::generic_category(),
                            "disk image " + path + ": " + what);
}

// The alignment the filesystem reports for direct I/O on this file, 0 if it doesn't say.
uint32_t statx_dio_alignment(int fd) {
#ifdef STATX_DIOALIGN
    struct statx stx {};
    if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
        (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align != 0)
        return std::max(stx.stx_dio_offset_align, stx.stx_dio_mem_align);
#else
    (void)fd;
#endif
    return 0;
}

// Without statx's answer: 512 if a 512-byte direct read is accepted, otherwise 4096.
uint32_t probe_file_alignment(int fd, uint64_t size) {
    if (size < kDefaultFileAlignment) return kDefaultFileAlignment;  // nothing to probe with
    void* buf = std::aligned_alloc(kFallbackFileAlignment, kFallbackFileAlignment);
    if (!buf) throw std::bad_alloc();
    const ssize_t n = ::pread(fd, buf, kDefaultFileAlignment, 0);
    const int err = errno;
    std::free(buf);
    return (n < 0 && err == EINVAL) ? kFallbackFileAlignment : kDefaultFileAlignment;
}

// The image formats a toolstack may configure that are not raw, by the magic their first
// sector starts with (or, VDI, holds at 0x40). The engine reads and writes guest sectors at
// their own offsets, so it must only ever serve raw images: a qcow2's "sector 0" is its header.
struct Magic {
    const char* format;
    size_t offset;
    const char* bytes;
    size_t len;
};
constexpr Magic kMagics[] = {
    {"qcow2 (or qcow)", 0, "QFI\xfb", 4},
    {"vmdk (sparse extent)", 0, "KDMV", 4},
    {"vmdk (ESX sparse extent)", 0, "COWD", 4},
    {"vmdk (descriptor)", 0, "# Disk DescriptorFile", 21},
    {"vdi", 0x40, "\x7f\x10\xda\xbe", 4},
    {"vhdx", 0, "vhdxfile", 8},
    {"vhd (dynamic)", 0, "conectix", 8},
    {"qed", 0, "QED\0", 4},
};

// The format named by the image's first bytes, nullptr for raw (or too short to tell).
const char* non_raw_format(int fd, uint64_t size, uint32_t alignment, const std::string& path) {
    const size_t len = std::max<size_t>(4096, alignment);  // O_DIRECT: whole aligned blocks
    std::unique_ptr<void, decltype(&std::free)> buf(std::aligned_alloc(len, len), &std::free);
    if (!buf) throw std::bad_alloc();
    if (size == 0) return nullptr;
    // a multiple of the alignment at offset 0; past the end of a short file: a short read
    const ssize_t n = ::pread(fd, buf.get(), len, 0);
    if (n < 0) fail(errno, path, "cannot read the first sector (format check)");
    const auto* p = static_cast<const unsigned char*>(buf.get());
    for (const Magic& m : kMagics)
        if (static_cast<size_t>(n) >= m.offset + m.len && std::memcmp(p + m.offset, m.bytes, m.len) == 0)
            return m.format;
    return nullptr;
}

}  // namespace

std::unique_ptr<DiskImage> DiskImage::open(const std::string& path, bool writable, bool host_cache) {
    UniqueFd fd(::open(path.c_str(), (writable ? O_RDWR : O_RDONLY) | O_DIRECT | O_CLOEXEC));
    if (!fd)
        fail(errno, path,
             writable ? "cannot open read-write with O_DIRECT" : "cannot open read-only with O_DIRECT");

    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) fail(errno, path, "fstat");

    uint64_t size = 0;
    uint32_t alignment = 0;
    if (S_ISBLK(st.st_mode)) {
        if (::ioctl(fd.get(), BLKGETSIZE64, &size) != 0) fail(errno, path, "BLKGETSIZE64");
        int logical_block = 0;
        if (::ioctl(fd.get(), BLKSSZGET, &logical_block) != 0) fail(errno, path, "BLKSSZGET");
        alignment = static_cast<uint32_t>(logical_block);
    } else if (S_ISREG(st.st_mode)) {
        size = static_cast<uint64_t>(st.st_size);
        alignment = statx_dio_alignment(fd.get());
        if (alignment == 0) alignment = probe_file_alignment(fd.get(), size);
    } else {
        fail(EINVAL, path, "neither a regular file nor a block device");
    }

    if (alignment == 0 || (alignment & (alignment - 1)) != 0 || alignment > kMaxAlignment)
        fail(EINVAL, path, "unsupported direct I/O alignment " + std::to_string(alignment));

    // Only raw images: a qcow2 (vmdk, vdi, vhdx, qed, vhd) served as raw would expose its
    // metadata as guest sectors and let the guest's writes corrupt it.
    if (const char* format = non_raw_format(fd.get(), size, alignment, path))
        fail(EMEDIUMTYPE, path, std::string("is a ") + format + " image, not raw: vPipe serves raw images only");

    UniqueFd cached;
    if (host_cache) {
        if (!S_ISREG(st.st_mode))
            fail(EINVAL, path, "cache = \"host\" needs an image file: writes to a block device (blkback) "
                               "bypass dom0's page cache");
        cached = UniqueFd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
        if (!cached) fail(errno, path, "cannot open for reads through the page cache");
    }

    return std::unique_ptr<DiskImage>(
        new DiskImage(path, std::move(fd), std::move(cached), writable, size, alignment));
}

DiskImage::DiskImage(std::string path, UniqueFd fd, UniqueFd cached_fd, bool writable, uint64_t size,
                     uint32_t alignment)
    : path_(std::move(path)),
      fd_(std::move(fd)),
      cached_fd_(std::move(cached_fd)),
      writable_(writable),
      size_(size),
      alignment_(alignment) {}

}  // namespace vpipe::engine
