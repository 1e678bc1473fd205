#include "calibration.h"

#include <algorithm>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "io/block_io.h"

namespace vpipe::engine {

namespace {

using Clock = std::chrono::steady_clock;

struct FreeDeleter {
    void operator()(uint8_t* p) const { std::free(p); }
};
using AlignedBuf = std::unique_ptr<uint8_t, FreeDeleter>;

AlignedBuf aligned(size_t n) { return AlignedBuf(static_cast<uint8_t*>(std::aligned_alloc(4096, n))); }

uint64_t per_second(uint64_t bytes, Clock::duration d) {
    const double s = std::chrono::duration<double>(d).count();
    return s > 0 ? static_cast<uint64_t>(static_cast<double>(bytes) / s) : 0;
}

}  // namespace

nlohmann::json Calibration::to_json() const {
    nlohmann::json j{{"disk_bytes_per_second", disk_bytes_per_second},
                     {"memory_bytes_per_second", memory_bytes_per_second},
                     {"measured_bytes_per_second", measured_bytes_per_second},
                     {"seconds", seconds},
                     {"disk", disk},
                     {"disk_spans", disk_spans}};
    if (!error.empty()) j["error"] = error;
    return j;
}

Calibration calibrate(DiskImage* disk, unsigned queue_depth, std::chrono::milliseconds disk_time,
                      std::chrono::milliseconds memory_time) {
    Calibration c;
    const auto t0 = Clock::now();
    constexpr uint64_t kSpan = 4ull << 20;  // 4 windows of 1 MiB in flight
    if (disk && disk->size() >= kSpan) {
        c.disk = disk->path();
        const uint64_t before_bytes = disk->bytes_read.load(), before_ops = disk->read_ops.load();
        try {
            BlockIo io(queue_depth);
            AlignedBuf buf = aligned(kSpan);
            // Only allocated regions: holes of a sparse image read as zeros without any I/O.
            std::vector<uint64_t> spans;  // offsets of 4 MiB spans inside data regions
            for (off_t pos = 0; spans.size() < 1024;) {
                const off_t data = ::lseek(disk->fd(), pos, SEEK_DATA);
                if (data < 0) break;
                off_t hole = ::lseek(disk->fd(), data, SEEK_HOLE);
                if (hole < 0) hole = static_cast<off_t>(disk->size());
                for (uint64_t o = (static_cast<uint64_t>(data) + kSpan - 1) / kSpan * kSpan;
                     o + kSpan <= static_cast<uint64_t>(hole) && spans.size() < 1024; o += kSpan)
                    spans.push_back(o);
                pos = hole;
            }
            c.disk_spans = spans.size();
            if (spans.empty()) c.error = "no allocated 4 MiB span in the image (sparse)";
            uint64_t bytes = 0;
            size_t next = 0;
            const auto start = Clock::now();
            while (!spans.empty() && Clock::now() - start < disk_time) {
                const Extent e{spans[next], kSpan, false};
                next = (next + 1) % spans.size();
                if (int r = io.read(*disk, std::span<const Extent>(&e, 1), buf.get()); r != 0) {
                    c.error = std::string("read: ") + std::strerror(-r);
                    bytes = 0;
                    break;
                }
                bytes += kSpan;
            }
            c.disk_bytes_per_second = per_second(bytes, Clock::now() - start);
        } catch (const std::exception& e) {
            c.error = e.what();
        }
        // calibration is not the VM's traffic: leave its counters as they were
        disk->bytes_read.store(before_bytes);
        disk->read_ops.store(before_ops);
    } else {
        c.error = disk ? "disk image smaller than 4 MiB" : "no disk image";
    }
    {
        constexpr size_t kBuf = 64 << 20;  // well beyond the caches
        std::vector<uint8_t> a(kBuf, 1), b(kBuf, 2);
        uint64_t bytes = 0;
        const auto start = Clock::now();
        while (Clock::now() - start < memory_time) {
            std::memcpy(b.data(), a.data(), kBuf);
            a[bytes % kBuf] = b[(bytes + 7) % kBuf];  // keep the copies observable
            bytes += kBuf;
        }
        c.memory_bytes_per_second = per_second(bytes, Clock::now() - start);
    }
    c.measured_bytes_per_second = c.memory_bytes_per_second;
    if (c.disk_bytes_per_second)
        c.measured_bytes_per_second = std::min(c.disk_bytes_per_second, c.memory_bytes_per_second);
    c.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    return c;
}

}  // namespace vpipe::engine
