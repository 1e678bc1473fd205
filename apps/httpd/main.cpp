// vpipe-httpd: a small static HTTP/1.1 server (GET, HEAD, PUT, single byte ranges, keep-alive)
// whose bodies move either the classic way (read+write, sendfile/splice) or through vPipe
// (vpipe_file_to_socket_fd_hdtr / vpipe_socket_to_file_fd). One thread per connection, blocking
// sockets. A test application: see the --help text.
//
//   main.cpp        command line, start
//   connection.*    a connection's state machine: heads, dispatch, errors, closing
//   handlers.cpp    GET/HEAD and PUT
//   request.*       request parsing, framing, target -> path, Range
//   response.*      response heads
//   files.*         opening below --root
//   body_io.h       the data path per --mode: body_out.cpp (GET), body_in.cpp (PUT)
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/cli.h"
#include "common/log.h"
#include "common/server.h"
#include "config.h"
#include "connection.h"

namespace {

using namespace vpipe::httpd;

const char* kDescription = R"(NAME
    vpipe-httpd - static HTTP/1.1 file server with a classic or a vPipe data path

SYNOPSIS
    vpipe-httpd --mode rw|sendfile|vpipe --port PORT --root DIR [--bind ADDR] [--threads N]
                [--idle-timeout SEC] [--no-fallback] [--fsync]

DESCRIPTION
    Serves the regular files under DIR over HTTP/1.1 until SIGINT or SIGTERM.

    GET and HEAD return a file (200), or one byte range of it when the request has
    `Range: bytes=A-B`, `bytes=A-` or `bytes=-N` (206 with Content-Range; 416 with
    `Content-Range: bytes */SIZE` when the range starts past the end). Multiple or malformed
    ranges are ignored (200 with the whole file), as RFC 9110 allows.
    PUT with a Content-Length stores the body at DIR/PATH: 201 when the file was created, 204
    when an existing file was replaced (truncated first). Parent directories are not created.
    `Expect: 100-continue` is answered. Chunked request bodies are refused (411/501).
    With --fsync the body is fdatasync()ed before the answer (any mode: after a vPipe
    hand-over the guest's flush reaches the disk image dom0 wrote to), so a 201/204 means the
    bytes are durable; a failed flush answers 500.

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
      vpipe     GET: the response head and the body in one hand-over:
                vpipe_file_to_socket_fd_hdtr(file, socket, offset, length, head), going on
                without the head after a short count; -1 closes the connection (logged).
                A body shorter than libvpipe's offload threshold ($VPIPE_MIN_OFFLOAD) takes
                libvpipe's classic path (the head, then a copy), logged as a fallback. Answers
                without a body (HEAD, empty files) are send()ed.
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

// Fills g_cfg. -1: go on; else the exit status.
int parse_args(int argc, char** argv) {
    CLI::App app{kDescription, "vpipe-httpd"};
    vpipe::apps::man_style(&app, kFooter, 30);
    std::string mode;
    vpipe::apps::add_mode_option(&app, &mode, {"rw", "sendfile", "vpipe"});
    app.add_option("--port", g_cfg.port, "TCP port to listen on (1..65535)")->required()->check(CLI::Range(1, 65535));
    app.add_option("--root", g_cfg.root, "directory to serve (and to store PUT bodies in)")
        ->required()
        ->check(CLI::ExistingDirectory);
    vpipe::apps::add_bind_option(&app, &g_cfg.bind);
    app.add_option("--threads", g_cfg.threads, "at most N connections (one thread each) at a time")
        ->capture_default_str()
        ->check(CLI::Range(1u, 4096u));
    app.add_option("--idle-timeout", g_cfg.idle_timeout, "close a connection idle for SEC seconds")
        ->capture_default_str()
        ->check(CLI::Range(1, 86400));
    app.add_flag("--no-fallback", g_cfg.no_fallback, "vpipe mode: fail (close the connection) instead of copying in the guest");
    app.add_flag("--fsync", g_cfg.fsync, "PUT: fdatasync() the body before answering (durable uploads)");
    if (int r = vpipe::apps::parse_command_line(&app, argc, argv); r >= 0) return r;
    g_cfg.mode = mode == "rw" ? Mode::Rw : mode == "sendfile" ? Mode::Sendfile : Mode::Vpipe;
    return -1;
}

}  // namespace

int main(int argc, char** argv) {
    vpipe::apps::set_program("vpipe-httpd");
    if (int r = parse_args(argc, argv); r >= 0) return r;
    if (g_cfg.mode == Mode::Vpipe && g_cfg.no_fallback) vpipe_set_fallback(0);
    g_root_fd = ::open(g_cfg.root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (g_root_fd < 0) {
        vpipe::apps::log_error("--root %s: %s", g_cfg.root.c_str(), std::strerror(errno));
        return 2;
    }
    vpipe::apps::ServerSpec spec;
    spec.bind = g_cfg.bind;
    spec.port = g_cfg.port;
    spec.max_connections = g_cfg.threads;
    spec.banner = ", root " + g_cfg.root + ", mode " + mode_name(g_cfg.mode) + ", up to " +
                  std::to_string(g_cfg.threads) + " connections";
    spec.serve = [](int fd, const std::string& peer) { Connection(fd, peer).serve(); };
    return vpipe::apps::run_server(spec);
}
