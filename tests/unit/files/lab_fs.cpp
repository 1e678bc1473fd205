#include "lab_fs.h"

#include <fcntl.h>
#include <linux/blkpg.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>

namespace vpipe::test {
namespace {

int run(const std::string& cmd, std::string* output = nullptr) {
    FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
    if (!p) return -1;
    std::string out;
    char buf[512];
    while (size_t n = std::fread(buf, 1, sizeof(buf), p)) out.append(buf, n);
    int status = ::pclose(p);
    while (!out.empty() && out.back() == '\n') out.pop_back();
    if (output) *output = out;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

constexpr uint64_t kAlign = 4096;

struct AlignedBuf {
    explicit AlignedBuf(size_t n) : size(n), p(static_cast<char*>(std::aligned_alloc(kAlign, n))) {}
    ~AlignedBuf() { std::free(p); }
    size_t size;
    char* p;
};

}  // namespace

std::unique_ptr<LoopFs> LoopFs::create(const Options& opt, std::string* why, bool* skippable) {
    *skippable = false;
    if (::geteuid() != 0) {
        *skippable = true;
        *why = "needs root (loop devices, mount, inode flags)";
        return nullptr;
    }
    if (::access("/dev/loop-control", R_OK | W_OK) != 0) {
        *skippable = true;
        *why = "loop devices unavailable (/dev/loop-control)";
        return nullptr;
    }
    std::unique_ptr<LoopFs> lab(new LoopFs);
    char tmpl[] = "/var/tmp/vpipe-files-XXXXXX.img";
    int fd = ::mkstemps(tmpl, 4);
    if (fd < 0) {
        *why = std::string("mkstemps: ") + std::strerror(errno);
        return nullptr;
    }
    lab->image = tmpl;
    bool ok = ::ftruncate(fd, static_cast<off_t>(opt.image_size)) == 0;
    if (ok && opt.partitioned) {
        // One MBR partition of type 0x83 from sector 2048 to the end.
        unsigned char mbr[512] = {};
        const uint32_t start = 2048, sectors = static_cast<uint32_t>(opt.image_size / 512) - start;
        unsigned char* e = mbr + 446;
        e[4] = 0x83;
        std::memcpy(e + 8, &start, 4);
        std::memcpy(e + 12, &sectors, 4);
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        ok = ::pwrite(fd, mbr, sizeof(mbr), 0) == 512;
        lab->fs_offset = uint64_t{start} * 512;
    }
    ::close(fd);
    if (!ok) {
        *why = "cannot size the image";
        return nullptr;
    }
    const std::string part = opt.partitioned ? " --partscan" : "";
    std::string out;
    if (run("losetup --find --show --direct-io=on" + part + " " + lab->image, &out) == 0) {
        lab->direct_io = true;
    } else if (run("losetup --find --show" + part + " " + lab->image, &out) != 0) {
        *skippable = true;
        *why = "loop devices unavailable: losetup: " + out;
        return nullptr;
    }
    lab->loop = out;
    lab->fs_device = opt.partitioned ? lab->loop + "p1" : lab->loop;
    for (int i = 0; i < 10 && ::access(lab->fs_device.c_str(), F_OK) != 0; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (opt.partitioned && ::access(lab->fs_device.c_str(), F_OK) != 0) {
        // Kernels without partition-table parsers (CONFIG_MSDOS_PARTITION off) ignore the MBR:
        // add the partition explicitly, as addpart(8) does.
        int lfd = ::open(lab->loop.c_str(), O_RDONLY | O_CLOEXEC);
        struct blkpg_partition bp {};
        bp.start = static_cast<long long>(lab->fs_offset);
        bp.length = static_cast<long long>(opt.image_size - lab->fs_offset);
        bp.pno = 1;
        struct blkpg_ioctl_arg arg {};
        arg.op = BLKPG_ADD_PARTITION;
        arg.datalen = sizeof(bp);
        arg.data = &bp;
        if (lfd < 0 || ::ioctl(lfd, BLKPG, &arg) != 0) {
            *why = std::string("BLKPG_ADD_PARTITION: ") + std::strerror(errno);
            if (lfd >= 0) ::close(lfd);
            return nullptr;
        }
        ::close(lfd);
        for (int i = 0; i < 50 && ::access(lab->fs_device.c_str(), F_OK) != 0; ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (run("mkfs.ext4 -q -F -b 4096 " + lab->fs_device, &out) != 0) {
        *why = "mkfs.ext4 " + lab->fs_device + ": " + out;
        return nullptr;
    }
    char dir[] = "/var/tmp/vpipe-files-mnt-XXXXXX";
    if (!::mkdtemp(dir)) {
        *why = std::string("mkdtemp: ") + std::strerror(errno);
        return nullptr;
    }
    lab->mount_dir = dir;
    if (::mount(lab->fs_device.c_str(), dir, "ext4", 0, nullptr) != 0) {
        *why = std::string("mount: ") + std::strerror(errno);
        ::rmdir(dir);
        lab->mount_dir.clear();
        return nullptr;
    }
    return lab;
}

LoopFs::~LoopFs() {
    if (!mount_dir.empty()) {
        ::sync();
        bool unmounted = false;
        for (int i = 0; i < 20 && !unmounted; ++i) {
            unmounted = ::umount2(mount_dir.c_str(), 0) == 0 || errno == EINVAL;
            if (!unmounted) std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        if (!unmounted) ::umount2(mount_dir.c_str(), MNT_DETACH);
        ::rmdir(mount_dir.c_str());
    }
    if (!loop.empty()) run("losetup -d " + loop);
    if (!image.empty()) ::unlink(image.c_str());
}

std::string LoopFs::read_disk(uint64_t offset, uint64_t length) const {
    if (length == 0) return {};
    const uint64_t a = offset / kAlign * kAlign;
    const uint64_t e = (offset + length + kAlign - 1) / kAlign * kAlign;
    int fd = ::open(image.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
    EXPECT_GE(fd, 0) << std::strerror(errno);
    if (fd < 0) return {};
    AlignedBuf buf(e - a);
    ssize_t n = ::pread(fd, buf.p, e - a, static_cast<off_t>(a));
    ::close(fd);
    EXPECT_EQ(n, static_cast<ssize_t>(e - a));
    if (n != static_cast<ssize_t>(e - a)) return {};
    return std::string(buf.p + (offset - a), length);
}

void LoopFs::write_disk(uint64_t offset, const std::string& data) const {
    if (data.empty()) return;
    const uint64_t a = offset / kAlign * kAlign;
    const uint64_t e = (offset + data.size() + kAlign - 1) / kAlign * kAlign;
    int fd = ::open(image.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    AlignedBuf buf(e - a);
    // read-modify-write of the enclosing blocks, as the engine does for partial sectors
    ASSERT_EQ(::pread(fd, buf.p, e - a, static_cast<off_t>(a)), static_cast<ssize_t>(e - a));
    std::memcpy(buf.p + (offset - a), data.data(), data.size());
    ASSERT_EQ(::pwrite(fd, buf.p, e - a, static_cast<off_t>(a)), static_cast<ssize_t>(e - a));
    ASSERT_EQ(::fdatasync(fd), 0);
    ::close(fd);
}

std::string LoopFs::read_extents(const agent::FileExtents& ext) const {
    std::string out;
    for (const agent::Segment& s : ext.segments) {
        if (s.zero)
            out.append(s.length, '\0');
        else
            out += read_disk(s.disk_offset, s.length);
    }
    return out;
}

std::string random_bytes(size_t n, uint32_t seed) {
    std::mt19937 gen(seed);
    std::string s(n, '\0');
    for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(1 + gen() % 255);  // never 0
    return s;
}

int make_file(const std::string& path, const std::string& data, bool flushed) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    EXPECT_GE(fd, 0) << path << ": " << std::strerror(errno);
    if (fd < 0) return fd;
    size_t done = 0;
    while (done < data.size()) {
        ssize_t n = ::pwrite(fd, data.data() + done, data.size() - done, static_cast<off_t>(done));
        EXPECT_GT(n, 0);
        if (n <= 0) break;
        done += static_cast<size_t>(n);
    }
    if (flushed) {
        EXPECT_EQ(::fsync(fd), 0);
    }
    return fd;
}

std::string read_fd(int fd, uint64_t offset, uint64_t length) {
    std::string out(length, '\0');
    uint64_t done = 0;
    while (done < length) {
        ssize_t n = ::pread(fd, out.data() + done, length - done, static_cast<off_t>(offset + done));
        if (n <= 0) break;
        done += static_cast<uint64_t>(n);
    }
    out.resize(done);
    return out;
}

std::string read_file_uncached(const std::string& path, uint64_t offset, uint64_t length) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    EXPECT_GE(fd, 0) << path;
    if (fd < 0) return {};
    EXPECT_EQ(::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
    std::string s = read_fd(fd, offset, length);
    ::close(fd);
    return s;
}

uint32_t inode_flags(int fd) {
    int flags = 0;
    EXPECT_EQ(::ioctl(fd, FS_IOC_GETFLAGS, &flags), 0) << std::strerror(errno);
    return static_cast<uint32_t>(flags);
}

void set_inode_flags(int fd, uint32_t flags) {
    int f = static_cast<int>(flags);
    EXPECT_EQ(::ioctl(fd, FS_IOC_SETFLAGS, &f), 0) << std::strerror(errno);
}

std::string check_mapping(const agent::FileExtents& ext, uint64_t length) {
    uint64_t sum = 0;
    for (size_t i = 0; i < ext.segments.size(); ++i) {
        const agent::Segment& s = ext.segments[i];
        if (s.length == 0) return "empty segment " + std::to_string(i);
        if (s.length > agent::kMaxSegmentLength) return "segment too long " + std::to_string(i);
        if (s.zero && s.disk_offset != 0) return "zero segment with an offset";
        // inner boundaries sector-aligned (data segments): only the first start and last end
        // may fall inside a sector
        if (!s.zero && i > 0 && s.disk_offset % 512 != 0) return "unaligned start " + std::to_string(i);
        if (!s.zero && i + 1 < ext.segments.size() && (s.disk_offset + s.length) % 512 != 0)
            return "unaligned end " + std::to_string(i);
        if (i > 0) {
            const agent::Segment& p = ext.segments[i - 1];
            if (p.zero && s.zero && p.length + s.length <= agent::kMaxSegmentLength)
                return "unmerged zero neighbours";
            if (!p.zero && !s.zero && p.disk_offset + p.length == s.disk_offset &&
                p.length + s.length <= agent::kMaxSegmentLength)
                return "unmerged contiguous neighbours";
        }
        sum += s.length;
    }
    if (sum != length) return "lengths sum to " + std::to_string(sum) + ", want " + std::to_string(length);
    return "";
}

}  // namespace vpipe::test
