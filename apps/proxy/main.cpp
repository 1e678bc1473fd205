// vpipe-proxy: a TCP relay. For each accepted client it connects to the backend and relays both
// directions until both have ended, half-closing each direction (shutdown(SHUT_WR)) when its
// source ends. The data path is read+write, splice through a bounded pool of pipes, or vPipe
// socket->socket. A test application: see the --help text.
//
//   main.cpp         command line, start
//   session.*        one connection: backend connect, relay, log line
//   relay_stream.cpp a direction as a byte stream: rw, splice, vPipe in chunks (direction.h)
//   relay_http.*     vpipe mode's http framing: response head + body in one hand-over
//   http_framing.*   HTTP/1 message heads and the request stream's framing
//   pipe_pool.*      splice mode's pipes
#include <cstdio>
#include <string>

#include "common/cli.h"
#include "common/log.h"
#include "common/server.h"
#include "config.h"
#include "pipe_pool.h"
#include "session.h"

namespace {

using namespace vpipe::proxy;

const char* kDescription = R"(NAME
    vpipe-proxy - TCP relay with a classic or a vPipe data path

SYNOPSIS
    vpipe-proxy --mode rw|splice|vpipe --listen PORT --to HOST:PORT [--bind ADDR]
                [--pipes N] [--vpipe-framing http|chunk] [--chunk BYTES] [--vpipe-min BYTES]
                [--vpipe-directions down|up|both] [--no-fallback]

DESCRIPTION
    Accepts TCP connections on ADDR:PORT; for each, connects to HOST:PORT (the backend) and
    relays bytes in both directions until both directions have ended, then closes both
    connections. When one side ends its stream (EOF), the relay half-closes the other side
    (shutdown(SHUT_WR)) and keeps relaying the opposite direction; an error on either side
    aborts both connections. Runs until SIGINT or SIGTERM.

    Each direction runs in its own thread, with blocking sockets. The data path (--mode):
      rw      read() + write() through a 256 KiB buffer.
      splice  splice(2) socket -> pipe -> socket. The pipes (1 MiB each) come from a pool of at
              most --pipes pipes shared by all connections; a direction holds one only while
              moving a burst of bytes (not while waiting for data), so idle connections cost
              none. A pipe left non-empty by an error is closed, not returned to the pool.
      vpipe   vpipe_socket_to_socket_fd() blocks until the length asked for has moved or the
              source ended, and while it runs dom0 owns the connections. So the length must be
              one the stream is known to reach. Two framings (--vpipe-framing):
              http (default): one thread per connection polls both sockets; requests are copied
                in the guest (read/write) while their framing is followed; each response head
                is read in the guest, and a body with a Content-Length of at least --vpipe-min
                bytes is handed to vPipe with exactly that length, the response head (and the
                body bytes that came with it) as the head of the same call
                (vpipe_socket_to_socket_fd_hdtr): head and body leave in one hand-over.
                Smaller bodies are copied with their heads. --vpipe-min defaults to libvpipe's
                offload threshold ($VPIPE_MIN_OFFLOAD, else the configuration, else 256 KiB),
                below which libvpipe would copy in the guest anyway. The call ends with the
                response, so keep-alive connections and the next request work, and the guest
                never touches a socket that dom0 is using. A close-delimited body goes to
                vPipe (with its head) in --chunk pieces until a short count (EOF). Answers to
                HEAD, 1xx, 204 and 304 have no body; a chunked message or anything that is not
                plain HTTP/1 turns the connection into a read/write relay.
              chunk: any TCP protocol. The backend -> client direction runs
                vpipe_socket_to_socket_fd(backend, client, --chunk) in a loop and takes a short
                count as the end of the stream; the client -> backend direction uses
                read()/write() in its own thread (or vPipe too, --vpipe-directions). Right for
                one response per connection that ends with a close; with keep-alive a response
                shorter than --chunk can stall until the backend closes.
              libvpipe offloads to dom0 when it can and falls back to a guest copy otherwise;
              the log says which.

    Logs one line per connection to stderr:
      TIME CLIENT -> BACKEND up=BYTES down=BYTES mode=MODE [vpipe=PATH] ms=T [error: ...]
    up = client -> backend, down = backend -> client; PATH is offloaded, fallback(REASON),
    mixed(...) or failed(...), for the direction(s) vPipe moves.
)";

const char* kFooter = R"(EXIT STATUS
    0  stopped by SIGINT or SIGTERM
    1  runtime failure (e.g. cannot bind the port, cannot resolve the backend)
    2  bad command line

EXAMPLES
    vpipe-proxy --mode splice --listen 9000 --to 10.199.0.12:8080
    vpipe-lab exec vm1 -- vpipe-proxy --mode vpipe --listen 9000 --to 10.199.0.12:8080
    vpipe-lab client -- curl -o /dev/null http://10.199.0.11:9000/big.bin
)";

