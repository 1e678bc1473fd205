// file -> file through the real stack: libvpipe in this process talks to the lab VM's agent,
// the agent maps extents and rings dom0, vpiped copies blocks inside the VM's disk image.
// Every case is checked byte for byte by reading the destination back through the filesystem
// (the agent dropped its cached pages, so the bytes come from the image).
#include <fcntl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <vpipe/vpipe.h>

#include "support/lab_agent.h"
#include "support/lab_fixture.h"

namespace {

using namespace vpipe::labtest;

uint64_t agent_io(pid_t pid, const char* key) {
    FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/io").c_str(), "r");
    char k[32];
    unsigned long long v, found = 0;
    while (f && std::fscanf(f, "%31s %llu", k, &v) == 2)
        if (std::string(k) == std::string(key) + ":") found = v;
    if (f) std::fclose(f);
    return found;
}

void write_file(const std::string& path, const std::vector<char>& data) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(fd, 0) << path;
    size_t done = 0;
    while (done < data.size()) {
        ssize_t n = ::write(fd, data.data() + done, data.size() - done);
        ASSERT_GT(n, 0);
        done += static_cast<size_t>(n);
    }
    ::close(fd);
}

std::vector<char> read_file(const std::string& path) {
    std::vector<char> out;
    int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) return out;
    char chunk[1 << 16];
    ssize_t n;
    while ((n = ::read(fd, chunk, sizeof(chunk))) > 0) out.insert(out.end(), chunk, chunk + n);
    ::close(fd);
    return out;
}

class FileOffload : public LabFixture {
protected:
    static void SetUpTestSuite() {
        if (!bring_up({.up = {"--vms", "1", "--disks", "2", "--disk-mib", "1024"},
                       .binaries = {"vpipectl", "cp-vpipe"},
                       .name = "files"}))
            return;
        ::setenv("VPIPE_AGENT_SOCKET", info_["vms"][0]["agent_socket"].get<std::string>().c_str(), 1);
        vpipe_set_fallback(1);
        // these tests are about the offload itself, at every size: no threshold
        vpipe_set_min_offload(0);
    }
    static std::string disk(int k) { return mount(1, k); }
    static nlohmann::json engine_vm() { return engine_stats()["vms"][0]; }

    // Moves `len` bytes with libvpipe; returns the count. Checks that dom0 moved every one of them:
    // the call's own result (offloaded == n, nothing copied by the guest), libvpipe's process
    // counters (one more offloaded operation, n more offloaded bytes, no fallback) and the engine's
    // counters (the file -> file requests the call reported, n bytes).
    static ssize_t offload(int in, int out, off_t in_off, size_t len, off_t out_off) {
        vpipe_stats before{}, after{};
        vpipe_get_stats(&before);
        const nlohmann::json e0 = engine_vm();
        ssize_t n = vpipe_file_to_file_fd(in, out, in_off, len, out_off);
        vpipe_result r{};
        vpipe_last_result(&r);
        vpipe_get_stats(&after);
        const nlohmann::json e1 = engine_vm();
        EXPECT_NE(r.path, VPIPE_RESULT_FALLBACK) << "fell back: " << r.reason;
        EXPECT_EQ(after.ops_fallback, before.ops_fallback) << "fell back: " << r.reason;
        if (n <= 0) return n;  // nothing to move (EOF) or an error: the callers check the count
        EXPECT_EQ(r.offloaded, static_cast<uint64_t>(n)) << "dom0 did not move all the bytes";
        EXPECT_EQ(r.guest_copied, 0u) << "the guest copied some of the bytes";
        EXPECT_GT(r.requests, 0u);
        EXPECT_EQ(after.ops_offloaded, before.ops_offloaded + 1);
        EXPECT_EQ(after.bytes_offloaded, before.bytes_offloaded + static_cast<uint64_t>(n));
        EXPECT_EQ(after.bytes_guest, before.bytes_guest);
        auto counter = [](const nlohmann::json& vm, const char* kind) -> uint64_t {
            const auto& v = vm.contains(kind) ? vm[kind] : nlohmann::json();
            return v.is_object() && v.contains("file_to_file") ? v["file_to_file"].get<uint64_t>() : 0;
        };
        EXPECT_EQ(counter(e1, "ops") - counter(e0, "ops"), r.requests) << "the engine's file_to_file requests";
        EXPECT_EQ(counter(e1, "bytes") - counter(e0, "bytes"), static_cast<uint64_t>(n))
            << "the engine's file_to_file bytes";
        return n;
    }

    static uint64_t f2f_bytes() {
        const nlohmann::json v = engine_vm();
        return v.contains("bytes") && v["bytes"].contains("file_to_file") ? v["bytes"]["file_to_file"].get<uint64_t>()
                                                                          : uint64_t{0};
    }
    // Waits (up to 60 s, polling the engine) until dom0 has answered at least `bytes` of file ->
    // file requests since `b0` and still works on more: an operation in the middle.
    static bool copy_in_progress(uint64_t b0, uint64_t bytes) {
        const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
        while (std::chrono::steady_clock::now() < until) {
            if (engine_vm().value("active", 0) > 0 && f2f_bytes() - b0 >= bytes) return true;
            std::this_thread::sleep_for(std::chrono::milliseconds(5));  // polling the engine
        }
        return false;
    }
    // vm1's agent's count of engines declared unresponsive (-1: it did not answer)
    static long long agent_engine_timeouts() {
        vpipe_ioc_stats st{};
        return agent_stats(info_["vms"][0]["agent_socket"].get<std::string>(), &st)
                   ? static_cast<long long>(st.engine_timeouts)
                   : -1;
    }
    // The bytes of `path` as the disk holds them (its clean cached pages dropped first:
    // dom0 wrote the image behind the guest's page cache).
    static std::vector<char> read_from_disk(const std::string& path) {
        int fd = ::open(path.c_str(), O_RDONLY);
        if (fd >= 0) {
            ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
            ::close(fd);
        }
        return read_file(path);
    }
    static bool held(const std::string& path) {
        int fd = ::open(path.c_str(), O_RDONLY), flags = 0;
        const bool ok = fd >= 0 && ::ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0;
        if (fd >= 0) ::close(fd);
        return !ok || (flags & FS_IMMUTABLE_FL) != 0;
    }
    // After an engine restart: the agent reconnected (it retries by itself) within 30 s.
    static bool reconnected() {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
        while (!engine_vm().value("connected", false) && std::chrono::steady_clock::now() < deadline)
            std::this_thread::sleep_for(std::chrono::milliseconds(50));  // polling the engine
        return engine_vm().value("connected", false);
    }

    // Copies a whole new file of `size` random bytes and checks it.
    void copy_new_file(uint64_t size, const std::string& src_dir, const std::string& dst_dir) {
        const std::vector<char> data = pattern(size + 1, size);
        const std::string src = src_dir + "/src-" + std::to_string(size);
        const std::string dst = dst_dir + "/dst-" + std::to_string(size);
        write_file(src, data);
        int in = ::open(src.c_str(), O_RDONLY), out = ::open(dst.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        ASSERT_GE(in, 0);
        ASSERT_GE(out, 0);
        EXPECT_EQ(offload(in, out, 0, size, 0), static_cast<ssize_t>(size));
        ::close(in);
        ::close(out);
        struct stat st{};
        ASSERT_EQ(::stat(dst.c_str(), &st), 0);
        EXPECT_EQ(static_cast<uint64_t>(st.st_size), size);
        EXPECT_TRUE(read_file(dst) == data) << "content differs for size " << size;
    }
};

}  // namespace

