// vpipe-httpd: a small static HTTP/1.1 server (GET, HEAD, PUT, single byte ranges, keep-alive)
// whose bodies move either the classic way (read+write, sendfile/splice) or through vPipe
// (vpipe_file_to_socket_fd / vpipe_socket_to_file_fd). One thread per connection, blocking
// sockets. A test application: see the --help text.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/sendfile.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>

#include <vpipe/vpipe.h>

namespace {

// ---------------------------------------------------------------------------------------------
// command line

const char* kDescription = R"(NAME
    vpipe-httpd - static HTTP/1.1 file server with a classic or a vPipe data path

SYNOPSIS
    vpipe-httpd --mode rw|sendfile|vpipe --port PORT --root DIR [--bind ADDR] [--threads N]
                [--idle-timeout SEC] [--no-fallback]

DESCRIPTION
    Serves the regular files under DIR over HTTP/1.1 until SIGINT or SIGTERM.

    GET and HEAD return a file (200), or one byte range of it when the request has
    `Range: bytes=A-B`, `bytes=A-` or `bytes=-N` (206 with Content-Range; 416 with
    `Content-Range: bytes */SIZE` when the range starts past the end). Multiple or malformed
    ranges are ignored (200 with the whole file), as RFC 9110 allows.
    PUT with a Content-Length stores the body at DIR/PATH: 201 when the file was created, 204
    when an existing file was replaced (truncated first). Parent directories are not created.
    `Expect: 100-continue` is answered. Chunked request bodies are refused (411/501).

    Errors: 400 malformed request (bad request line, header, percent-encoding, NUL, missing
    Host in HTTP/1.1, bad Content-Length), 403 path traversal (a `..` segment, or a symlink
    leading out of DIR: files are opened with openat2(RESOLVE_BENEATH)), directories and
    non-regular files, 404 missing file (or missing parent directory for PUT), 405 other
    methods (with Allow), 411 PUT without Content-Length, 416 unsatisfiable range, 431 request
    head larger than 16 KiB, 501 Transfer-Encoding, 505 HTTP versions other than 1.0/1.1.

    Connections are persistent (HTTP/1.1 default, or HTTP/1.0 with `Connection: keep-alive`)
    until the client sends `Connection: close`, closes, or is idle for --idle-timeout seconds.
    Pipelined requests are served in order.

    The data path (--mode) of response and request bodies:
      rw        GET: pread() + write() in 256 KiB pieces;  PUT: recv() + pwrite().
      sendfile  GET: sendfile(2);  PUT: splice(2) socket -> pipe -> file.
      vpipe     GET: send() the head, then vpipe_file_to_socket_fd(file, socket, offset, length),
                looping on short counts; -1 closes the connection (logged).
                PUT: body bytes that arrived with the head are pwrite()n first, the rest is
                vpipe_socket_to_file_fd(socket, file, offset, remaining).
                libvpipe offloads to dom0 when it can and otherwise falls back to a guest copy;
                the log says which (vpipe_last_result). --no-fallback makes it fail instead.

    Logs one line per request to stderr:
      TIME PEER "METHOD TARGET VERSION" STATUS bytes=N mode=MODE [vpipe=PATH] ms=T
    where bytes counts body bytes moved and PATH is offloaded, fallback(REASON),
    mixed(offloaded=X guest=Y: REASON), failed(ERROR: REASON) or - (no body).
)";

const char* kFooter = R"(EXIT STATUS
    0  stopped by SIGINT or SIGTERM
    1  runtime failure (e.g. cannot bind the port; the reason is printed on stderr)
    2  bad command line

EXAMPLES
    vpipe-httpd --mode sendfile --port 8080 --root /srv/www
    vpipe-lab exec vm1 -- vpipe-httpd --mode vpipe --port 8080 --root /run/vpipe-lab/vm1/disk0
    curl -r 0-99 http://10.199.0.11:8080/big.bin
    curl -T local.bin http://10.199.0.11:8080/uploaded.bin
)";

// Man-page-like help: the description carries NAME/SYNOPSIS/DESCRIPTION, CLI11 the OPTIONS.
class ManFormatter : public CLI::Formatter {
public:
    ManFormatter() { column_width(30); }
    std::string make_usage(const CLI::App*, std::string) const override { return ""; }
    std::string make_description(const CLI::App* app) const override { return app->get_description() + "\n"; }
};

enum class Mode { Rw, Sendfile, Vpipe };

const char* mode_name(Mode m) {
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
    int idle_timeout = 60;
    bool no_fallback = false;
};

Config g_cfg;
int g_root_fd = -1;
std::atomic<bool> g_stop{false};

constexpr size_t kMaxHead = 16 * 1024;
constexpr size_t kIoChunk = 256 * 1024;

// ---------------------------------------------------------------------------------------------
// connection registry (so that a signal can wake every connection thread)

std::mutex g_conn_mu;
std::condition_variable g_conn_cv;
std::set<int> g_conns;

void register_conn(int fd) {
    std::lock_guard lk(g_conn_mu);
    g_conns.insert(fd);
}
void unregister_conn(int fd) {
    std::lock_guard lk(g_conn_mu);
    g_conns.erase(fd);
    g_conn_cv.notify_all();
}

// ---------------------------------------------------------------------------------------------
// small helpers

