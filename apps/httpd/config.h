// vpipe-httpd's settings (from the command line) and limits.
#pragma once

#include <cstddef>
#include <string>

namespace vpipe::httpd {

enum class Mode { Rw, Sendfile, Vpipe };

inline const char* mode_name(Mode m) {
    switch (m) {
        case Mode::Rw: return "rw";
        case Mode::Sendfile: return "sendfile";
        case Mode::Vpipe: return "vpipe";
    }
    return "?";
}

struct Config {
    Mode mode = Mode::Rw;
    int port = 0;
    std::string root;
    std::string bind = "0.0.0.0";
    unsigned threads = 64;
    int idle_timeout = 60;  // seconds
    bool no_fallback = false;
    bool fsync = false;  // PUT: fdatasync() the file before the answer
};

inline Config g_cfg;
inline int g_root_fd = -1;  // --root, opened once

constexpr size_t kMaxHead = 16 * 1024;   // a larger request head: 431
constexpr size_t kIoChunk = 256 * 1024;  // rw mode's buffer

inline int idle_ms() { return g_cfg.idle_timeout * 1000; }

}  // namespace vpipe::httpd
