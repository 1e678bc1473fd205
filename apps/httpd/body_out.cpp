// Response bodies (GET) per --mode.
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "body_io.h"
#include "common/net.h"
#include "config.h"

namespace vpipe::httpd {

namespace {

bool send_rw(int sock, int file, uint64_t off, uint64_t len, BodyBuffers* bufs, BodyResult* res) {
    std::vector<char>& io = bufs->io();
    while (res->bytes < len) {
        size_t want = static_cast<size_t>(std::min<uint64_t>(len - res->bytes, io.size()));
        ssize_t n = ::pread(file, io.data(), want, static_cast<off_t>(off + res->bytes));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;  // error, or the file shrank
        if (apps::send_all(sock, io.data(), static_cast<size_t>(n)) < 0) return false;
        res->bytes += static_cast<uint64_t>(n);
    }
    return true;
}

bool send_sendfile(int sock, int file, uint64_t off, uint64_t len, BodyResult* res) {
    while (res->bytes < len) {
        off_t o = static_cast<off_t>(off + res->bytes);
        size_t want = static_cast<size_t>(std::min<uint64_t>(len - res->bytes, 1u << 30));
        ssize_t n = ::sendfile(sock, file, &o, want);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        res->bytes += static_cast<uint64_t>(n);
    }
    return true;
}

// The head goes as the hdtr head of the first call, so head and body leave in one hand-over
// (and no unacknowledged head bytes sit in the socket when dom0 takes it over). A short count
// (head + fewer data bytes) goes on from where the data stopped without the head; a call that
// moves nothing means the file shrank or the client went away; -1 ends the connection.
// Bodies below libvpipe's offload threshold take its classic path (head, then a copy). A
// response head is a few hundred bytes, far below VPIPE_HDTR_MAX.
bool send_vpipe(int sock, std::string_view head, int file, uint64_t off, uint64_t len, BodyResult* res) {
    apps::HdtrProgress p;
    auto call = [&](uint64_t done, uint64_t left, const vpipe_hdtr* hdtr) {
        return vpipe_file_to_socket_fd_hdtr(file, sock, static_cast<off_t>(off + done), left, hdtr);
    };
    apps::VpipeEnd end = apps::vpipe_send_with_head(head, len, call, &res->vt, &p);
    res->bytes = p.data;
    if (end == apps::VpipeEnd::Failed) res->err = "vpipe_file_to_socket_fd_hdtr failed: " + res->vt.failure();
    return end == apps::VpipeEnd::Done;
}

}  // namespace

bool send_response(int sock, std::string_view head, int file, uint64_t off, uint64_t len, BodyBuffers* bufs,
                   BodyResult* res) {
    if (len > 0 && g_cfg.mode == Mode::Vpipe) return send_vpipe(sock, head, file, off, len, res);
    // the classic paths cork the head with the body
    if (apps::send_all(sock, head.data(), head.size(), len > 0 ? MSG_MORE : 0) < 0) return false;
    if (len == 0) return true;
    if (g_cfg.mode == Mode::Rw) return send_rw(sock, file, off, len, bufs, res);
    return send_sendfile(sock, file, off, len, res);
}

}  // namespace vpipe::httpd