std::string now_text() {
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    tm t{};
    gmtime_r(&ts.tv_sec, &t);
    char b[64];
    std::snprintf(b, sizeof b, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", t.tm_year + 1900, t.tm_mon + 1, t.tm_mday,
                  t.tm_hour, t.tm_min, t.tm_sec, ts.tv_nsec / 1000000);
    return b;
}

std::string http_date(time_t when) {
    tm t{};
    gmtime_r(&when, &t);
    char b[64];
    std::strftime(b, sizeof b, "%a, %d %b %Y %H:%M:%S GMT", &t);
    return b;
}

std::string printable(std::string_view s) {
    std::string out;
    for (char c : s.substr(0, 512)) out += (c >= 0x21 && c < 0x7f && c != '"') ? c : '?';
    return out;
}

std::string lower(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

std::string trim(std::string_view s) {
    size_t a = 0, b = s.size();
    while (a < b && (s[a] == ' ' || s[a] == '\t')) ++a;
    while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t')) --b;
    return std::string(s.substr(a, b - a));
}

// Parses a non-empty run of decimal digits; false on anything else or overflow.
bool parse_u64(std::string_view s, uint64_t* out) {
    if (s.empty() || s.size() > 19) return false;
    uint64_t v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') return false;
        v = v * 10 + static_cast<uint64_t>(c - '0');
    }
    *out = v;
    return true;
}

// Does the comma-separated header value contain `token` (case-insensitive)?
bool has_token(const std::string& value, const char* token) {
    size_t pos = 0;
    while (pos <= value.size()) {
        size_t comma = value.find(',', pos);
        if (comma == std::string::npos) comma = value.size();
        if (lower(trim(std::string_view(value).substr(pos, comma - pos))) == token) return true;
        pos = comma + 1;
    }
    return false;
}

