// Mapping a file range to disk segments (FIEMAP + normalisation) for files of 1, 100 and
// 10 000 extents, on a loop-mounted ext4 image like a lab VM's disk. Needs root.
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "files/disk_table.h"
#include "files/extent_map.h"

using namespace vpipe::agent;

namespace {

std::string g_dir, g_loop;
DiskTable g_disks;

std::string sh(const std::string& cmd) {
    std::string out;
    if (FILE* p = ::popen(cmd.c_str(), "r")) {
        char buf[256];
        while (std::fgets(buf, sizeof(buf), p)) out += buf;
        ::pclose(p);
    }
    while (!out.empty() && out.back() == '\n') out.pop_back();
    return out;
}

// A file of `extents` 4 KiB data blocks, each followed by a hole: one extent per block.
std::string make_file(int extents) {
    std::string path = g_dir + "/mnt/f" + std::to_string(extents);
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    std::vector<char> block(4096, 'x');
    if (extents == 1) {
        std::vector<char> big(4 << 20, 'y');
        if (::write(fd, big.data(), big.size()) < 0) std::abort();
    } else {
        for (int i = 0; i < extents; ++i)
            if (::pwrite(fd, block.data(), block.size(), static_cast<off_t>(i) * 8192) < 0) std::abort();
    }
    ::fsync(fd);
    ::close(fd);
    return path;
}

void BM_MapFileRange(benchmark::State& state) {
    const int extents = static_cast<int>(state.range(0));
    static std::string paths[3];
    const int slot = extents == 1 ? 0 : extents == 100 ? 1 : 2;
    if (paths[slot].empty()) paths[slot] = make_file(extents);
    int fd = ::open(paths[slot].c_str(), O_RDONLY);
    struct stat st{};
    ::fstat(fd, &st);
    size_t segments = 0;
    for (auto _ : state) {
        FileExtents fe;
        if (map_file_range(fd, 0, static_cast<uint64_t>(st.st_size), g_disks, &fe) != 0) {
            state.SkipWithError("map_file_range failed");
            break;
        }
        segments = fe.segments.size();
        benchmark::DoNotOptimize(fe);
    }
    state.counters["segments"] = static_cast<double>(segments);
    ::close(fd);
}
BENCHMARK(BM_MapFileRange)->Arg(1)->Arg(100)->Arg(10000)->Unit(benchmark::kMicrosecond);

}  // namespace

int main(int argc, char** argv) {
    if (::geteuid() != 0) {
        std::fprintf(stderr, "bench_fiemap: needs root (loop-mounted ext4); skipped\n");
        return 0;
    }
    g_dir = "/var/tmp/vpipe-bench-fiemap-" + std::to_string(::getpid());
    sh("mkdir -p " + g_dir + "/mnt && truncate -s 512M " + g_dir + "/disk.img && mkfs.ext4 -q -F -b 4096 " + g_dir + "/disk.img");
    g_loop = sh("losetup --find --show " + g_dir + "/disk.img");
    if (g_loop.empty() || ::mount(g_loop.c_str(), (g_dir + "/mnt").c_str(), "ext4", 0, nullptr) != 0) {
        std::fprintf(stderr, "bench_fiemap: could not mount a loop device; skipped\n");
        return 0;
    }
    g_disks.add(51712, g_loop);
    benchmark::Initialize(&argc, argv);
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    ::umount((g_dir + "/mnt").c_str());
    sh("losetup -d " + g_loop + " && rm -rf " + g_dir);
    return 0;
}
