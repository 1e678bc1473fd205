// Start-up calibration of the credit scheduler's total rate (paper 3.4: "calculated by running
// a calibration task during vPipe's initialization ... the maximum I/O capacity of the host").
//
// Measures what the engine's data paths can move per second on this host:
//   - disk: O_DIRECT reads of the first VM disk image through BlockIo (4 windows of 1 MiB in
//     flight), for about `disk_time`, of allocated regions only (SEEK_DATA: a sparse image's
//     holes read as zeros without I/O and would overstate the disk);
//   - memory: memcpy between two buffers (the copy every socket path makes into the kernel);
// and takes the smaller. Reads only; the images' byte counters are left as they were.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "io/disk_image.h"

namespace vpipe::engine {

struct Calibration {
    uint64_t disk_bytes_per_second = 0;    // 0: not measured (no disk, or it failed)
    uint64_t memory_bytes_per_second = 0;
    uint64_t measured_bytes_per_second = 0;  // min of the measured paths
    double seconds = 0;                      // how long calibrating took
    std::string disk;                        // the image that was read
    uint64_t disk_spans = 0;                 // distinct allocated 4 MiB spans read (cycled)
    std::string error;                       // why the disk was not measured, if it was not

    nlohmann::json to_json() const;
};

// `disk` may be null (memory bound only).
Calibration calibrate(DiskImage* disk, unsigned queue_depth,
                      std::chrono::milliseconds disk_time = std::chrono::milliseconds(400),
                      std::chrono::milliseconds memory_time = std::chrono::milliseconds(100));

}  // namespace vpipe::engine