// HOST:PORT or [V6]:PORT -> host, port. false when malformed.
bool split_host_port(const std::string& s, std::string* host, std::string* port) {
    size_t colon;
    if (!s.empty() && s[0] == '[') {
        size_t rb = s.find(']');
        if (rb == std::string::npos || rb + 1 >= s.size() || s[rb + 1] != ':') return false;
        *host = s.substr(1, rb - 1);
        colon = rb + 1;
    } else {
        colon = s.rfind(':');
        if (colon == std::string::npos || colon == 0) return false;
        *host = s.substr(0, colon);
        if (host->find(':') != std::string::npos) return false;
    }
    *port = s.substr(colon + 1);
    if (port->empty() || port->size() > 5 || port->find_first_not_of("0123456789") != std::string::npos) return false;
    int p = std::stoi(*port);
    return p >= 1 && p <= 65535;
}

void add_vpipe_options(CLI::App* app, std::string* dirs, std::string* framing, CLI::Option** min) {
    app->add_option("--chunk", g_cfg.chunk, "vpipe mode: bytes per vpipe_socket_to_socket_fd call")
        ->capture_default_str()
        ->check(CLI::Range(static_cast<size_t>(1), static_cast<size_t>(1) << 40));
    app->add_option("--vpipe-directions", *dirs,
                    "vpipe chunk framing: which direction(s) vPipe moves: down (backend->client), up, both")
        ->capture_default_str()
        ->check(CLI::IsMember({"down", "up", "both"}));
    app->add_option("--vpipe-framing", *framing,
                    "vpipe mode: http (offload each response body of known length exactly) or chunk "
                    "(--chunk pieces until a short count, one thread per direction)")
        ->capture_default_str()
        ->check(CLI::IsMember({"http", "chunk"}));
    *min = app->add_option("--vpipe-min", g_cfg.vpipe_min,
                           "vpipe http framing: smaller bodies are copied in the guest "
                           "(default: libvpipe's offload threshold)");
    app->add_flag("--no-fallback", g_cfg.no_fallback, "vpipe mode: fail instead of copying in the guest");
}

// Fills g_cfg. -1: go on; else the exit status.
int parse_args(int argc, char** argv) {
    CLI::App app{kDescription, "vpipe-proxy"};
    vpipe::apps::man_style(&app, kFooter, 36);
    vpipe::apps::add_mode_option(&app, &g_cfg.mode_name, {"rw", "splice", "vpipe"});
    app.add_option("--listen", g_cfg.listen_port, "TCP port to accept clients on (1..65535)")
        ->required()
        ->check(CLI::Range(1, 65535));
    app.add_option("--to", g_cfg.to, "the backend, HOST:PORT (or [IPv6]:PORT)")->required();
    vpipe::apps::add_bind_option(&app, &g_cfg.bind);
    app.add_option("--pipes", g_cfg.pipes, "splice mode: size of the pipe pool")
        ->capture_default_str()
        ->check(CLI::Range(1u, 4096u));
    std::string dirs = "down", framing = "http";
    CLI::Option* min = nullptr;
    add_vpipe_options(&app, &dirs, &framing, &min);
    if (int r = vpipe::apps::parse_command_line(&app, argc, argv); r >= 0) return r;
    g_cfg.mode = g_cfg.mode_name == "rw" ? Mode::Rw : g_cfg.mode_name == "splice" ? Mode::Splice : Mode::Vpipe;
    g_cfg.http_framing = framing == "http";
    // http framing offloads responses only
    g_cfg.vpipe_down = g_cfg.http_framing || dirs != "up";
    g_cfg.vpipe_up = !g_cfg.http_framing && dirs != "down";
    if (min->count() == 0) g_cfg.vpipe_min = vpipe_min_offload();  // see Config::vpipe_min
    return -1;
}

// Resolves --to into g_backend. -1: go on; else the exit status.
int resolve_backend() {
    std::string host, port;
    if (!split_host_port(g_cfg.to, &host, &port)) {
        vpipe::apps::log_error("--to: expected HOST:PORT (port 1..65535), got '%s'", g_cfg.to.c_str());
        return 2;
    }
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    int g = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &g_backend);
    if (g != 0) {
        vpipe::apps::log_error("--to: cannot resolve %s: %s", host.c_str(), gai_strerror(g));
        return 1;
    }
    return -1;
}

}  // namespace

int main(int argc, char** argv) {
    vpipe::apps::set_program("vpipe-proxy");
    if (int r = parse_args(argc, argv); r >= 0) return r;
    if (g_cfg.no_fallback) vpipe_set_fallback(0);
    if (int r = resolve_backend(); r >= 0) return r;
    PipePool pool(g_cfg.pipes);
    g_pipes = &pool;
    vpipe::apps::ServerSpec spec;
    spec.bind = g_cfg.bind;
    spec.port = g_cfg.listen_port;
    spec.banner = ", relaying to " + g_cfg.to + ", mode " + g_cfg.mode_name;
    spec.serve = serve;
    int status = vpipe::apps::run_server(spec);
    ::freeaddrinfo(g_backend);
    return status;
}