TEST_F(FileOffload, SmallAndOddSizes) {
    for (uint64_t size : {0ull, 1ull, 4095ull, (1ull << 20) + 1}) copy_new_file(size, disk(0), disk(0));
}

TEST_F(FileOffload, SecondDiskOfTheSameVm) {
    copy_new_file((8ull << 20) + 3, disk(0), disk(1));
    copy_new_file(12345, disk(1), disk(0));
}

TEST_F(FileOffload, JustWrittenQuarterGigabyteWithCpVpipe) {
    // The acceptance case: written inside the VM and copied at once with cp-vpipe.
    const std::string src = disk(0) + "/big", dst = disk(0) + "/big.copy";
    const pid_t agent = info_["vms"][0]["agent_pid"].get<pid_t>();
    const uint64_t agent_r0 = agent_io(agent, "rchar"), agent_w0 = agent_io(agent, "wchar");
    const uint64_t engine_read0 = engine_vm()["disks"][0]["bytes_read"].get<uint64_t>();
    const Res cp = lab({"exec", "vm1", "--", "sh", "-c",
                        "head -c 268435456 /dev/urandom > " + src + " && " + kBin + "/cp-vpipe --stats " + src + " " + dst},
                       {.merge_stderr = true});
    const std::string& out = cp.out;
    ASSERT_EQ(cp.status, 0) << out;
    unsigned long long copied = 0, offloaded = 0, requests = 0, guest = 0, zero = 0, rchar = 0, wchar = 0;
    const char* stats = std::strstr(out.c_str(), "copied ");
    ASSERT_NE(stats, nullptr) << out;
    ASSERT_EQ(std::sscanf(stats,
                          "copied %llu bytes: offloaded %llu in %llu ring request(s), guest %llu, "
                          "zero-filled %llu; cp-vpipe's own syscall I/O: rchar %llu wchar %llu",
                          &copied, &offloaded, &requests, &guest, &zero, &rchar, &wchar),
              7)
        << out;
    EXPECT_EQ(copied, 256ull << 20);
    EXPECT_EQ(offloaded, 256ull << 20);
    EXPECT_EQ(guest, 0u);
    EXPECT_LT(rchar + wchar, 1ull << 20) << "the copying process moved data itself";
    // The agent read nothing of the data; what it wrote is exactly the zero-fill of the new
    // file's blocks (docs/append.md), reported as such.
    EXPECT_LT(agent_io(agent, "rchar") - agent_r0, 1ull << 20);
    EXPECT_LE(agent_io(agent, "wchar") - agent_w0, zero + (1ull << 20));
    EXPECT_GE(engine_vm()["disks"][0]["bytes_read"].get<uint64_t>() - engine_read0, 256ull << 20);
    EXPECT_EQ(run({"cmp", "-s", src, dst}).status, 0) << "copy differs";
    ::unlink(src.c_str());
    ::unlink(dst.c_str());
}

TEST_F(FileOffload, CpVpipeInplaceReusesTheDestinationsBlocksAndZeroFillsNothing) {
    // cp-vpipe --inplace over an existing, fully written file: its extents are already written,
    // so nothing is zero-filled (a new file's unwritten extents are: docs/append.md) and the
    // disk is written once. A longer old destination loses its tail; a shorter one is extended
    // and only the extension is zero-filled.
    const std::string src = disk(0) + "/inplace.src", dst = disk(0) + "/inplace.dst";
    struct Case { uint64_t dst_bytes; const char* what; };
    for (const Case c : {Case{64ull << 20, "same size"}, Case{80ull << 20, "longer destination"},
                         Case{16ull << 20, "shorter destination"}}) {
        SCOPED_TRACE(c.what);
        const Res cp = lab({"exec", "vm1", "--", "sh", "-c",
                            "head -c 67108864 /dev/urandom > " + src + " && head -c " + std::to_string(c.dst_bytes) +
                                " /dev/urandom > " + dst + " && sync && " + kBin + "/cp-vpipe --no-fallback --inplace --stats " +
                                src + " " + dst},
                           {.merge_stderr = true});
        ASSERT_EQ(cp.status, 0) << cp.out;
        unsigned long long copied = 0, offloaded = 0, requests = 0, guest = 0, zero = 0;
        const char* stats = std::strstr(cp.out.c_str(), "copied ");
        ASSERT_NE(stats, nullptr) << cp.out;
        ASSERT_EQ(std::sscanf(stats, "copied %llu bytes: offloaded %llu in %llu ring request(s), guest %llu, zero-filled %llu",
                              &copied, &offloaded, &requests, &guest, &zero),
                  5)
            << cp.out;
        EXPECT_EQ(copied, 64ull << 20);
        EXPECT_EQ(offloaded, 64ull << 20);
        EXPECT_EQ(guest, 0u);
        if (c.dst_bytes >= (64ull << 20))
            EXPECT_EQ(zero, 0u) << "an overwrite in place zero-filled blocks that were already written";
        else
            EXPECT_LE(zero, (64ull << 20) - c.dst_bytes) << "more than the extension was zero-filled";
        struct stat st{};
        ASSERT_EQ(::stat(dst.c_str(), &st), 0);
        EXPECT_EQ(static_cast<uint64_t>(st.st_size), 64ull << 20);
        EXPECT_EQ(run({"cmp", "-s", src, dst}).status, 0) << "copy differs";
    }
    ::unlink(src.c_str());
    ::unlink(dst.c_str());
}

TEST_F(FileOffload, SparseFileKeepsItsHolesAsZeros) {
    const std::string src = disk(0) + "/sparse", dst = disk(0) + "/sparse.copy";
    int fd = ::open(src.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, 16 << 20), 0);
    std::vector<char> chunk(100000);
    fill_pattern(7, 0, chunk.data(), chunk.size());
    for (off_t at : {off_t{0}, off_t{5 << 20}, off_t{(16 << 20) - 100000}})
        ASSERT_EQ(::pwrite(fd, chunk.data(), chunk.size(), at), static_cast<ssize_t>(chunk.size()));
    int out = ::open(dst.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    EXPECT_EQ(offload(fd, out, 0, 16 << 20, 0), 16 << 20);
    ::close(out);
    std::vector<char> expect(16 << 20, 0);
    ASSERT_EQ(::pread(fd, expect.data(), expect.size(), 0), static_cast<ssize_t>(expect.size()));
    ::close(fd);
    EXPECT_TRUE(read_file(dst) == expect);
}