int send_all(int fd, const char* p, size_t len, int flags = 0) {
    while (len > 0) {
        ssize_t n = ::send(fd, p, len, flags | MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += n;
        len -= static_cast<size_t>(n);
    }
    return 0;
}

// Waits for `fd` to become readable for up to timeout_ms (-1: forever). 1 ready, 0 timeout, -1 error.
int wait_readable(int fd, int timeout_ms) {
    pollfd p{fd, POLLIN, 0};
    for (;;) {
        int r = ::poll(&p, 1, timeout_ms);
        if (r < 0 && errno == EINTR) continue;
        return r < 0 ? -1 : (r == 0 ? 0 : 1);
    }
}

long openat2_call(int dirfd, const char* path, uint64_t flags, uint64_t mode) {
    open_how how{};
    how.flags = flags;
    how.mode = mode;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    long r;
    do {
        r = ::syscall(SYS_openat2, dirfd, path, &how, sizeof how);
    } while (r < 0 && errno == EAGAIN);
    return r;
}

// Outcome of the vPipe calls for one body, for the log line.
struct VpipeTally {
    bool used = false;
    bool failed = false;
    int error = 0;
    uint64_t offloaded = 0, guest = 0;
    uint64_t ops_offloaded = 0, ops_fallback = 0;
    std::string reason;

    void add(ssize_t n) {
        int saved = errno;
        used = true;
        vpipe_result r{};
        vpipe_last_result(&r);
        if (n < 0 || r.path == VPIPE_RESULT_FAILED) {
            failed = true;
            error = n < 0 ? saved : r.error;
            reason = r.reason ? r.reason : "";
            return;
        }
        offloaded += r.offloaded;
        guest += r.guest_copied;
        if (r.path == VPIPE_RESULT_FALLBACK) {
            ops_fallback++;
            if (r.reason && *r.reason) reason = r.reason;
        } else {
            ops_offloaded++;
        }
    }
    std::string text() const {
        if (!used) return "-";
        if (failed) return "failed(" + std::string(std::strerror(error)) + ": " + reason + ")";
        if (ops_fallback == 0) return "offloaded";
        if (ops_offloaded == 0) return "fallback(" + reason + ")";
        return "mixed(offloaded=" + std::to_string(offloaded) + " guest=" + std::to_string(guest) + ": " + reason + ")";
    }
};

// ---------------------------------------------------------------------------------------------
// one connection

struct Request {
    std::string method, target, version;
    std::vector<std::pair<std::string, std::string>> headers;  // lower-case names
    const std::string* header(const char* name) const {
        for (const auto& h : headers)
            if (h.first == name) return &h.second;
        return nullptr;
    }
};

class Connection {
public:
    Connection(int fd, std::string peer) : fd_(fd), peer_(std::move(peer)) {}

    void serve() {
        while (!g_stop.load()) {
            int r = read_head();
            if (r <= 0) {
                if (r == -2) {
                    simple(431, "Request Header Fields Too Large", nullptr, true);
                    log_line("-", "-", "-", 431, 0, "-");
                }
                break;  // EOF, timeout or error: nothing to answer
            }
            if (!handle()) break;
        }
        linger_close();
    }

private:
    int fd_;
    std::string peer_;
    std::string buf_;   // bytes received but not yet consumed
    size_t head_len_ = 0;
    std::chrono::steady_clock::time_point t0_;
    std::vector<char> io_;  // rw buffer (lazily)
    int pipe_[2] = {-1, -1};  // splice pipe (sendfile mode, lazily)

    // 1: a complete head is in buf_ (head_len_ bytes incl. the blank line); 0: EOF/timeout
    // before one; -1 error; -2 head too large.
    int read_head() {
        if (!buf_.empty()) t0_ = std::chrono::steady_clock::now();  // a pipelined request
        for (;;) {
            size_t end = buf_.find("\r\n\r\n");
            if (end != std::string::npos) {
                head_len_ = end + 4;
                if (head_len_ > kMaxHead) return -2;
                return 1;
            }
            if (buf_.size() > kMaxHead) return -2;
            int w = wait_readable(fd_, g_cfg.idle_timeout * 1000);
            if (w <= 0) return w;
            char tmp[65536];
            ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
            if (n < 0) {
                if (errno == EINTR) continue;
                return -1;
            }
            if (n == 0) return 0;
            if (buf_.empty()) t0_ = std::chrono::steady_clock::now();
            buf_.append(tmp, static_cast<size_t>(n));
        }
    }

    // Parses the head in buf_[0, head_len_). false: malformed.
    bool parse(Request* rq) {
        std::string_view head(buf_.data(), head_len_ - 2);  // keep one CRLF after each line
        size_t eol = head.find("\r\n");
        std::string_view line = head.substr(0, eol);
        size_t s1 = line.find(' ');
        size_t s2 = s1 == std::string_view::npos ? s1 : line.find(' ', s1 + 1);
        if (s1 == std::string_view::npos || s2 == std::string_view::npos || line.find(' ', s2 + 1) != std::string_view::npos)
            return false;
        rq->method = std::string(line.substr(0, s1));
        rq->target = std::string(line.substr(s1 + 1, s2 - s1 - 1));
        rq->version = std::string(line.substr(s2 + 1));
        if (rq->method.empty() || rq->target.empty()) return false;
        for (char c : rq->method)
            if (!std::isupper(static_cast<unsigned char>(c))) return false;
        size_t pos = eol + 2;
        while (pos < head.size()) {
            size_t e = head.find("\r\n", pos);
            if (e == std::string_view::npos) return false;
            std::string_view h = head.substr(pos, e - pos);
            pos = e + 2;
            if (h.empty()) break;
            size_t colon = h.find(':');
            if (colon == std::string_view::npos || colon == 0) return false;
            std::string name(h.substr(0, colon));
            for (char c : name)
                if (c <= 0x20 || c >= 0x7f) return false;  // no whitespace before the colon, no obs-fold
            for (char c : h)
                if (c == '\0' || c == '\r' || c == '\n') return false;
            rq->headers.emplace_back(lower(name), trim(h.substr(colon + 1)));
        }
        return true;
    }

    // Writes a complete small response. `extra` are additional header lines (each ending CRLF).
    void simple(int status, const char* reason, const char* extra, bool close, bool head_only = false) {
        std::string body = std::to_string(status) + " " + reason + "\n";
        std::string r = "HTTP/1.1 " + std::to_string(status) + " " + reason + "\r\nServer: vpipe-httpd\r\nDate: " +
                        http_date(time(nullptr)) + "\r\nContent-Type: text/plain\r\nContent-Length: " +
                        std::to_string(body.size()) + "\r\n" + (extra ? extra : "") +
                        (close ? "Connection: close\r\n" : "") + "\r\n";
        if (!head_only) r += body;
        send_all(fd_, r.data(), r.size());
    }

    void log_line(const std::string& method, const std::string& target, const std::string& version, int status,
                  uint64_t bytes, const std::string& vp) {
        double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0_).count();
        std::string line = now_text() + " " + peer_ + " \"" + printable(method) + " " + printable(target) + " " +
                           printable(version) + "\" " + std::to_string(status) + " bytes=" + std::to_string(bytes) +
                           " mode=" + mode_name(g_cfg.mode);
        if (g_cfg.mode == Mode::Vpipe) line += " vpipe=" + vp;
        char t[32];
        std::snprintf(t, sizeof t, " ms=%.1f\n", ms);
        line += t;
        std::fputs(line.c_str(), stderr);
    }

    // Reads and drops `len` body bytes (a rejected request body), so that the connection can go
    // on. false when the connection is lost.
    bool discard(uint64_t len) {
        size_t pre = static_cast<size_t>(std::min<uint64_t>(len, buf_.size()));
        buf_.erase(0, pre);
        len -= pre;
        char tmp[65536];
        while (len > 0) {
            if (wait_readable(fd_, g_cfg.idle_timeout * 1000) <= 0) return false;
            ssize_t n = ::recv(fd_, tmp, static_cast<size_t>(std::min<uint64_t>(len, sizeof tmp)), 0);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return false;
            len -= static_cast<uint64_t>(n);
        }
        return true;
    }

    // Handles the request whose head is in buf_. false: close the connection.
    bool handle() {
        Request rq;
        bool ok = parse(&rq);
        buf_.erase(0, head_len_);
        if (!ok) {
            simple(400, "Bad Request", nullptr, true);
            log_line(rq.method.empty() ? "-" : rq.method, rq.target.empty() ? "-" : rq.target,
                     rq.version.empty() ? "-" : rq.version, 400, 0, "-");
            return false;
        }
        auto fail = [&](int status, const char* reason, const char* extra = nullptr, bool close = true) {
            simple(status, reason, extra, close, rq.method == "HEAD");
            log_line(rq.method, rq.target, rq.version, status, 0, "-");
            return !close;
        };

        // version and persistence
        if (rq.version.size() != 8 || rq.version.compare(0, 5, "HTTP/") != 0 || !std::isdigit(static_cast<unsigned char>(rq.version[5])) ||
            rq.version[6] != '.' || !std::isdigit(static_cast<unsigned char>(rq.version[7])))
            return fail(400, "Bad Request");
        if (rq.version != "HTTP/1.1" && rq.version != "HTTP/1.0") return fail(505, "HTTP Version Not Supported");
        const std::string* conn_h = rq.header("connection");
        bool keep = rq.version == "HTTP/1.1" ? !(conn_h && has_token(*conn_h, "close"))
                                             : (conn_h && has_token(*conn_h, "keep-alive"));
        if (rq.version == "HTTP/1.1" && !rq.header("host")) return fail(400, "Bad Request");

        // framing of a request body
        if (rq.header("transfer-encoding")) {
            if (rq.method == "PUT") return fail(411, "Length Required");
            return fail(501, "Not Implemented");
        }
        uint64_t body_len = 0;
        bool have_len = false;
        for (const auto& h : rq.headers) {
            if (h.first != "content-length") continue;
            uint64_t v;
            if (!parse_u64(h.second, &v) || (have_len && v != body_len)) return fail(400, "Bad Request");
            body_len = v;
            have_len = true;
        }

        // target -> path below the root
        std::string rel;
        int perr = to_relative(rq.target, &rel);
        bool is_get = rq.method == "GET" || rq.method == "HEAD";
        if (!is_get && rq.method != "PUT") {
            if (body_len > 0 && !discard(body_len)) return false;
            return fail(405, "Method Not Allowed", "Allow: GET, HEAD, PUT\r\n", !keep);
        }
        if (perr != 0 || (rq.method == "PUT" && !have_len)) {
            int status = perr != 0 ? perr : 411;
            const std::string* expect = rq.header("expect");
            if (expect && lower(*expect) == "100-continue") keep = false;  // the body will not come
            else if (body_len > 0 && !discard(body_len)) return false;
            return fail(status, status == 400 ? "Bad Request" : status == 403 ? "Forbidden" : "Length Required",
                        nullptr, !keep || status == 411);
        }
        if (is_get) {
            if (body_len > 0 && !discard(body_len)) return false;
            return get(rq, rel, keep);
        }
        return put(rq, rel, body_len, keep);
    }

    // Request target -> a relative path below the root. 0, or the HTTP status to answer.
    static int to_relative(const std::string& target, std::string* rel) {
        std::string t = target;
        if (t.compare(0, 7, "http://") == 0 || t.compare(0, 8, "https://") == 0) {  // absolute-form
            size_t slash = t.find('/', t.find("//") + 2);
            t = slash == std::string::npos ? "/" : t.substr(slash);
        }
        if (t.empty() || t[0] != '/') return 400;
        size_t q = t.find_first_of("?#");
        if (q != std::string::npos) t.resize(q);
        std::string dec;
        for (size_t i = 0; i < t.size(); ++i) {
            if (t[i] == '%') {
                if (i + 2 >= t.size() || !std::isxdigit(static_cast<unsigned char>(t[i + 1])) ||
                    !std::isxdigit(static_cast<unsigned char>(t[i + 2])))
                    return 400;
                char c = static_cast<char>(std::stoi(t.substr(i + 1, 2), nullptr, 16));
                if (c == '\0') return 400;
                dec += c;
                i += 2;
            } else {
                dec += t[i];
            }
        }
        rel->clear();
        size_t pos = 0;
        while (pos <= dec.size()) {
            size_t s = dec.find('/', pos);
            if (s == std::string::npos) s = dec.size();
            std::string seg = dec.substr(pos, s - pos);
            pos = s + 1;
            if (seg.empty() || seg == ".") continue;
            if (seg == "..") return 403;  // path traversal
            if (!rel->empty()) *rel += '/';
            *rel += seg;
        }
        if (rel->empty()) *rel = ".";
        return 0;
    }

    // Maps an open failure to a status.
    static std::pair<int, const char*> open_status(int err) {
        switch (err) {
            case ENOENT:
            case ENOTDIR: return {404, "Not Found"};
            case ENAMETOOLONG: return {414, "URI Too Long"};
            case EXDEV:     // RESOLVE_BENEATH: escapes the root
            case ELOOP:
            case EACCES:
            case EPERM:
            case EISDIR:
            case EROFS:
            case ETXTBSY: return {403, "Forbidden"};
            case ENOSPC:
            case EDQUOT: return {507, "Insufficient Storage"};
            default: return {500, "Internal Server Error"};
        }
    }

    // Single byte range. 0: no usable Range (serve everything); 1: *start/*len set; 2: unsatisfiable.
    static int parse_range(const std::string& v, uint64_t size, uint64_t* start, uint64_t* len) {
        std::string s = trim(v);
        if (s.size() < 6 || lower(s.substr(0, 6)) != "bytes=") return 0;
        s = trim(s.substr(6));
        if (s.find(',') != std::string::npos) return 0;  // multiple ranges: ignored
        size_t dash = s.find('-');
        if (dash == std::string::npos) return 0;
        std::string a = trim(s.substr(0, dash)), b = trim(s.substr(dash + 1));
        if (a.empty()) {  // suffix: the last N bytes
            uint64_t n;
            if (b.size() > 19 && b.find_first_not_of("0123456789") == std::string::npos) n = UINT64_MAX;
            else if (!parse_u64(b, &n)) return 0;
            if (n == 0 || size == 0) return 2;
            *len = std::min(n, size);
            *start = size - *len;
            return 1;
        }
        uint64_t first, last = UINT64_MAX;
        if (!parse_u64(a, &first)) {
            if (a.size() > 19 && a.find_first_not_of("0123456789") == std::string::npos) return 2;
            return 0;
        }
        if (!b.empty() && !parse_u64(b, &last)) {
            if (b.size() > 19 && b.find_first_not_of("0123456789") == std::string::npos) last = UINT64_MAX;
            else return 0;
        }
        if (last < first) return 0;  // invalid: ignored
        if (first >= size) return 2;
        *start = first;
        *len = std::min(last, size - 1) - first + 1;
        return 1;
    }

    bool get(const Request& rq, const std::string& rel, bool keep) {
        bool head_only = rq.method == "HEAD";
        auto fail = [&](int status, const char* reason, const char* extra = nullptr) {
            simple(status, reason, extra, !keep, head_only);
            log_line(rq.method, rq.target, rq.version, status, 0, "-");
            return keep;
        };
        long fd = openat2_call(g_root_fd, rel.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY, 0);
        if (fd < 0) {
            auto [st, why] = open_status(errno);
            return fail(st, why);
        }
        int file = static_cast<int>(fd);
        struct stat sb {};
        if (::fstat(file, &sb) < 0 || !S_ISREG(sb.st_mode)) {
            ::close(file);
            return fail(403, "Forbidden");
        }
        ::fcntl(file, F_SETFL, ::fcntl(file, F_GETFL) & ~O_NONBLOCK);
        uint64_t size = static_cast<uint64_t>(sb.st_size), start = 0, len = size;
        int status = 200;
        if (const std::string* range = rq.header("range")) {
            int pr = parse_range(*range, size, &start, &len);
            if (pr == 2) {
                ::close(file);
                std::string cr = "Content-Range: bytes */" + std::to_string(size) + "\r\n";
                return fail(416, "Range Not Satisfiable", cr.c_str());
            }
            if (pr == 1) status = 206;
        }
        std::string h = "HTTP/1.1 " + std::to_string(status) + (status == 200 ? " OK" : " Partial Content") +
                        "\r\nServer: vpipe-httpd\r\nDate: " + http_date(time(nullptr)) +
                        "\r\nLast-Modified: " + http_date(sb.st_mtime) +
                        "\r\nContent-Type: application/octet-stream\r\nAccept-Ranges: bytes\r\nContent-Length: " +
                        std::to_string(len) + "\r\n";
        if (status == 206)
            h += "Content-Range: bytes " + std::to_string(start) + "-" + std::to_string(start + len - 1) + "/" +
                 std::to_string(size) + "\r\n";
        h += keep ? (rq.version == "HTTP/1.0" ? "Connection: keep-alive\r\n" : "") : "Connection: close\r\n";
        h += "\r\n";
        bool body = !head_only && len > 0;
        // The classic paths cork the head with the body; vPipe gets a plain, complete send().
        int flags = body && g_cfg.mode != Mode::Vpipe ? MSG_MORE : 0;
        if (send_all(fd_, h.data(), h.size(), flags) < 0) {
            ::close(file);
            log_line(rq.method, rq.target, rq.version, status, 0, "-");
            return false;
        }
        uint64_t sent = 0;
        VpipeTally vt;
        bool ok = true;
        if (body) ok = send_body(file, start, len, &sent, &vt);
        ::close(file);
        log_line(rq.method, rq.target, rq.version, status, sent, vt.text() + (ok ? "" : " incomplete"));
        return ok && keep;
    }

    bool send_body(int file, uint64_t off, uint64_t len, uint64_t* sent, VpipeTally* vt) {
        switch (g_cfg.mode) {
            case Mode::Rw: {
                if (io_.empty()) io_.resize(kIoChunk);
                while (*sent < len) {
                    size_t want = static_cast<size_t>(std::min<uint64_t>(len - *sent, io_.size()));
                    ssize_t n = ::pread(file, io_.data(), want, static_cast<off_t>(off + *sent));
                    if (n < 0 && errno == EINTR) continue;
                    if (n <= 0) return false;  // error, or the file shrank
                    if (send_all(fd_, io_.data(), static_cast<size_t>(n)) < 0) return false;
                    *sent += static_cast<uint64_t>(n);
                }
                return true;
            }
            case Mode::Sendfile: {
                while (*sent < len) {
                    off_t o = static_cast<off_t>(off + *sent);
                    size_t want = static_cast<size_t>(std::min<uint64_t>(len - *sent, 1u << 30));
                    ssize_t n = ::sendfile(fd_, file, &o, want);
                    if (n < 0 && errno == EINTR) continue;
                    if (n <= 0) return false;
                    *sent += static_cast<uint64_t>(n);
                }
                return true;
            }
            case Mode::Vpipe: {
                while (*sent < len) {
                    ssize_t n = vpipe_file_to_socket_fd(file, fd_, static_cast<off_t>(off + *sent), len - *sent);
                    vt->add(n);
                    if (n < 0) {
                        std::fprintf(stderr, "%s vpipe-httpd: %s: vpipe_file_to_socket_fd failed: %s (%s); closing\n",
                                     now_text().c_str(), peer_.c_str(), std::strerror(vt->error), vt->reason.c_str());
                        return false;
                    }
                    if (n == 0) return false;  // the file shrank under us
                    *sent += static_cast<uint64_t>(n);
                }
                return true;
            }
        }
        return false;
    }

    bool put(const Request& rq, const std::string& rel, uint64_t len, bool keep) {
        // on a refusal the body has not been read: drop it unless the client waits for 100-continue
        const std::string* expect = rq.header("expect");
        bool expect_continue = expect && lower(*expect) == "100-continue";
        auto refuse = [&](int status, const char* reason) {
            bool k = keep;
            if (!expect_continue && len > 0 && !discard(len)) k = false;
            if (expect_continue) k = false;
            simple(status, reason, nullptr, !k);
            log_line(rq.method, rq.target, rq.version, status, 0, "-");
            return k;
        };
        if (expect && !expect_continue) return refuse(417, "Expectation Failed");
        if (rel == ".") return refuse(403, "Forbidden");
        bool created = false;
        long fd = openat2_call(g_root_fd, rel.c_str(), O_WRONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY, 0);
        if (fd < 0 && errno == ENOENT) {
            fd = openat2_call(g_root_fd, rel.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
            created = fd >= 0;
            if (fd < 0 && errno == EEXIST)
                fd = openat2_call(g_root_fd, rel.c_str(), O_WRONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY, 0);
        }
        if (fd < 0) {
            auto [st, why] = open_status(errno);
            return refuse(st, why);
        }
        int file = static_cast<int>(fd);
        struct stat sb {};
        if (::fstat(file, &sb) < 0 || !S_ISREG(sb.st_mode)) {
            ::close(file);
            return refuse(403, "Forbidden");
        }
        ::fcntl(file, F_SETFL, ::fcntl(file, F_GETFL) & ~O_NONBLOCK);
        if (!created && ::ftruncate(file, 0) < 0) {
            int e = errno;
            ::close(file);
            auto [st, why] = open_status(e);
            return refuse(st, why);
        }
        if (expect_continue && len > buf_.size()) {
            static const char k100[] = "HTTP/1.1 100 Continue\r\n\r\n";
            if (send_all(fd_, k100, sizeof k100 - 1) < 0) {
                ::close(file);
                return false;
            }
        }
        uint64_t got = 0;
        VpipeTally vt;
        std::string err;
        bool ok = recv_body(file, len, &got, &vt, &err);
        ::close(file);
        if (!ok) {
            // the client went away or the disk failed: nothing sensible can follow on this connection
            if (!err.empty())
                std::fprintf(stderr, "%s vpipe-httpd: %s: PUT %s: %s; closing\n", now_text().c_str(), peer_.c_str(),
                             printable(rq.target).c_str(), err.c_str());
            int status = err.rfind("write", 0) == 0 ? 500 : 400;
            simple(status, status == 500 ? "Internal Server Error" : "Bad Request", nullptr, true);
            log_line(rq.method, rq.target, rq.version, status, got, vt.text() + " incomplete");
            return false;
        }
        int status = created ? 201 : 204;
        std::string r = "HTTP/1.1 " + std::to_string(status) + (created ? " Created" : " No Content") +
                        "\r\nServer: vpipe-httpd\r\nDate: " + http_date(time(nullptr)) + "\r\n" +
                        (created ? "Content-Length: 0\r\n" : "") + (keep ? "" : "Connection: close\r\n") + "\r\n";
        bool sent_ok = send_all(fd_, r.data(), r.size()) == 0;
        log_line(rq.method, rq.target, rq.version, status, got, vt.text());
        return sent_ok && keep;
    }

    bool recv_body(int file, uint64_t len, uint64_t* got, VpipeTally* vt, std::string* err) {
        // the bytes that came with the head first
        size_t pre = static_cast<size_t>(std::min<uint64_t>(len, buf_.size()));
        size_t done = 0;
        while (done < pre) {
            ssize_t n = ::pwrite(file, buf_.data() + done, pre - done, static_cast<off_t>(done));
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
                *err = std::string("write: ") + std::strerror(n < 0 ? errno : EIO);
                return false;
            }
            done += static_cast<size_t>(n);
        }
        buf_.erase(0, pre);
        *got = pre;
        switch (g_cfg.mode) {
            case Mode::Rw: {
                if (io_.empty()) io_.resize(kIoChunk);
                while (*got < len) {
                    if (wait_readable(fd_, g_cfg.idle_timeout * 1000) <= 0) {
                        *err = "timeout or error waiting for the body";
                        return false;
                    }
                    size_t want = static_cast<size_t>(std::min<uint64_t>(len - *got, io_.size()));
                    ssize_t n = ::recv(fd_, io_.data(), want, 0);
                    if (n < 0 && errno == EINTR) continue;
                    if (n <= 0) {
                        *err = n < 0 ? std::string("recv: ") + std::strerror(errno) : "client closed before the end of the body";
                        return false;
                    }
                    size_t w = 0;
                    while (w < static_cast<size_t>(n)) {
                        ssize_t k = ::pwrite(file, io_.data() + w, static_cast<size_t>(n) - w, static_cast<off_t>(*got + w));
                        if (k < 0 && errno == EINTR) continue;
                        if (k <= 0) {
                            *err = std::string("write: ") + std::strerror(k < 0 ? errno : EIO);
                            return false;
                        }
                        w += static_cast<size_t>(k);
                    }
                    *got += static_cast<uint64_t>(n);
                }
                return true;
            }
            case Mode::Sendfile: {  // splice: socket -> pipe -> file
                if (pipe_[0] < 0) {
                    if (::pipe2(pipe_, O_CLOEXEC) < 0) {
                        *err = std::string("pipe: ") + std::strerror(errno);
                        return false;
                    }
                    ::fcntl(pipe_[1], F_SETPIPE_SZ, 1 << 20);
                }
                while (*got < len) {
                    size_t want = static_cast<size_t>(std::min<uint64_t>(len - *got, 1 << 20));
                    ssize_t n = ::splice(fd_, nullptr, pipe_[1], nullptr, want, SPLICE_F_MOVE | SPLICE_F_MORE);
                    if (n < 0 && errno == EINTR) continue;
                    if (n <= 0) {
                        *err = n < 0 ? std::string("splice from socket: ") + std::strerror(errno)
                                     : "client closed before the end of the body";
                        return false;
                    }
                    size_t left = static_cast<size_t>(n);
                    while (left > 0) {
                        loff_t o = static_cast<loff_t>(*got);
                        ssize_t k = ::splice(pipe_[0], nullptr, file, &o, left, SPLICE_F_MOVE);
                        if (k < 0 && errno == EINTR) continue;
                        if (k <= 0) {
                            *err = std::string("write (splice to file): ") + std::strerror(k < 0 ? errno : EIO);
                            ::close(pipe_[0]);  // the pipe may hold bytes now: don't reuse it
                            ::close(pipe_[1]);
                            pipe_[0] = pipe_[1] = -1;
                            return false;
                        }
                        left -= static_cast<size_t>(k);
                        *got += static_cast<uint64_t>(k);
                    }
                }
                return true;
            }
            case Mode::Vpipe: {
                while (*got < len) {
                    ssize_t n = vpipe_socket_to_file_fd(fd_, file, static_cast<off_t>(*got), len - *got);
                    vt->add(n);
                    if (n < 0) {
                        *err = std::string("vpipe_socket_to_file_fd: ") + std::strerror(vt->error) + " (" + vt->reason + ")";
                        return false;
                    }
                    if (n == 0) {
                        *err = "client closed before the end of the body";
                        return false;
                    }
                    *got += static_cast<uint64_t>(n);
                }
                return true;
            }
        }
        return false;
    }

    // Closes without losing a response still in flight: stop sending, drain what the client still
    // sends for a moment (closing with unread data would reset the connection), then close.
    void linger_close() {
        if (pipe_[0] >= 0) {
            ::close(pipe_[0]);
            ::close(pipe_[1]);
        }
        ::shutdown(fd_, SHUT_WR);
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
        char tmp[65536];
        while (!g_stop.load() && std::chrono::steady_clock::now() < deadline) {
            if (wait_readable(fd_, 200) <= 0) {
                if (std::chrono::steady_clock::now() >= deadline) break;
                continue;
            }
            ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
        }
        unregister_conn(fd_);
        ::close(fd_);
    }
};

