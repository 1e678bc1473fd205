// A "VM disk" for the file-layer tests: an ext4 image in /var/tmp on a loop device (direct I/O
// when possible), mounted on a temporary directory, optionally inside an MBR partition starting
// at 1 MiB. Torn down (umount, losetup -d, rm) by the destructor.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>

#include "files/extent_map.h"

namespace vpipe::test {

inline constexpr uint64_t kKiB = 1024, kMiB = 1024 * 1024, kGiB = kMiB * 1024;

class LoopFs {
public:
    struct Options {
        uint64_t image_size = 256 * kMiB;
        bool partitioned = false;
    };
    // nullptr on failure with `why`; *skippable when the reason is "not root / no loop devices".
    static std::unique_ptr<LoopFs> create(const Options& opt, std::string* why, bool* skippable);
    ~LoopFs();

    std::string image;       // the disk image file (what the engine opens)
    std::string loop;        // /dev/loopN: the whole virtual disk
    std::string fs_device;   // loop or loopNp1
    std::string mount_dir;
    uint64_t fs_offset = 0;  // partition start on the disk
    bool direct_io = false;

    std::string path(const std::string& name) const { return mount_dir + "/" + name; }
    // Engine-side access to the disk image with O_DIRECT (read-modify-write for partial sectors).
    std::string read_disk(uint64_t offset, uint64_t length) const;
    void write_disk(uint64_t offset, const std::string& data) const;
    // The bytes a mapping names, read from the image (zeros for zero segments).
    std::string read_extents(const agent::FileExtents& ext) const;

private:
    LoopFs() = default;
};

// CRTP base: one lab per test suite (Derived::lab_options()), skip/fail reasons per test.
template <class Derived>
class LabSuite : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        why_.clear();
        lab_ = LoopFs::create(Derived::lab_options(), &why_, &skippable_);
    }
    static void TearDownTestSuite() { lab_.reset(); }
    void SetUp() override {
        if (!lab_) {
            if (skippable_) GTEST_SKIP() << why_;
            FAIL() << "lab set-up failed: " << why_;
        }
    }
    static LoopFs& lab() { return *lab_; }
    static LoopFs::Options lab_options() { return {}; }

    static inline std::unique_ptr<LoopFs> lab_;
    static inline std::string why_;
    static inline bool skippable_ = false;
};

std::string random_bytes(size_t n, uint32_t seed);
// Creates (truncating) `path` with `data`; returns an O_RDWR fd. flushed: fsync'd.
int make_file(const std::string& path, const std::string& data, bool flushed = true);
// Reads [offset, offset+length) through the filesystem after dropping the file's page cache.
std::string read_file_uncached(const std::string& path, uint64_t offset, uint64_t length);
std::string read_fd(int fd, uint64_t offset, uint64_t length);
uint32_t inode_flags(int fd);
void set_inode_flags(int fd, uint32_t flags);
// Checks a mapping for exact coverage and the ring's alignment rule; returns "" or a complaint.
std::string check_mapping(const agent::FileExtents& ext, uint64_t length);

}  // namespace vpipe::test