TEST_F(FileOffload, FragmentedFileWithHundredsOfExtents) {
    // Interleave 4 KiB appends to two files, syncing each, so their blocks alternate. ext4
    // would keep each file contiguous; mb_stream_req sends every allocation through the shared
    // locality-group pool so the two files really interleave.
    const std::string src = disk(0) + "/frag", other = disk(0) + "/frag.other", dst = disk(1) + "/frag.copy";
    const std::string dev = info_["vms"][0]["disks"][0]["device"].get<std::string>();
    const std::string knob = "/sys/fs/ext4/" + dev.substr(dev.rfind('/') + 1) + "/mb_stream_req";
    auto set_knob = [&](const char* v) {
        FILE* f = std::fopen(knob.c_str(), "w");
        ASSERT_NE(f, nullptr) << knob;
        std::fputs(v, f);
        std::fclose(f);
    };
    set_knob("100000");
    int a = ::open(src.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int b = ::open(other.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    std::vector<char> data(300 * 4096);
    fill_pattern(11, 0, data.data(), data.size());
    for (int i = 0; i < 300; ++i) {
        ASSERT_EQ(::write(a, data.data() + i * 4096, 4096), 4096);
        ASSERT_EQ(::fsync(a), 0);
        ASSERT_EQ(::write(b, data.data(), 4096), 4096);
        ASSERT_EQ(::fsync(b), 0);
    }
    ::close(a);
    ::close(b);
    set_knob("16");
    int in = ::open(src.c_str(), O_RDONLY);
    std::vector<uint8_t> buf(sizeof(fiemap) + 512 * sizeof(fiemap_extent));
    auto* m = reinterpret_cast<fiemap*>(buf.data());
    m->fm_length = ~0ull;
    m->fm_extent_count = 512;
    ASSERT_EQ(::ioctl(in, FS_IOC_FIEMAP, m), 0);
    ASSERT_GE(m->fm_mapped_extents, 100u) << "the file did not fragment";
    int out = ::open(dst.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    EXPECT_EQ(offload(in, out, 0, data.size(), 0), static_cast<ssize_t>(data.size()));
    ::close(in);
    ::close(out);
    EXPECT_TRUE(read_file(dst) == data);
}

TEST_F(FileOffload, UnalignedOffsetsAndLengthsIntoTheMiddleOfAFile) {
    const std::string src = disk(0) + "/ua.src", dst = disk(0) + "/ua.dst";
    std::vector<char> s(8 << 20), d(6 << 20);
    fill_pattern(21, 0, s.data(), s.size());
    fill_pattern(22, 0, d.data(), d.size());
    write_file(src, s);
    write_file(dst, d);
    const off_t in_off = 12345, out_off = 999;
    const size_t len = (3 << 20) + 777;
    int in = ::open(src.c_str(), O_RDONLY), out = ::open(dst.c_str(), O_WRONLY);
    EXPECT_EQ(offload(in, out, in_off, len, out_off), static_cast<ssize_t>(len));
    ::close(in);
    ::close(out);
    std::memcpy(d.data() + out_off, s.data() + in_off, len);
    EXPECT_TRUE(read_file(dst) == d) << "overwrite in the middle went wrong";
}

TEST_F(FileOffload, AppendKeepsTheOldTail) {
    const std::string src = disk(0) + "/ap.src", dst = disk(0) + "/ap.dst";
    std::vector<char> s(2 << 20), d(5000);
    fill_pattern(31, 0, s.data(), s.size());
    fill_pattern(32, 0, d.data(), d.size());
    write_file(src, s);
    write_file(dst, d);
    int in = ::open(src.c_str(), O_RDONLY), out = ::open(dst.c_str(), O_WRONLY);
    EXPECT_EQ(offload(in, out, 0, s.size(), 5000), static_cast<ssize_t>(s.size()));
    vpipe_result r{};
    vpipe_last_result(&r);
    EXPECT_GT(r.zero_filled, 0u) << "an append allocates (and reports) destination blocks";
    ::close(in);
    ::close(out);
    d.insert(d.end(), s.begin(), s.end());
    EXPECT_TRUE(read_file(dst) == d);
}

TEST_F(FileOffload, LengthPastEndOfFileIsAShortCount) {
    const std::string src = disk(0) + "/short.src", dst = disk(0) + "/short.dst";
    std::vector<char> s(1 << 20);
    fill_pattern(41, 0, s.data(), s.size());
    write_file(src, s);
    int in = ::open(src.c_str(), O_RDONLY), out = ::open(dst.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    EXPECT_EQ(offload(in, out, 512 << 10, 10 << 20, 0), 512 << 10);
    EXPECT_EQ(offload(in, out, 1 << 20, 10 << 20, 512 << 10), 0) << "at EOF: 0";
    ::close(in);
    ::close(out);
    EXPECT_TRUE(read_file(dst) == std::vector<char>(s.begin() + (512 << 10), s.end()));
}

// A destination disk without room for the copy: a clear ENOSPC before anything is written,
// not a fallback, the destination file as it was (size and bytes), the source not left held
// (immutable), the space given back; with room again the same copy goes through.
TEST_F(FileOffload, DiskFullIsEnospcAndLosesNothing) {
    const std::string src = disk(0) + "/full.src", dst = disk(1) + "/full.dst", filler = disk(1) + "/filler";
    const size_t len = 64u << 20;
    std::vector<char> s(len), d(1 << 20);
    fill_pattern(51, 0, s.data(), s.size());
    fill_pattern(52, 0, d.data(), d.size());
    write_file(src, s);
    write_file(dst, d);
    ::sync();
    auto avail = [&] {
        struct statvfs v{};
        ::statvfs(disk(1).c_str(), &v);
        return static_cast<uint64_t>(v.f_bavail) * v.f_frsize;
    };
    // leave 1 MiB to users; the agent is root and may also use ext4's reserve (5 %: ~51 MiB
    // of this 1 GiB disk), so the copy is larger than both
    struct Unlink {
        std::string path;
        ~Unlink() { ::unlink(path.c_str()); }  // a full disk must not outlive the test
    } filler_guard{filler};
    int ff = ::open(filler.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(ff, 0);
    ASSERT_GT(avail(), uint64_t{16} << 20);
    ASSERT_EQ(::fallocate(ff, 0, 0, static_cast<off_t>(avail() - (1u << 20))), 0) << std::strerror(errno);
    ::close(ff);
    const uint64_t free0 = avail();
    ASSERT_LT(free0, uint64_t{len});
    int in = ::open(src.c_str(), O_RDONLY), out = ::open(dst.c_str(), O_WRONLY);
    ASSERT_GE(in, 0);
    ASSERT_GE(out, 0);
    vpipe_set_fallback(0);  // the guest's own copy would fail the same way, later: not asked here
    errno = 0;
    const ssize_t n = vpipe_file_to_file_fd(in, out, 0, len, static_cast<off_t>(d.size()));
    const int err = errno;
    vpipe_set_fallback(1);
    EXPECT_EQ(n, -1);
    EXPECT_EQ(err, ENOSPC) << std::strerror(err);
    EXPECT_TRUE(read_file(dst) == d) << "the destination changed";
    EXPECT_TRUE(read_file(src) == s) << "the source changed";
    int flags = 0;
    ASSERT_EQ(::ioctl(in, FS_IOC_GETFLAGS, &flags), 0);
    EXPECT_EQ(flags & FS_IMMUTABLE_FL, 0) << "the source is still held";
    EXPECT_GE(avail() + (1u << 20), free0) << "blocks allocated for the failed copy were not given back";
    // room again: the same copy goes through
    ASSERT_EQ(::unlink(filler.c_str()), 0);
    ::sync();
    EXPECT_EQ(offload(in, out, 0, len, static_cast<off_t>(d.size())), static_cast<ssize_t>(len));
    ::close(in);
    ::close(out);
    d.insert(d.end(), s.begin(), s.end());
    EXPECT_TRUE(read_file(dst) == d);
    ::unlink(src.c_str());
    ::unlink(dst.c_str());
}

// Fault matrix (docs/faults.md), file -> file x engine SIGKILL: the engine dies while it copies
// 512 MiB into a new file. The requests dom0 answered before it died are durable; the ones in
// flight fail (-ECANCELED from the transport). The guest reports the leading run of answered
// requests as a short count and cuts the destination back to its old size plus that count, so
// the file holds an exact prefix of the source (or is unchanged: -1 with ECANCELED when no
// request was answered), the descriptors stay usable, the source is no longer held, and the
// restarted engine takes the same copy again.
TEST_F(FileOffload, EngineKilledMidCopyLeavesAPrefix) {
    const std::string src = disk(0) + "/killed.src", dst = disk(1) + "/killed.dst";
    const size_t len = 512u << 20;
    ASSERT_EQ(write_pattern_file(src, 61, len, true), "");
    ::unlink(dst.c_str());
    int in = ::open(src.c_str(), O_RDONLY), out = ::open(dst.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(in, 0);
    ASSERT_GE(out, 0);
    const uint64_t b0 = f2f_bytes();
    vpipe_set_fallback(0);
    ssize_t n = 0;
    int err = 0;
    vpipe_result res{};
    std::thread copier([&] {
        errno = 0;
        n = vpipe_file_to_file_fd(in, out, 0, len, 0);
        err = errno;
        vpipe_last_result(&res);
    });
    // kill once dom0 answered some of the copy and still works on the rest
    const bool mid = copy_in_progress(b0, 32u << 20);
    auto rs = lab({"restart-engine", "--kill"});
    copier.join();
    vpipe_set_fallback(1);
    ASSERT_TRUE(mid) << "the copy was never seen in progress";
    ASSERT_EQ(rs.status, 0) << rs.all();
    printf("[ info ] engine killed mid file->file: returned %zd (errno %d), offloaded %llu\n", n, err,
           static_cast<unsigned long long>(res.offloaded));
    if (n < 0) {
        EXPECT_EQ(err, ECANCELED) << std::strerror(err);
    } else {
        EXPECT_GT(n, 0);
        EXPECT_LT(static_cast<size_t>(n), len) << "all of it moved: the kill came too late";
    }
    const uint64_t valid = n > 0 ? static_cast<uint64_t>(n) : 0;
    // the destination: exactly the reported prefix, nothing beyond it
    struct stat st{};
    ASSERT_EQ(::fstat(out, &st), 0);
    EXPECT_EQ(static_cast<uint64_t>(st.st_size), valid) << "the size does not say what is valid";
    const std::vector<char> got = read_file(dst);
    EXPECT_EQ(got.size(), valid);
    EXPECT_EQ(check_pattern(61, 0, got.data(), got.size()), -1) << "a byte that is not the source's";
    int flags = 0;
    ASSERT_EQ(::ioctl(in, FS_IOC_GETFLAGS, &flags), 0);
    EXPECT_EQ(flags & FS_IMMUTABLE_FL, 0) << "the source is still held";
    // the agent reconnects to the new engine; the rest of the copy goes through, same descriptors
    ASSERT_TRUE(reconnected()) << engine_stats().dump();
    EXPECT_EQ(offload(in, out, static_cast<off_t>(valid), len - valid, static_cast<off_t>(valid)),
              static_cast<ssize_t>(len - valid));
    ::close(in);
    ::close(out);
    const std::vector<char> all = read_file(dst);
    EXPECT_EQ(all.size(), len);
    EXPECT_EQ(check_pattern(61, 0, all.data(), all.size()), -1);
    ::unlink(src.c_str());
    ::unlink(dst.c_str());
    expect_nothing_left_behind();
}

// Fault matrix (docs/faults.md), file -> file x the application SIGKILLed mid-copy (cp-vpipe in
// the VM, killed once dom0 answered 32 MiB of 256 MiB). The agent sees the application's
// connection close and stops the operation at its next stage, as vpipe.ko does on a fatal
// signal: the stages with dom0 are waited for, the destination is cut to the leading run dom0
// answered -- an exact prefix of the source, its size saying how much, short of the whole --
// the source is no longer held, nothing is left, and the next copy works.
TEST_F(FileOffload, CallerKilledMidCopy) {
    const std::string src = disk(0) + "/caller.src", dst = disk(1) + "/caller.dst";
    const size_t len = 256u << 20;
    ASSERT_EQ(write_pattern_file(src, 71, len, true), "");
    ::unlink(dst.c_str());
    const uint64_t b0 = f2f_bytes();
    LabProc cp("vm1", {kBin + "/cp-vpipe", "--no-fallback", src, dst});
    ASSERT_TRUE(copy_in_progress(b0, 32u << 20)) << "the copy was never seen in progress";
    ASSERT_EQ(::kill(cp.pid, SIGKILL), 0);  // `vpipe-lab exec` execs cp-vpipe: this is the caller
    cp.wait();
    // the agent finishes the operation; letting go of the source is the last thing it does
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while ((held(src) || engine_vm().value("active", 1) != 0) && std::chrono::steady_clock::now() < until)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));  // polling the file and the engine
    EXPECT_FALSE(held(src)) << "the source is still held";
    EXPECT_FALSE(held(dst)) << "the destination is still held";
    const std::vector<char> got = read_from_disk(dst);
    printf("[ info ] caller killed mid file->file: the destination holds %zu of %zu bytes\n", got.size(), len);
    EXPECT_GE(got.size(), 32u << 20) << "less than dom0 had answered before the kill";
    EXPECT_LT(got.size(), len) << "the agent finished the copy for a caller that was gone";
    EXPECT_EQ(check_pattern(71, 0, got.data(), got.size()), -1) << "a byte that is not the source's";
    // the next copy, over the same destination, is whole
    int in = ::open(src.c_str(), O_RDONLY), out = ::open(dst.c_str(), O_WRONLY | O_TRUNC);
    ASSERT_GE(in, 0);
    ASSERT_GE(out, 0);
    EXPECT_EQ(offload(in, out, 0, len, 0), static_cast<ssize_t>(len));
    ::close(in);
    ::close(out);
    const std::vector<char> all = read_file(dst);
    EXPECT_EQ(all.size(), len);
    EXPECT_EQ(check_pattern(71, 0, all.data(), all.size()), -1);
    ::unlink(src.c_str());
    ::unlink(dst.c_str());
    expect_nothing_left_behind();
}

// Fault matrix, file -> file x the engine hangs (vpiped SIGSTOPped in dom0 once it answered
// 32 MiB of 512 MiB) under the agent's request_timeout_ms (2 s here): the agent's watchdog gets
// no answer to its NOP, declares the engine unresponsive (its engine_timeouts counter), drops
// the channel and fails the requests in flight: the call returns the leading run dom0 answered
// (or -1 ECANCELED) and the destination is cut to exactly that prefix, the source released.
// The hung engine is then killed and restarted (continued instead: the next test), the agent
// reconnects, and the rest of the copy goes through byte-exact.
TEST_F(FileOffload, EngineHungMidCopyTimesOutToAPrefix) {
    ShortAgentTimeout bound(2000);
    ASSERT_EQ(bound.error, "");
    const std::string src = disk(0) + "/hung.src", dst = disk(1) + "/hung.dst";
    const size_t len = 512u << 20;
    ASSERT_EQ(write_pattern_file(src, 63, len, true), "");
    ::unlink(dst.c_str());
    int in = ::open(src.c_str(), O_RDONLY), out = ::open(dst.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(in, 0);
    ASSERT_GE(out, 0);
    ASSERT_TRUE(reconnected()) << engine_stats().dump();
    const long long timeouts0 = agent_engine_timeouts();
    ASSERT_GE(timeouts0, 0);
    const uint64_t b0 = f2f_bytes();
    vpipe_set_fallback(0);
    ssize_t n = 0;
    int err = 0;
    std::thread copier([&] {
        errno = 0;
        n = vpipe_file_to_file_fd(in, out, 0, len, 0);
        err = errno;
    });
    const bool mid = copy_in_progress(b0, 32u << 20);
    EngineHang hang(engine_pid());
    copier.join();   // the agent's bound ends the call; nothing here asks the stopped engine
    const long long timeouts1 = agent_engine_timeouts();
    auto rs = lab({"restart-engine", "--kill"});   // SIGKILL ends a stopped process too
    hang.stopped = false;
    vpipe_set_fallback(1);
    ASSERT_TRUE(mid) << "the copy was never seen in progress";
    ASSERT_TRUE(hang.pid > 0) << "no engine pid";
    ASSERT_EQ(rs.status, 0) << rs.all();
    printf("[ info ] engine hung mid file->file: returned %zd (errno %d); agent engine_timeouts %lld -> %lld\n", n,
           err, timeouts0, timeouts1);
    EXPECT_EQ(timeouts1, timeouts0 + 1) << "the agent did not count the unresponsive engine";
    if (n < 0) {
        EXPECT_EQ(err, ECANCELED) << std::strerror(err);
    } else {
        EXPECT_GT(n, 0);
        EXPECT_LT(static_cast<size_t>(n), len) << "all of it moved: the hang came too late";
    }
    const uint64_t valid = n > 0 ? static_cast<uint64_t>(n) : 0;
    struct stat st{};
    ASSERT_EQ(::fstat(out, &st), 0);
    EXPECT_EQ(static_cast<uint64_t>(st.st_size), valid) << "the size does not say what is valid";
    const std::vector<char> got = read_from_disk(dst);
    EXPECT_EQ(got.size(), valid);
    EXPECT_EQ(check_pattern(63, 0, got.data(), got.size()), -1) << "a byte that is not the source's";
    EXPECT_FALSE(held(src)) << "the source is still held";
    ASSERT_TRUE(reconnected()) << engine_stats().dump();
    EXPECT_EQ(offload(in, out, static_cast<off_t>(valid), len - valid, static_cast<off_t>(valid)),
              static_cast<ssize_t>(len - valid));
    ::close(in);
    ::close(out);
    const std::vector<char> all = read_file(dst);
    EXPECT_EQ(all.size(), len);
    EXPECT_EQ(check_pattern(63, 0, all.data(), all.size()), -1);
    ::unlink(src.c_str());
    ::unlink(dst.c_str());
    expect_nothing_left_behind();
}

// The physical extents (byte offsets in the disk image: ext4 sits on the whole image) of bytes
// [0, len) of fd, in file order; empty if FIEMAP fails or leaves a gap.
struct PhysExtent {
    uint64_t logical, physical, length;
};
std::vector<PhysExtent> physical_extents(int fd, uint64_t len) {
    std::vector<PhysExtent> out;
    std::vector<uint8_t> buf(sizeof(fiemap) + 1024 * sizeof(fiemap_extent));
    auto* m = reinterpret_cast<fiemap*>(buf.data());
    for (uint64_t at = 0; at < len;) {
        std::memset(buf.data(), 0, buf.size());
        m->fm_start = at;
        m->fm_length = len - at;
        m->fm_flags = FIEMAP_FLAG_SYNC;
        m->fm_extent_count = 1024;
        if (::ioctl(fd, FS_IOC_FIEMAP, m) != 0 || m->fm_mapped_extents == 0) return {};
        for (uint32_t i = 0; i < m->fm_mapped_extents; ++i) {
            const fiemap_extent& e = m->fm_extents[i];
            if (e.fe_logical != at) return {};   // a hole: not prepared
            const uint64_t n = std::min<uint64_t>(e.fe_length, len - at);
            out.push_back({e.fe_logical, e.fe_physical, n});
            at += n;
            if (at >= len) break;
        }
    }
    return out;
}

// Fault matrix, file -> file x the engine hangs and then RESUMES (vpiped SIGSTOPped once it
// answered 32 MiB of 512 MiB, then continued with SIGCONT instead of killed). The agent declares
// it unresponsive after request_timeout_ms (2 s), marks the requests in flight abandoned in
// their headers (VPIPE_EPF_ABANDONED), cuts the destination to the answered prefix and gives the
// blocks past it back to the filesystem. The continued engine must not write one more byte of
// those requests: it checks the mark (and its channel) before every write batch, stops them and
// counts them (`abandoned`). Checked in the disk image itself: the destination's blocks are
// allocated before the call (fallocate, so the agent's preparation uses them and FIEMAP names
// them up front); while the engine is stopped -- after anything it had in flight has landed --
// the test overwrites the blocks past the prefix in the image with a filler; once the continued
// engine is idle, none of them holds the source's bytes. Then the next copy is byte-exact.
TEST_F(FileOffload, EngineHungThenContinuedWritesNothingOfAnAbandonedCopy) {
    ShortAgentTimeout bound(2000);
    ASSERT_EQ(bound.error, "");
    const uint64_t seed = 66;
    const std::string src = disk(0) + "/resume.src", dst = disk(1) + "/resume.dst";
    const std::string image = info_["vms"][0]["disks"][1]["image"].get<std::string>();
    const size_t len = 512u << 20, blk = 4096;
    ASSERT_EQ(write_pattern_file(src, seed, len, true), "");
    ::unlink(dst.c_str());
    int in = ::open(src.c_str(), O_RDONLY), out = ::open(dst.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(in, 0);
    ASSERT_GE(out, 0);
    // the destination's blocks, allocated (size 0) before the call: its preparation writes them
    ASSERT_EQ(::fallocate(out, FALLOC_FL_KEEP_SIZE, 0, static_cast<off_t>(len)), 0) << std::strerror(errno);
    const std::vector<PhysExtent> ext = physical_extents(out, len);
    ASSERT_FALSE(ext.empty()) << "FIEMAP did not map the allocated destination";
    ASSERT_TRUE(reconnected()) << engine_stats().dump();
    const long long timeouts0 = agent_engine_timeouts();
    ASSERT_GE(timeouts0, 0);
    const uint64_t abandoned0 = engine_vm().value("abandoned", uint64_t{0});
    const uint64_t b0 = f2f_bytes();
    vpipe_set_fallback(0);
    ssize_t n = 0;
    int err = 0;
    std::thread copier([&] {
        errno = 0;
        n = vpipe_file_to_file_fd(in, out, 0, len, 0);
        err = errno;
    });
    const bool mid = copy_in_progress(b0, 32u << 20);
    EngineHang hang(engine_pid());
    copier.join();   // the agent's bound ends the call; nothing here asks the stopped engine
    vpipe_set_fallback(1);
    const long long timeouts1 = agent_engine_timeouts();
    ASSERT_TRUE(mid) << "the copy was never seen in progress";
    ASSERT_TRUE(hang.stopped) << "the engine was not stopped";
    EXPECT_EQ(timeouts1, timeouts0 + 1) << "the agent did not count the unresponsive engine";
    if (n < 0) {
        EXPECT_EQ(err, ECANCELED) << std::strerror(err);
    } else {
        EXPECT_LT(static_cast<size_t>(n), len) << "all of it moved: the hang came too late";
    }
    const uint64_t valid = n > 0 ? static_cast<uint64_t>(n) : 0;
    struct stat st{};
    ASSERT_EQ(::fstat(out, &st), 0);
    EXPECT_EQ(static_cast<uint64_t>(st.st_size), valid) << "the destination was not cut to the prefix";

    // The blocks past the prefix (given back), as ranges of the image with their stream offsets.
    struct Range {
        uint64_t stream, image, length;
    };
    std::vector<Range> past;
    const uint64_t from = (valid + blk - 1) / blk * blk;
    for (const auto& e : ext) {
        if (e.logical + e.length <= from) continue;
        const uint64_t skip = e.logical < from ? from - e.logical : 0;
        past.push_back({e.logical + skip, e.physical + skip, e.length - skip});
    }
    uint64_t past_bytes = 0;
    for (const auto& r : past) past_bytes += r.length;
    ASSERT_GT(past_bytes, 0u);
    int img = ::open(image.c_str(), O_RDWR | O_DIRECT);
    ASSERT_GE(img, 0) << image << ": " << std::strerror(errno);
    const size_t io = 1u << 20;
    void* mem = nullptr;
    ASSERT_EQ(::posix_memalign(&mem, blk, io), 0);
    std::unique_ptr<uint8_t, decltype(&std::free)> buf(static_cast<uint8_t*>(mem), &std::free);
    // While the engine is stopped: whatever it wrote before the hang is overwritten with a filler
    // (these blocks are free in the guest's filesystem now), so a source byte found there later
    // was written after the guest gave the request up.
    std::memset(buf.get(), 0xA5, io);
    for (const auto& r : past)
        for (uint64_t o = 0; o < r.length; o += io) {
            const size_t k = static_cast<size_t>(std::min<uint64_t>(io, r.length - o));
            ASSERT_EQ(::pwrite(img, buf.get(), k, static_cast<off_t>(r.image + o)), static_cast<ssize_t>(k))
                << std::strerror(errno);
        }
    ASSERT_EQ(::fdatasync(img), 0);

    hang.resume();   // the engine goes on from where it was stopped
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (engine_vm().value("active", 1) != 0 && std::chrono::steady_clock::now() < until)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));  // polling the engine
    const nlohmann::json e1 = engine_vm();
    EXPECT_EQ(e1.value("active", -1), 0) << "the continued engine did not finish: " << e1.dump();
    const uint64_t abandoned1 = e1.value("abandoned", uint64_t{0});
    EXPECT_GE(abandoned1, abandoned0 + 1) << "the continued engine did not report the copy abandoned: " << e1.dump();

    uint64_t source_blocks = 0, changed_blocks = 0;
    std::vector<uint8_t> want(blk);
    for (const auto& r : past)
        for (uint64_t o = 0; o < r.length; o += io) {
            const size_t k = static_cast<size_t>(std::min<uint64_t>(io, r.length - o));
            ASSERT_EQ(::pread(img, buf.get(), k, static_cast<off_t>(r.image + o)), static_cast<ssize_t>(k))
                << std::strerror(errno);
            for (size_t b = 0; b < k; b += blk) {
                const uint8_t* got = buf.get() + b;
                fill_pattern(seed, r.stream + o + b, want.data(), blk);
                if (std::memcmp(got, want.data(), blk) == 0) ++source_blocks;
                if (std::any_of(got, got + blk, [](uint8_t c) { return c != 0xA5; })) ++changed_blocks;
            }
        }
    ::close(img);
    printf("[ info ] engine hung then continued mid file->file: returned %zd (errno %d); engine abandoned %llu -> "
           "%llu; of %llu blocks past the prefix %llu hold source bytes, %llu changed after the filler\n",
           n, err, static_cast<unsigned long long>(abandoned0), static_cast<unsigned long long>(abandoned1),
           static_cast<unsigned long long>(past_bytes / blk), static_cast<unsigned long long>(source_blocks),
           static_cast<unsigned long long>(changed_blocks));
    EXPECT_EQ(source_blocks, 0u) << "the continued engine wrote the abandoned copy into blocks the guest gave back";

    // the destination still holds exactly the prefix; the rest of the copy goes through
    const std::vector<char> got = read_from_disk(dst);
    EXPECT_EQ(got.size(), valid);
    EXPECT_EQ(check_pattern(seed, 0, got.data(), got.size()), -1) << "a byte that is not the source's";
    EXPECT_FALSE(held(src)) << "the source is still held";
    ASSERT_TRUE(reconnected()) << engine_stats().dump();
    EXPECT_EQ(offload(in, out, static_cast<off_t>(valid), len - valid, static_cast<off_t>(valid)),
              static_cast<ssize_t>(len - valid));
    ::close(in);
    ::close(out);
    const std::vector<char> all = read_from_disk(dst);
    EXPECT_EQ(all.size(), len);
    EXPECT_EQ(check_pattern(seed, 0, all.data(), all.size()), -1);
    ::unlink(src.c_str());
    ::unlink(dst.c_str());
    expect_nothing_left_behind();
}

// Fault matrix, file -> file x the guest agent SIGKILLed mid-copy (once dom0 answered 32 MiB of
// 512 MiB). The application's call was waiting on its agent connection: libvpipe never sends a
// request that reached an agent again, so the call fails with ECONNABORTED (no fallback). The
// dead agent had readied the destination for the stages it handed to dom0 but never finished
// it; dom0 stops each stage in flight at its next window once it sees the channel closed. The
// file holds, at every offset, the source's byte or a zero -- never a byte that is neither --
// and at least the bytes dom0 had written before the kill. The restarted agent lets go of the
// dead one's holds (source and destination are no longer immutable), and the next copy is
// byte-exact.
TEST_F(FileOffload, AgentKilledMidCopyLeavesSourceBytesOrZeros) {
    const std::string src = disk(0) + "/agentkill.src", dst = disk(1) + "/agentkill.dst";
    const size_t len = 512u << 20;
    ASSERT_EQ(write_pattern_file(src, 64, len, true), "");
    ::unlink(dst.c_str());
    int in = ::open(src.c_str(), O_RDONLY), out = ::open(dst.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(in, 0);
    ASSERT_GE(out, 0);
    const uint64_t b0 = f2f_bytes();
    vpipe_set_fallback(0);
    ssize_t n = 0;
    int err = 0;
    vpipe_result res{};
    std::thread copier([&] {
        errno = 0;
        n = vpipe_file_to_file_fd(in, out, 0, len, 0);
        err = errno;
        vpipe_last_result(&res);
    });
    const bool mid = copy_in_progress(b0, 32u << 20);
    auto rs = lab({"restart-agent", "vm1", "--kill"});
    copier.join();
    vpipe_set_fallback(1);
    ASSERT_TRUE(mid) << "the copy was never seen in progress";
    ASSERT_EQ(rs.status, 0) << rs.all();
    EXPECT_EQ(n, -1);
    EXPECT_EQ(err, ECONNABORTED) << std::strerror(err);
    EXPECT_NE(res.path, VPIPE_RESULT_FALLBACK) << res.reason;
    // dom0 finishes (or drops) what it had started for the dead agent's channel
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (engine_vm().value("active", 1) != 0 && std::chrono::steady_clock::now() < until)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));  // polling the engine
    EXPECT_EQ(engine_vm().value("active", -1), 0) << engine_vm().dump();
    EXPECT_FALSE(held(src)) << "the source is still held";
    EXPECT_FALSE(held(dst)) << "the destination is still held";
    const std::vector<char> got = read_from_disk(dst);
    const long long lead = check_pattern(64, 0, got.data(), got.size());
    const size_t prefix = lead < 0 ? got.size() : static_cast<size_t>(lead);
    // every byte: the source's at its offset, or a zero (prepared, not written)
    size_t source = 0, zeros = 0, neither = 0, first_neither = got.size();
    std::vector<char> want(1 << 20);
    for (size_t at = 0; at < got.size(); at += want.size()) {
        const size_t k = std::min(want.size(), got.size() - at);
        fill_pattern(64, at, want.data(), k);
        for (size_t i = 0; i < k; ++i) {
            if (got[at + i] == want[i]) {
                ++source;
            } else if (got[at + i] == 0) {
                ++zeros;
            } else if (neither++ == 0) {
                first_neither = at + i;
            }
        }
    }
    printf("[ info ] agent killed mid file->file: errno %d; the destination holds %zu bytes: a leading %zu of the "
           "source, %zu of the source's bytes in all, %zu zeros\n",
           err, got.size(), prefix, source, zeros);
    EXPECT_LE(got.size(), len);
    EXPECT_GE(source, 32u << 20) << "less than dom0 had written before the kill";
    EXPECT_EQ(neither, 0u) << "a byte that is neither the source's nor zero at " << first_neither;
    // the next copy, through the restarted agent, over the same destination
    ::close(out);
    out = ::open(dst.c_str(), O_WRONLY | O_TRUNC);
    ASSERT_GE(out, 0);
    EXPECT_EQ(offload(in, out, 0, len, 0), static_cast<ssize_t>(len));
    ::close(in);
    ::close(out);
    const std::vector<char> all = read_file(dst);
    EXPECT_EQ(all.size(), len);
    EXPECT_EQ(check_pattern(64, 0, all.data(), all.size()), -1);
    ::unlink(src.c_str());
    ::unlink(dst.c_str());
    expect_nothing_left_behind();
}

// Fault matrix, file -> file x a clean engine stop (SIGTERM) mid-copy: the call returns a count
// (or -1 ECANCELED when nothing was answered) and the destination holds exactly that prefix;
// the source is released and the rest of the copy goes through the restarted engine.
TEST_F(FileOffload, EngineStoppedMidCopyLeavesAPrefix) {
    const std::string src = disk(0) + "/stopped.src", dst = disk(1) + "/stopped.dst";
    const size_t len = 256u << 20;
    ASSERT_EQ(write_pattern_file(src, 72, len, true), "");
    ::unlink(dst.c_str());
    int in = ::open(src.c_str(), O_RDONLY), out = ::open(dst.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(in, 0);
    ASSERT_GE(out, 0);
    const uint64_t b0 = f2f_bytes();
    vpipe_set_fallback(0);
    ssize_t n = 0;
    int err = 0;
    vpipe_result res{};
    std::thread copier([&] {
        errno = 0;
        n = vpipe_file_to_file_fd(in, out, 0, len, 0);
        err = errno;
        vpipe_last_result(&res);
    });
    const bool mid = copy_in_progress(b0, 32u << 20);
    auto rs = lab({"restart-engine"});
    copier.join();
    vpipe_set_fallback(1);
    ASSERT_TRUE(mid) << "the copy was never seen in progress";
    ASSERT_EQ(rs.status, 0) << rs.all();
    printf("[ info ] engine stopped mid file->file: returned %zd (errno %d), offloaded %llu\n", n, err,
           static_cast<unsigned long long>(res.offloaded));
    if (n < 0) {
        EXPECT_EQ(err, ECANCELED) << std::strerror(err);
    } else {
        EXPECT_GT(n, 0);
        EXPECT_LE(static_cast<size_t>(n), len);
    }
    const uint64_t valid = n > 0 ? static_cast<uint64_t>(n) : 0;
    struct stat st{};
    ASSERT_EQ(::fstat(out, &st), 0);
    EXPECT_EQ(static_cast<uint64_t>(st.st_size), valid) << "the size does not say what is valid";
    const std::vector<char> got = read_file(dst);
    EXPECT_EQ(got.size(), valid);
    EXPECT_EQ(check_pattern(72, 0, got.data(), got.size()), -1) << "a byte that is not the source's";
    EXPECT_FALSE(held(src)) << "the source is still held";
    ASSERT_TRUE(reconnected()) << engine_stats().dump();
    if (valid < len) {
        EXPECT_EQ(offload(in, out, static_cast<off_t>(valid), len - valid, static_cast<off_t>(valid)),
                  static_cast<ssize_t>(len - valid));
    }
    ::close(in);
    ::close(out);
    const std::vector<char> all = read_file(dst);
    EXPECT_EQ(all.size(), len);
    EXPECT_EQ(check_pattern(72, 0, all.data(), all.size()), -1);
    ::unlink(src.c_str());
    ::unlink(dst.c_str());
    expect_nothing_left_behind();
}

// Fault matrix, file -> file x engine SIGKILL while the copy overwrites the middle of an existing
// file (the documented limit: no journal). What is guaranteed, and all that is asserted: the
// count (or -1 ECANCELED), the reported prefix of the range holds the source's bytes, the bytes
// before the range are untouched, the file keeps its size; past the prefix, inside the range,
// nothing is promised. The copy taken again through the restarted engine makes it whole.
TEST_F(FileOffload, EngineKilledMidOverwriteKeepsTheCountThePrefixAndTheSize) {
    const std::string src = disk(0) + "/ow.src", dst = disk(1) + "/ow.dst";
    const size_t len = 256u << 20, old_size = 320u << 20, at = 32u << 20;
    ASSERT_EQ(write_pattern_file(src, 81, len, true), "");
    ASSERT_EQ(write_pattern_file(dst, 82, old_size, true), "");
    int in = ::open(src.c_str(), O_RDONLY), out = ::open(dst.c_str(), O_WRONLY);
    ASSERT_GE(in, 0);
    ASSERT_GE(out, 0);
    const uint64_t b0 = f2f_bytes();
    vpipe_set_fallback(0);
    ssize_t n = 0;
    int err = 0;
    std::thread copier([&] {
        errno = 0;
        n = vpipe_file_to_file_fd(in, out, 0, len, static_cast<off_t>(at));
        err = errno;
    });
    const bool mid = copy_in_progress(b0, 32u << 20);
    auto rs = lab({"restart-engine", "--kill"});
    copier.join();
    vpipe_set_fallback(1);
    ASSERT_TRUE(mid) << "the copy was never seen in progress";
    ASSERT_EQ(rs.status, 0) << rs.all();
    printf("[ info ] engine killed mid overwrite: returned %zd (errno %d)\n", n, err);
    if (n < 0) {
        EXPECT_EQ(err, ECANCELED) << std::strerror(err);
    } else {
        EXPECT_GT(n, 0);
        EXPECT_LT(static_cast<size_t>(n), len) << "all of it moved: the kill came too late";
    }
    const uint64_t valid = n > 0 ? static_cast<uint64_t>(n) : 0;
    struct stat st{};
    ASSERT_EQ(::fstat(out, &st), 0);
    EXPECT_EQ(static_cast<uint64_t>(st.st_size), old_size) << "an overwrite changed the size";
    const std::vector<char> got = read_file(dst);
    ASSERT_EQ(got.size(), old_size);
    EXPECT_EQ(check_pattern(82, 0, got.data(), at), -1) << "a byte before the range changed";
    EXPECT_EQ(check_pattern(81, 0, got.data() + at, valid), -1) << "the reported prefix is not the source's";
    EXPECT_FALSE(held(src)) << "the source is still held";
    ASSERT_TRUE(reconnected()) << engine_stats().dump();
    EXPECT_EQ(offload(in, out, static_cast<off_t>(valid), len - valid, static_cast<off_t>(at + valid)),
              static_cast<ssize_t>(len - valid));
    ::close(in);
    ::close(out);
    const std::vector<char> all = read_file(dst);
    ASSERT_EQ(all.size(), old_size);
    EXPECT_EQ(check_pattern(82, 0, all.data(), at), -1);
    EXPECT_EQ(check_pattern(81, 0, all.data() + at, len), -1);
    EXPECT_EQ(check_pattern(82, at + len, all.data() + at + len, old_size - at - len), -1) << "the old tail changed";
    ::unlink(src.c_str());
    ::unlink(dst.c_str());
    expect_nothing_left_behind();
}

TEST_F(FileOffload, WrongDescriptorsAreClearErrors) {
    const std::string src = disk(0) + "/err.src", dst = disk(0) + "/err.dst";
    write_file(src, std::vector<char>(8192, 'x'));
    write_file(dst, std::vector<char>(8192, 'y'));
    int ro = ::open(dst.c_str(), O_RDONLY), wo = ::open(src.c_str(), O_WRONLY);
    int in = ::open(src.c_str(), O_RDONLY), rw = ::open(src.c_str(), O_RDWR);
    errno = 0;
    EXPECT_EQ(vpipe_file_to_file_fd(in, ro, 0, 100, 0), -1);
    EXPECT_EQ(errno, EBADF) << "destination opened read-only";
    EXPECT_EQ(vpipe_file_to_file_fd(wo, rw, 0, 100, 0), -1);
    EXPECT_EQ(errno, EBADF) << "source opened write-only";
    EXPECT_EQ(vpipe_file_to_file_fd(in, rw, 0, 4096, 100), -1);
    EXPECT_EQ(errno, EINVAL) << "overlapping ranges of one file";
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    EXPECT_EQ(vpipe_file_to_file_fd(in, sv[0], 0, 100, 0), -1);
    EXPECT_EQ(errno, EINVAL) << "a socket is not a file";
    EXPECT_EQ(vpipe_file_to_file_fd(in, 987654, 0, 100, 0), -1);
    EXPECT_EQ(errno, EBADF);
    for (int fd : {ro, wo, in, rw, sv[0], sv[1]}) ::close(fd);
    EXPECT_TRUE(read_file(dst) == std::vector<char>(8192, 'y')) << "a refused call wrote";
}

TEST_F(FileOffload, FileOffTheVmDisksFallsBackVisiblyOrFails) {
    const std::string src = "/var/tmp/vpipe-fallback-src", dst = disk(0) + "/fb.dst";
    std::vector<char> s(100000);
    fill_pattern(51, 0, s.data(), s.size());
    write_file(src, s);
    int in = ::open(src.c_str(), O_RDONLY), out = ::open(dst.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    vpipe_stats before{}, after{};
    vpipe_get_stats(&before);
    EXPECT_EQ(vpipe_file_to_file_fd(in, out, 0, s.size(), 0), static_cast<ssize_t>(s.size()));
    vpipe_result r{};
    vpipe_last_result(&r);
    EXPECT_EQ(r.path, VPIPE_RESULT_FALLBACK);
    EXPECT_EQ(r.error, ENXIO);
    EXPECT_NE(std::string(r.reason).find("not on one of this VM's virtual disks"), std::string::npos);
    vpipe_get_stats(&after);
    EXPECT_EQ(after.ops_fallback, before.ops_fallback + 1);
    EXPECT_EQ(after.bytes_guest, before.bytes_guest + s.size());
    EXPECT_TRUE(read_file(dst) == s);

    vpipe_set_fallback(0);
    errno = 0;
    EXPECT_EQ(vpipe_file_to_file_fd(in, out, 0, s.size(), 0), -1);
    EXPECT_EQ(errno, ENXIO);
    vpipe_set_fallback(1);
    ::close(in);
    ::close(out);
    ::unlink(src.c_str());
}

TEST_F(FileOffload, EngineCountersMatchWhatMoved) {
    // ctest runs every case in its own process and lab: move something first.
    const uint64_t ops0 = engine_vm()["ops"]["file_to_file"].get<uint64_t>();
    copy_new_file(3 << 20, disk(0), disk(0));
    auto vm = engine_vm();
    EXPECT_EQ(vm["connected"], true);
    EXPECT_EQ(vm["rejected"], 0) << "the agent built a request the engine refused";
    EXPECT_EQ(vm["failed"], 0);
    EXPECT_EQ(vm["active"], 0);
    EXPECT_EQ(vm["ops"]["file_to_file"].get<uint64_t>(), ops0 + 1);
    EXPECT_GE(vm["bytes"]["file_to_file"].get<uint64_t>(), 3u << 20);
}