std::string peer_name(const sockaddr_storage& ss) {
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (ss.ss_family == AF_INET) {
        auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        port = ntohs(a->sin_port);
        return std::string(host) + ":" + std::to_string(port);
    }
    auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
    port = ntohs(a->sin6_port);
    return "[" + std::string(host) + "]:" + std::to_string(port);
}

// Listening socket on ADDR:PORT (IPv4 or IPv6 literal, or a resolvable name). -1 with a message.
int listen_on(const std::string& addr, int port, std::string* err) {
    addrinfo hints{}, *res = nullptr;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int g = ::getaddrinfo(addr.c_str(), std::to_string(port).c_str(), &hints, &res);
    if (g != 0) {
        *err = "cannot resolve " + addr + ": " + gai_strerror(g);
        return -1;
    }
    int fd = -1;
    for (addrinfo* ai = res; ai; ai = ai->ai_next) {
        fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) continue;
        int one = 1;
        ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (::bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && ::listen(fd, 256) == 0) break;
        *err = "cannot listen on " + addr + ":" + std::to_string(port) + ": " + std::strerror(errno);
        ::close(fd);
        fd = -1;
    }
    ::freeaddrinfo(res);
    return fd;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{kDescription, "vpipe-httpd"};
    app.formatter(std::make_shared<ManFormatter>());
    app.footer(kFooter);
    app.option_defaults()->group("OPTIONS");
    app.set_help_flag("-h,--help", "print this help and exit");
    std::string mode;
    app.add_option("--mode", mode, "data path: rw, sendfile or vpipe")
        ->required()
        ->check(CLI::IsMember({"rw", "sendfile", "vpipe"}));
    app.add_option("--port", g_cfg.port, "TCP port to listen on (1..65535)")->required()->check(CLI::Range(1, 65535));
    app.add_option("--root", g_cfg.root, "directory to serve (and to store PUT bodies in)")
        ->required()
        ->check(CLI::ExistingDirectory);
    app.add_option("--bind", g_cfg.bind, "address to listen on")->capture_default_str();
    app.add_option("--threads", g_cfg.threads, "at most N connections (one thread each) at a time")
        ->capture_default_str()
        ->check(CLI::Range(1u, 4096u));
    app.add_option("--idle-timeout", g_cfg.idle_timeout, "close a connection idle for SEC seconds")
        ->capture_default_str()
        ->check(CLI::Range(1, 86400));
    app.add_flag("--no-fallback", g_cfg.no_fallback, "vpipe mode: fail (close the connection) instead of copying in the guest");
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        int r = app.exit(e);
        return r == 0 ? 0 : 2;
    }
    g_cfg.mode = mode == "rw" ? Mode::Rw : mode == "sendfile" ? Mode::Sendfile : Mode::Vpipe;
    if (g_cfg.mode == Mode::Vpipe && g_cfg.no_fallback) vpipe_set_fallback(0);

    g_root_fd = ::open(g_cfg.root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (g_root_fd < 0) {
        std::fprintf(stderr, "vpipe-httpd: --root %s: %s\n", g_cfg.root.c_str(), std::strerror(errno));
        return 2;
    }

    // SIGINT/SIGTERM arrive through a signalfd (blocked in every thread); SIGPIPE is ignored.
    ::signal(SIGPIPE, SIG_IGN);
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
    int sfd = ::signalfd(-1, &sigs, SFD_CLOEXEC);

    std::string err;
    int lfd = listen_on(g_cfg.bind, g_cfg.port, &err);
    if (lfd < 0) {
        std::fprintf(stderr, "vpipe-httpd: %s\n", err.c_str());
        return 1;
    }
    std::fprintf(stderr, "%s vpipe-httpd: listening on %s:%d, root %s, mode %s, up to %u connections\n",
                 now_text().c_str(), g_cfg.bind.c_str(), g_cfg.port, g_cfg.root.c_str(), mode_name(g_cfg.mode),
                 g_cfg.threads);

    int signo = 0;
    while (signo == 0) {
        {  // at most --threads connections at a time: wait for a slot
            std::unique_lock lk(g_conn_mu);
            if (g_conns.size() >= g_cfg.threads) {
                g_conn_cv.wait_for(lk, std::chrono::milliseconds(100));
                lk.unlock();
                pollfd p{sfd, POLLIN, 0};
                if (::poll(&p, 1, 0) > 0) {
                    signalfd_siginfo si{};
                    if (::read(sfd, &si, sizeof si) == sizeof si) signo = static_cast<int>(si.ssi_signo);
                }
                continue;
            }
        }
        pollfd p[2] = {{lfd, POLLIN, 0}, {sfd, POLLIN, 0}};
        if (::poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            std::fprintf(stderr, "vpipe-httpd: poll: %s\n", std::strerror(errno));
            return 1;
        }
        if (p[1].revents & POLLIN) {
            signalfd_siginfo si{};
            if (::read(sfd, &si, sizeof si) == sizeof si) signo = static_cast<int>(si.ssi_signo);
            break;
        }
        if (!(p[0].revents & POLLIN)) continue;
        sockaddr_storage ss{};
        socklen_t sl = sizeof ss;
        int cfd = ::accept4(lfd, reinterpret_cast<sockaddr*>(&ss), &sl, SOCK_CLOEXEC);
        if (cfd < 0) {
            if (errno != EINTR && errno != ECONNABORTED && errno != EAGAIN)
                std::fprintf(stderr, "vpipe-httpd: accept: %s\n", std::strerror(errno));
            if (errno == EMFILE || errno == ENFILE) std::this_thread::sleep_for(std::chrono::milliseconds(100));
            continue;
        }
        int one = 1;
        ::setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        register_conn(cfd);
        std::string peer = peer_name(ss);
        try {
            std::thread([cfd, peer] {
                Connection c(cfd, peer);
                c.serve();
            }).detach();
        } catch (const std::system_error& e) {
            std::fprintf(stderr, "vpipe-httpd: cannot start a thread: %s\n", e.what());
            unregister_conn(cfd);
            ::close(cfd);
        }
    }

    // stop: no new connections; wake every connection thread and give them a moment
    g_stop = true;
    ::close(lfd);
    std::fprintf(stderr, "%s vpipe-httpd: %s, stopping\n", now_text().c_str(), strsignal(signo));
    std::unique_lock lk(g_conn_mu);
    for (int fd : g_conns) ::shutdown(fd, SHUT_RDWR);
    bool drained = g_conn_cv.wait_for(lk, std::chrono::seconds(5), [] { return g_conns.empty(); });
    if (!drained) {
        std::fprintf(stderr, "vpipe-httpd: %zu connection(s) still busy; exiting anyway\n", g_conns.size());
        std::fflush(stderr);
        _exit(0);
    }
    return 0;
}
