// GET/HEAD and PUT of a file below --root.
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/log.h"
#include "common/net.h"
#include "config.h"
#include "connection.h"
#include "files.h"
#include "response.h"

namespace vpipe::httpd {

bool Connection::get(const Request& rq, const std::string& rel, bool keep) {
    int file = -1;
    struct stat sb {};
    if (int status = open_for_get(rel, &file, &sb)) return answer(rq, status, !keep);
    FileHead fh;
    fh.size = fh.len = static_cast<uint64_t>(sb.st_size);
    fh.mtime = sb.st_mtime;
    fh.keep = keep;
    fh.http10 = rq.version == "HTTP/1.0";
    if (const std::string* range = rq.header("range")) {
        RangeKind rk = parse_range(*range, fh.size, &fh.start, &fh.len);
        if (rk == RangeKind::Unsatisfiable) {
            ::close(file);
            std::string cr = "Content-Range: bytes */" + std::to_string(fh.size) + "\r\n";
            return answer(rq, 416, !keep, cr.c_str());
        }
        if (rk == RangeKind::Part) fh.status = 206;
    }
    BodyResult res;
    uint64_t len = rq.is_head() ? 0 : fh.len;
    bool ok = send_response(fd_, file_response_head(fh), file, fh.start, len, &bufs_, &res);
    ::close(file);
    if (!res.err.empty()) apps::log_event("%s: %s; closing", peer_.c_str(), res.err.c_str());
    log(rq, fh.status, res.bytes, res.vt.text() + (ok ? "" : " incomplete"));
    return ok && keep;
}

// A refused PUT: its body has not been read. It is dropped so that the connection can go on,
// unless the client waits for 100-continue (then it will not come, and the connection closes).
bool Connection::refuse_put(const Request& rq, int status, uint64_t len, bool keep) {
    bool go_on = !rq.expects_continue() && (len == 0 || discard(len)) && keep;
    return answer(rq, status, !go_on);
}

bool Connection::put(const Request& rq, const std::string& rel, uint64_t len, bool keep) {
    if (rq.header("expect") && !rq.expects_continue()) return refuse_put(rq, 417, len, keep);
    if (rel == ".") return refuse_put(rq, 403, len, keep);
    int file = -1;
    bool created = false;
    if (int status = open_for_put(rel, &file, &created)) return refuse_put(rq, status, len, keep);
    if (rq.expects_continue() && len > buf_.size()) {
        static const char k100[] = "HTTP/1.1 100 Continue\r\n\r\n";
        if (apps::send_all(fd_, k100, sizeof k100 - 1) < 0) {
            ::close(file);
            return false;
        }
    }
    BodyResult res;
    bool ok = recv_body(fd_, &buf_, file, len, &bufs_, &res);
    // --fsync: the answer promises the body is on the disk, whichever path moved it (after an
    // offload the guest's own flush reaches the image dom0 wrote to: same disk, same barrier)
    if (ok && g_cfg.fsync && ::fdatasync(file) < 0) {
        res.err = std::string("write: fdatasync: ") + std::strerror(errno);
        ok = false;
    }
    ::close(file);
    if (!ok) {
        // the client went away or the disk failed: nothing sensible can follow on this connection
        if (!res.err.empty())
            apps::log_event("%s: PUT %s: %s; closing", peer_.c_str(), printable(rq.target).c_str(), res.err.c_str());
        int status = res.err.rfind("write", 0) == 0 ? 500 : 400;
        std::string r = simple_response(status, nullptr, true, false);
        apps::send_all(fd_, r.data(), r.size());
        log(rq, status, res.bytes, res.vt.text() + " incomplete");
        return false;
    }
    std::string r = put_response(created, keep);
    bool sent_ok = apps::send_all(fd_, r.data(), r.size()) == 0;
    log(rq, created ? 201 : 204, res.bytes, res.vt.text());
    return sent_ok && keep;
}

}  // namespace vpipe::httpd
