// vpipe-proxy's settings (from the command line) and the backend's addresses.
#pragma once

#include <netdb.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include <vpipe/vpipe.h>

namespace vpipe::proxy {

enum class Mode { Rw, Splice, Vpipe };

struct Config {
    Mode mode = Mode::Rw;
    std::string mode_name;
    int listen_port = 0;
    std::string to;
    std::string bind = "0.0.0.0";
    unsigned pipes = 32;
    size_t chunk = 1 << 20;
    bool vpipe_down = true, vpipe_up = false;
    bool http_framing = true;
    // --vpipe-min and libvpipe's offload threshold (vpipe_min_offload(), $VPIPE_MIN_OFFLOAD)
    // decide different things. The threshold decides inside a vPipe call whether dom0 or a copy
    // in the guest moves the bytes; --vpipe-min decides whether the proxy makes the call at all:
    // a smaller body is copied by the proxy's own poll loop, which keeps following both
    // directions, while a vPipe call holds the connection's thread until the body has moved.
    // Unless given, --vpipe-min is the threshold (see main), so a body the proxy hands over is
    // one libvpipe offloads; a smaller --vpipe-min hands bodies to libvpipe's classic path,
    // logged as fallback(below the offload threshold). (With fallbacks off libvpipe offloads
    // whatever it gets.)
    uint64_t vpipe_min = VPIPE_MIN_OFFLOAD_DEFAULT;
    bool no_fallback = false;
};

inline Config g_cfg;
inline addrinfo* g_backend = nullptr;  // --to, resolved once

}  // namespace vpipe::proxy
