#include "files/disk_table.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <optional>

#include <spdlog/spdlog.h>

namespace vpipe::agent {
namespace {

std::string sysfs_dir(dev_t dev) {
    return "/sys/dev/block/" + std::to_string(major(dev)) + ":" + std::to_string(minor(dev));
}

// Reads a small sysfs attribute; -errno on failure.
int read_attr(const std::string& path, std::string* out) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    char buf[128];
    ssize_t n = ::read(fd, buf, sizeof(buf) - 1);
    int err = errno;
    ::close(fd);
    if (n < 0) return -err;
    buf[n] = '\0';
    *out = buf;
    while (!out->empty() && (out->back() == '\n' || out->back() == ' ')) out->pop_back();
    return 0;
}

std::optional<dev_t> parse_devno(const std::string& s) {
    unsigned maj = 0, min = 0;
    if (std::sscanf(s.c_str(), "%u:%u", &maj, &min) != 2) return std::nullopt;
    return makedev(maj, min);
}

std::optional<uint64_t> parse_u64(const std::string& s) {
    if (s.empty()) return std::nullopt;
    char* end = nullptr;
    errno = 0;
    unsigned long long v = std::strtoull(s.c_str(), &end, 10);
    if (errno != 0 || *end != '\0') return std::nullopt;
    return v;
}

std::optional<std::string> real_path(const std::string& p) {
    char buf[PATH_MAX];
    if (!::realpath(p.c_str(), buf)) return std::nullopt;
    return std::string(buf);
}

// Describes the block device `dev` (sysfs directory `dir`): whole disk or partition.
int describe(dev_t dev, DiskInfo* info) {
    const std::string dir = sysfs_dir(dev);
    std::string value;
    int r = read_attr(dir + "/dev", &value);
    if (r < 0) return r == -ENOENT ? -ENODEV : r;
    info->devno = dev;
    if (read_attr(dir + "/partition", &value) == -ENOENT) {
        info->partition_offset = 0;
        info->disk_devno = dev;
        return 0;
    }
    if ((r = read_attr(dir + "/start", &value)) < 0) return r;
    auto start = parse_u64(value);
    if (!start) return -EIO;
    info->partition_offset = *start * 512;  // sysfs counts 512-byte sectors whatever the device
    // /sys/dev/block/M:m links to .../block/<disk>/<partition>: the parent directory is the disk.
    auto real = real_path(dir);
    if (!real) return -errno;
    std::string parent = real->substr(0, real->rfind('/'));
    if ((r = read_attr(parent + "/dev", &value)) < 0) return r;
    auto disk = parse_devno(value);
    if (!disk) return -EIO;
    info->disk_devno = *disk;
    return 0;
}

}  // namespace

int DiskTable::add(uint32_t vdev, const std::string& device_path) {
    struct stat st;
    if (::stat(device_path.c_str(), &st) != 0) return -errno;
    if (!S_ISBLK(st.st_mode)) return -ENOTBLK;
    for (const DiskInfo& d : disks_) {
        if (d.vdev == vdev || d.devno == st.st_rdev) return -EEXIST;
    }
    DiskInfo info{vdev, device_path, st.st_rdev, 0};
    int r = describe(st.st_rdev, &info);
    if (r < 0) {
        spdlog::warn("disk table: {}: cannot read sysfs for {}:{} ({})", device_path,
                     major(st.st_rdev), minor(st.st_rdev), r);
        return r;
    }

    std::vector<DiskInfo> found;
    if (info.devno == info.disk_devno) {
        // Whole disk: register the partitions present now, so files on them resolve too.
        auto real = real_path(sysfs_dir(info.devno));
        DIR* dir = real ? ::opendir(real->c_str()) : nullptr;
        if (dir) {
            while (struct dirent* e = ::readdir(dir)) {
                if (e->d_name[0] == '.') continue;
                std::string sub = *real + "/" + e->d_name;
                std::string value;
                if (read_attr(sub + "/partition", &value) < 0) continue;
                if (read_attr(sub + "/dev", &value) < 0) continue;
                auto pdev = parse_devno(value);
                if (!pdev) continue;
                DiskInfo part{vdev, std::string("/dev/") + e->d_name, *pdev, 0};
                if (describe(*pdev, &part) == 0 && part.disk_devno == info.devno)
                    found.push_back(std::move(part));
            }
            ::closedir(dir);
        }
    }
    disks_.push_back(std::move(info));
    for (DiskInfo& p : found) partitions_.push_back(std::move(p));
    return 0;
}

const DiskInfo* DiskTable::find_by_devno(dev_t fs_dev) const {
    for (const DiskInfo& d : disks_) {
        if (d.devno == fs_dev) return &d;
    }
    for (const DiskInfo& p : partitions_) {
        if (p.devno == fs_dev) return &p;
    }
    return nullptr;
}

}  // namespace vpipe::agent
