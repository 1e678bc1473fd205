// vpipe-proxy: a TCP relay. For each accepted client it connects to the backend and relays both
// directions until both have ended, half-closing each direction (shutdown(SHUT_WR)) when its
// source ends. The data path is read+write, splice through a bounded pool of pipes, or vPipe
// socket->socket. A test application: see the --help text.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>

#include <vpipe/vpipe.h>

namespace {

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
                is read in the guest and forwarded, and a body with a Content-Length of at least
                --vpipe-min bytes is handed to vPipe with exactly that length (smaller bodies
                are copied). The call ends with the response, so keep-alive connections and
                the next request work, and the guest never touches a socket that dom0 is
                using. A close-delimited body goes to vPipe in --chunk pieces until a short
                count (EOF). Answers to HEAD, 1xx, 204 and 304 have no body; a chunked message
                or anything that is not plain HTTP/1 turns the connection into a read/write
                relay.
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

class ManFormatter : public CLI::Formatter {
public:
    ManFormatter() { column_width(36); }
    std::string make_usage(const CLI::App*, std::string) const override { return ""; }
    std::string make_description(const CLI::App* app) const override { return app->get_description() + "\n"; }
};

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
    uint64_t vpipe_min = 64 * 1024;
    bool no_fallback = false;
};

Config g_cfg;
std::atomic<bool> g_stop{false};
addrinfo* g_backend = nullptr;

constexpr size_t kPipeSize = 1 << 20;

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

std::string addr_text(const sockaddr* sa) {
    char host[INET6_ADDRSTRLEN] = "?";
    if (sa->sa_family == AF_INET) {
        auto* a = reinterpret_cast<const sockaddr_in*>(sa);
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        return std::string(host) + ":" + std::to_string(ntohs(a->sin_port));
    }
    auto* a = reinterpret_cast<const sockaddr_in6*>(sa);
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
    return "[" + std::string(host) + "]:" + std::to_string(ntohs(a->sin6_port));
}

// ---------------------------------------------------------------------------------------------
// live connections (a signal shuts them all down)

std::mutex g_conn_mu;
std::condition_variable g_conn_cv;
std::set<int> g_socks;   // every client and backend socket
size_t g_relays = 0;     // relay threads alive

void track(int fd) {
    std::lock_guard lk(g_conn_mu);
    if (g_stop.load()) ::shutdown(fd, SHUT_RDWR);
    g_socks.insert(fd);
}
void untrack_and_close(int fd) {
    {
        std::lock_guard lk(g_conn_mu);
        g_socks.erase(fd);
    }
    ::close(fd);
}

// ---------------------------------------------------------------------------------------------
// the pipe pool of splice mode

class PipePool {
public:
    explicit PipePool(unsigned max) : max_(max) {}
    // A pipe, waiting while all --pipes are in use. {-1,-1} when none can be created.
    std::array<int, 2> acquire() {
        std::unique_lock lk(mu_);
        for (;;) {
            if (!free_.empty()) {
                auto p = free_.back();
                free_.pop_back();
                return p;
            }
            if (created_ < max_) {
                int p[2];
                if (::pipe2(p, O_CLOEXEC) < 0) return {-1, -1};
                ::fcntl(p[1], F_SETPIPE_SZ, static_cast<int>(kPipeSize));  // best effort
                ++created_;
                return {p[0], p[1]};
            }
            cv_.wait(lk);
        }
    }
    // Returns a pipe; a pipe that may still hold bytes is closed instead.
    void release(std::array<int, 2> p, bool empty) {
        std::lock_guard lk(mu_);
        if (empty) {
            free_.push_back(p);
        } else {
            ::close(p[0]);
            ::close(p[1]);
            --created_;
        }
        cv_.notify_one();
    }

private:
    std::mutex mu_;
    std::condition_variable cv_;
    std::vector<std::array<int, 2>> free_;
    unsigned created_ = 0, max_;
};

PipePool* g_pipes = nullptr;

// ---------------------------------------------------------------------------------------------
// one direction

struct Direction {
    int in = -1, out = -1;
    bool use_vpipe = false;
    uint64_t bytes = 0;
    std::string error;  // empty: ended by EOF
    // vPipe outcome
    bool vp_used = false, vp_failed = false;
    uint64_t vp_ops_off = 0, vp_ops_fb = 0, vp_off_bytes = 0, vp_guest_bytes = 0;
    std::string vp_reason;

    std::string vpipe_text() const {
        if (!vp_used) return "-";
        if (vp_failed) return "failed(" + vp_reason + ")";
        if (vp_ops_fb == 0) return "offloaded";
        if (vp_ops_off == 0) return "fallback(" + vp_reason + ")";
        return "mixed(offloaded=" + std::to_string(vp_off_bytes) + " guest=" + std::to_string(vp_guest_bytes) + ": " +
               vp_reason + ")";
    }
};

int wait_readable(int fd) {
    pollfd p{fd, POLLIN, 0};
    for (;;) {
        int r = ::poll(&p, 1, -1);
        if (r < 0 && errno == EINTR) continue;
        return r < 0 ? -1 : 1;
    }
}

int write_all(int fd, const char* p, size_t len) {
    while (len > 0) {
        ssize_t n = ::send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += n;
        len -= static_cast<size_t>(n);
    }
    return 0;
}

// Relays d->in to d->out until EOF (then half-closes out) or an error (then records it).
void relay_rw(Direction* d) {
    std::vector<char> buf(256 * 1024);
    for (;;) {
        ssize_t n = ::recv(d->in, buf.data(), buf.size(), 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            d->error = std::string("recv: ") + std::strerror(errno);
            return;
        }
        if (n == 0) return;
        if (write_all(d->out, buf.data(), static_cast<size_t>(n)) < 0) {
            d->error = std::string("send: ") + std::strerror(errno);
            return;
        }
        d->bytes += static_cast<uint64_t>(n);
    }
}

void relay_splice(Direction* d) {
    for (;;) {
        // wait for data without holding a pipe
        if (wait_readable(d->in) < 0) {
            d->error = std::string("poll: ") + std::strerror(errno);
            return;
        }
        auto p = g_pipes->acquire();
        if (p[0] < 0) {
            d->error = std::string("pipe: ") + std::strerror(errno);
            return;
        }
        ssize_t n = ::splice(d->in, nullptr, p[1], nullptr, kPipeSize, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
            g_pipes->release(p, true);
            continue;
        }
        if (n <= 0) {
            g_pipes->release(p, true);
            if (n < 0) d->error = std::string("splice from socket: ") + std::strerror(errno);
            return;
        }
        size_t left = static_cast<size_t>(n);
        while (left > 0) {
            ssize_t k = ::splice(p[0], nullptr, d->out, nullptr, left, SPLICE_F_MOVE);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) {
                d->error = std::string("splice to socket: ") + std::strerror(k < 0 ? errno : EPIPE);
                g_pipes->release(p, false);
                return;
            }
            left -= static_cast<size_t>(k);
            d->bytes += static_cast<uint64_t>(k);
        }
        g_pipes->release(p, true);
    }
}

bool account_vpipe(Direction* d, ssize_t n, int e);

void relay_vpipe(Direction* d) {
    for (;;) {
        ssize_t n = vpipe_socket_to_socket_fd(d->in, d->out, g_cfg.chunk);
        if (!account_vpipe(d, n, errno)) return;
        if (static_cast<size_t>(n) < g_cfg.chunk) return;  // short count: the source ended
    }
}

// Accounts one vpipe call in d. false when it failed (d->error set).
bool account_vpipe(Direction* d, ssize_t n, int e) {
    vpipe_result r{};
    vpipe_last_result(&r);
    d->vp_used = true;
    if (n < 0) {
        d->vp_failed = true;
        d->vp_reason = std::string(std::strerror(e)) + ": " + (r.reason ? r.reason : "");
        d->error = "vpipe_socket_to_socket_fd: " + d->vp_reason;
        return false;
    }
    d->bytes += static_cast<uint64_t>(n);
    if (n > 0) {
        d->vp_off_bytes += r.offloaded;
        d->vp_guest_bytes += r.guest_copied;
        if (r.path == VPIPE_RESULT_FALLBACK) {
            d->vp_ops_fb++;
            if (r.reason && *r.reason) d->vp_reason = r.reason;
        } else {
            d->vp_ops_off++;
        }
    }
    return true;
}

// HTTP/1 framing of one direction, enough to know where each message body ends.
struct Framer {
    enum State { Head, Body, UntilEof, Opaque } st = Head;
    std::string head;        // head bytes collected so far (a copy of what was forwarded, up; or held back, down)
    uint64_t body_left = 0;  // Body: bytes of the current body still to come

    // Parses a complete head (ending in CRLFCRLF). *status (responses) or *method (requests),
    // *len = Content-Length or -1, *te = Transfer-Encoding present. false: not HTTP/1.
    static bool parse(const std::string& h, bool response, int* status, std::string* method, int64_t* len, bool* te) {
        size_t eol = h.find("\r\n");
        std::string line = h.substr(0, eol);
        *len = -1;
        *te = false;
        if (response) {
            if (line.compare(0, 7, "HTTP/1.") != 0 || line.size() < 12) return false;
            *status = std::atoi(line.c_str() + 9);
            if (*status < 100 || *status > 999) return false;
        } else {
            size_t sp = line.find(' ');
            if (sp == std::string::npos || line.find(" HTTP/1.") == std::string::npos) return false;
            *method = line.substr(0, sp);
        }
        size_t pos = eol + 2;
        while (pos < h.size()) {
            size_t e = h.find("\r\n", pos);
            if (e == std::string::npos || e == pos) break;
            std::string l = h.substr(pos, e - pos);
            pos = e + 2;
            size_t colon = l.find(':');
            if (colon == std::string::npos) return false;
            std::string name = l.substr(0, colon);
            for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
            std::string v = l.substr(colon + 1);
            while (!v.empty() && (v[0] == ' ' || v[0] == '\t')) v.erase(0, 1);
            while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.pop_back();
            if (name == "transfer-encoding") *te = true;
            if (name == "content-length") {
                if (v.empty() || v.size() > 18 || v.find_first_not_of("0123456789") != std::string::npos) return false;
                int64_t n = std::stoll(v);
                if (*len >= 0 && *len != n) return false;
                *len = n;
            }
        }
        return true;
    }
};

// vpipe mode with HTTP framing: one thread, poll() on both sockets. Requests (client -> backend)
// are copied in the guest; each response head is read in the guest, and a body of a known length
// of at least --vpipe-min bytes is handed to vpipe_socket_to_socket_fd with exactly that length,
// so the call ends when the response does (keep-alive works) and neither socket is touched by
// the guest while dom0 owns the transfer. A close-delimited body goes in --chunk pieces until a
// short count (EOF). Anything that is not plain HTTP/1 (chunked, a parse failure, non-HTTP
// bytes) turns the connection into a plain relay.
void relay_vpipe_http(int cfd, int bfd, Direction* up, Direction* down) {
    std::vector<char> buf(256 * 1024);
    Framer rq, rs;
    std::vector<bool> pending_head;  // per request sent and not yet answered: was it HEAD?
    bool up_open = true, down_open = true, opaque = false;
    auto abort_both = [&] {
        ::shutdown(cfd, SHUT_RDWR);
        ::shutdown(bfd, SHUT_RDWR);
        up_open = down_open = false;
    };
    auto go_opaque = [&] {
        opaque = true;
        rq.st = rs.st = Framer::Opaque;
        if (!rs.head.empty()) {  // release what was held back
            if (write_all(cfd, rs.head.data(), rs.head.size()) < 0) down->error = std::string("send: ") + std::strerror(errno);
            down->bytes += rs.head.size();
            rs.head.clear();
        }
    };
    while ((up_open || down_open) && up->error.empty() && down->error.empty()) {
        pollfd p[2] = {{up_open ? cfd : -1, POLLIN, 0}, {down_open ? bfd : -1, POLLIN, 0}};
        if (::poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            up->error = std::string("poll: ") + std::strerror(errno);
            break;
        }
        if (up_open && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t n = ::recv(cfd, buf.data(), buf.size(), MSG_DONTWAIT);
            if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
            } else if (n < 0) {
                up->error = std::string("recv: ") + std::strerror(errno);
                break;
            } else if (n == 0) {
                ::shutdown(bfd, SHUT_WR);
                up_open = false;
            } else {
                if (write_all(bfd, buf.data(), static_cast<size_t>(n)) < 0) {
                    up->error = std::string("send: ") + std::strerror(errno);
                    break;
                }
                up->bytes += static_cast<uint64_t>(n);
                // follow the request framing
                size_t i = 0;
                while (!opaque && i < static_cast<size_t>(n)) {
                    if (rq.st == Framer::Body) {
                        uint64_t k = std::min<uint64_t>(rq.body_left, static_cast<uint64_t>(n) - i);
                        rq.body_left -= k;
                        i += k;
                        if (rq.body_left == 0) rq.st = Framer::Head;
                        continue;
                    }
                    rq.head.push_back(buf[i++]);
                    if (rq.head.size() > 65536) {
                        go_opaque();
                        break;
                    }
                    if (rq.head.size() >= 4 && rq.head.compare(rq.head.size() - 4, 4, "\r\n\r\n") == 0) {
                        int st;
                        std::string method;
                        int64_t len;
                        bool te;
                        if (!Framer::parse(rq.head, false, &st, &method, &len, &te) || te) {
                            go_opaque();
                            break;
                        }
                        pending_head.push_back(method == "HEAD");
                        rq.head.clear();
                        if (len > 0) {
                            rq.st = Framer::Body;
                            rq.body_left = static_cast<uint64_t>(len);
                        }
                    }
                }
            }
        }
        if (!down_open || !(p[1].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        // backend -> client
        if (opaque || rs.st == Framer::Body || rs.st == Framer::UntilEof) {
            size_t want = buf.size();
            if (!opaque && rs.st == Framer::Body) want = static_cast<size_t>(std::min<uint64_t>(want, rs.body_left));
            ssize_t n = ::recv(bfd, buf.data(), want, MSG_DONTWAIT);
            if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
            if (n < 0) {
                down->error = std::string("recv: ") + std::strerror(errno);
                break;
            }
            if (n == 0) {
                ::shutdown(cfd, SHUT_WR);
                down_open = false;
                continue;
            }
            if (write_all(cfd, buf.data(), static_cast<size_t>(n)) < 0) {
                down->error = std::string("send: ") + std::strerror(errno);
                break;
            }
            down->bytes += static_cast<uint64_t>(n);
            if (!opaque && rs.st == Framer::Body && (rs.body_left -= static_cast<uint64_t>(n)) == 0) rs.st = Framer::Head;
            continue;
        }
        // a response head: collect it (held back), then forward it and deal with the body
        ssize_t n = ::recv(bfd, buf.data(), buf.size(), MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n < 0) {
            down->error = std::string("recv: ") + std::strerror(errno);
            break;
        }
        if (n == 0) {
            go_opaque();
            ::shutdown(cfd, SHUT_WR);
            down_open = false;
            continue;
        }
        rs.head.append(buf.data(), static_cast<size_t>(n));
        for (;;) {  // there may be several (small) responses in what arrived
            size_t end = rs.head.find("\r\n\r\n");
            if (end == std::string::npos) {
                if (rs.head.size() > 65536 || (rs.head.size() >= 7 && rs.head.compare(0, 7, "HTTP/1.") != 0)) go_opaque();
                break;
            }
            std::string h = rs.head.substr(0, end + 4);
            int status = 0;
            std::string unused;
            int64_t len;
            bool te;
            if (!Framer::parse(h, true, &status, &unused, &len, &te) || te || pending_head.empty()) {
                go_opaque();
                break;
            }
            bool head_req = pending_head.front();
            if (status >= 200) pending_head.erase(pending_head.begin());
            // body length: none for 1xx/204/304 and answers to HEAD; else Content-Length, else until EOF
            int64_t body = (status < 200 || status == 204 || status == 304 || head_req) ? 0 : len;
            if (write_all(cfd, h.data(), h.size()) < 0) {
                down->error = std::string("send: ") + std::strerror(errno);
                break;
            }
            down->bytes += h.size();
            rs.head.erase(0, h.size());
            if (body == 0) continue;
            // body bytes that came with the head
            uint64_t have = body < 0 ? rs.head.size() : std::min<uint64_t>(rs.head.size(), static_cast<uint64_t>(body));
            if (have > 0) {
                if (write_all(cfd, rs.head.data(), static_cast<size_t>(have)) < 0) {
                    down->error = std::string("send: ") + std::strerror(errno);
                    break;
                }
                down->bytes += have;
                rs.head.erase(0, static_cast<size_t>(have));
            }
            if (body < 0) {  // close-delimited: vPipe in chunks until EOF
                for (;;) {
                    ssize_t k = vpipe_socket_to_socket_fd(bfd, cfd, g_cfg.chunk);
                    if (!account_vpipe(down, k, errno)) break;
                    if (static_cast<size_t>(k) < g_cfg.chunk) break;
                }
                if (down->error.empty()) ::shutdown(cfd, SHUT_WR);
                down_open = false;
                break;
            }
            uint64_t left = static_cast<uint64_t>(body) - have;
            if (left == 0) continue;
            if (left < g_cfg.vpipe_min) {  // small: not worth a hand-over
                rs.st = Framer::Body;
                rs.body_left = left;
                break;
            }
            while (left > 0) {
                ssize_t k = vpipe_socket_to_socket_fd(bfd, cfd, static_cast<size_t>(left));
                if (!account_vpipe(down, k, errno)) break;
                if (k == 0) {
                    down->error = "the backend closed in the middle of a body";
                    break;
                }
                left -= static_cast<uint64_t>(k);
            }
            break;  // nothing can be left in rs.head: it held at most the start of this body
        }
    }
    if (!up->error.empty() || !down->error.empty()) abort_both();
}

void run_direction(Direction* d) {
    if (g_cfg.mode == Mode::Vpipe && d->use_vpipe) relay_vpipe(d);
    else if (g_cfg.mode == Mode::Splice) relay_splice(d);
    else relay_rw(d);
    if (d->error.empty()) {
        ::shutdown(d->out, SHUT_WR);  // pass the EOF on
    } else {
        // abort the whole connection: wakes the other direction too
        ::shutdown(d->in, SHUT_RDWR);
        ::shutdown(d->out, SHUT_RDWR);
    }
}

// Connects to the backend; -1 with *err set.
int connect_backend(std::string* err) {
    for (addrinfo* ai = g_backend; ai; ai = ai->ai_next) {
        int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            *err = std::strerror(errno);
            continue;
        }
        track(fd);
        if (::connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) return fd;
        *err = std::strerror(errno);
        untrack_and_close(fd);
    }
    return -1;
}

void serve(int cfd, std::string peer) {
    auto t0 = std::chrono::steady_clock::now();
    std::string err;
    int bfd = connect_backend(&err);
    std::string line = now_text() + " " + peer + " -> " + g_cfg.to;
    if (bfd < 0) {
        std::fprintf(stderr, "%s up=0 down=0 mode=%s error: cannot connect to the backend: %s\n", line.c_str(),
                     g_cfg.mode_name.c_str(), err.c_str());
        untrack_and_close(cfd);
        return;
    }
    int one = 1;
    ::setsockopt(bfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    ::setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    Direction up, down;
    up.in = cfd;
    up.out = bfd;
    up.use_vpipe = g_cfg.vpipe_up;
    down.in = bfd;
    down.out = cfd;
    down.use_vpipe = g_cfg.vpipe_down;
    std::thread t;
    if (g_cfg.mode == Mode::Vpipe && g_cfg.http_framing) {
        relay_vpipe_http(cfd, bfd, &up, &down);
    } else try {
        t = std::thread(run_direction, &up);
    } catch (const std::system_error& e) {
        up.error = std::string("cannot start a thread: ") + e.what();
    }
    if (t.joinable()) {
        run_direction(&down);
        t.join();
    }
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    line += " up=" + std::to_string(up.bytes) + " down=" + std::to_string(down.bytes) + " mode=" + g_cfg.mode_name;
    if (g_cfg.mode == Mode::Vpipe) {
        if (g_cfg.vpipe_down && g_cfg.vpipe_up)
            line += " vpipe=down:" + down.vpipe_text() + ",up:" + up.vpipe_text();
        else
            line += " vpipe=" + (g_cfg.vpipe_down ? down.vpipe_text() : up.vpipe_text());
    }
    char t_ms[32];
    std::snprintf(t_ms, sizeof t_ms, " ms=%.1f", ms);
    line += t_ms;
    if (!up.error.empty()) line += " error: up: " + up.error;
    if (!down.error.empty()) line += " error: down: " + down.error;
    line += "\n";
    std::fputs(line.c_str(), stderr);
    untrack_and_close(bfd);
    untrack_and_close(cfd);
}

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

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{kDescription, "vpipe-proxy"};
    app.formatter(std::make_shared<ManFormatter>());
    app.footer(kFooter);
    app.option_defaults()->group("OPTIONS");
    app.set_help_flag("-h,--help", "print this help and exit");
    std::string dirs = "down";
    app.add_option("--mode", g_cfg.mode_name, "data path: rw, splice or vpipe")
        ->required()
        ->check(CLI::IsMember({"rw", "splice", "vpipe"}));
    app.add_option("--listen", g_cfg.listen_port, "TCP port to accept clients on (1..65535)")
        ->required()
        ->check(CLI::Range(1, 65535));
    app.add_option("--to", g_cfg.to, "the backend, HOST:PORT (or [IPv6]:PORT)")->required();
    app.add_option("--bind", g_cfg.bind, "address to listen on")->capture_default_str();
    app.add_option("--pipes", g_cfg.pipes, "splice mode: size of the pipe pool")
        ->capture_default_str()
        ->check(CLI::Range(1u, 4096u));
    app.add_option("--chunk", g_cfg.chunk, "vpipe mode: bytes per vpipe_socket_to_socket_fd call")
        ->capture_default_str()
        ->check(CLI::Range(static_cast<size_t>(1), static_cast<size_t>(1) << 40));
    app.add_option("--vpipe-directions", dirs,
                   "vpipe chunk framing: which direction(s) vPipe moves: down (backend->client), up, both")
        ->capture_default_str()
        ->check(CLI::IsMember({"down", "up", "both"}));
    std::string framing = "http";
    app.add_option("--vpipe-framing", framing,
                   "vpipe mode: http (offload each response body of known length exactly) or chunk "
                   "(--chunk pieces until a short count, one thread per direction)")
        ->capture_default_str()
        ->check(CLI::IsMember({"http", "chunk"}));
    app.add_option("--vpipe-min", g_cfg.vpipe_min, "vpipe http framing: smaller bodies are copied in the guest")
        ->capture_default_str();
    app.add_flag("--no-fallback", g_cfg.no_fallback, "vpipe mode: fail instead of copying in the guest");
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        int r = app.exit(e);
        return r == 0 ? 0 : 2;
    }
    g_cfg.mode = g_cfg.mode_name == "rw" ? Mode::Rw : g_cfg.mode_name == "splice" ? Mode::Splice : Mode::Vpipe;
    g_cfg.vpipe_down = dirs != "up";
    g_cfg.vpipe_up = dirs != "down";
    g_cfg.http_framing = framing == "http";
    if (g_cfg.http_framing) {  // only responses are offloaded
        g_cfg.vpipe_down = true;
        g_cfg.vpipe_up = false;
    }
    if (g_cfg.no_fallback) vpipe_set_fallback(0);

    std::string host, port;
    if (!split_host_port(g_cfg.to, &host, &port)) {
        std::fprintf(stderr, "vpipe-proxy: --to: expected HOST:PORT (port 1..65535), got '%s'\n", g_cfg.to.c_str());
        return 2;
    }
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    int g = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &g_backend);
    if (g != 0) {
        std::fprintf(stderr, "vpipe-proxy: --to: cannot resolve %s: %s\n", host.c_str(), gai_strerror(g));
        return 1;
    }
    PipePool pool(g_cfg.pipes);
    g_pipes = &pool;

    ::signal(SIGPIPE, SIG_IGN);
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
    int sfd = ::signalfd(-1, &sigs, SFD_CLOEXEC);

    std::string err;
    int lfd = listen_on(g_cfg.bind, g_cfg.listen_port, &err);
    if (lfd < 0) {
        std::fprintf(stderr, "vpipe-proxy: %s\n", err.c_str());
        return 1;
    }
    std::fprintf(stderr, "%s vpipe-proxy: listening on %s:%d, relaying to %s, mode %s\n", now_text().c_str(),
                 g_cfg.bind.c_str(), g_cfg.listen_port, g_cfg.to.c_str(), g_cfg.mode_name.c_str());

    int signo = 0;
    while (signo == 0) {
        pollfd p[2] = {{lfd, POLLIN, 0}, {sfd, POLLIN, 0}};
        if (::poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            std::fprintf(stderr, "vpipe-proxy: poll: %s\n", std::strerror(errno));
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
                std::fprintf(stderr, "vpipe-proxy: accept: %s\n", std::strerror(errno));
            if (errno == EMFILE || errno == ENFILE) std::this_thread::sleep_for(std::chrono::milliseconds(100));
            continue;
        }
        track(cfd);
        std::string peer = addr_text(reinterpret_cast<sockaddr*>(&ss));
        {
            std::lock_guard lk(g_conn_mu);
            ++g_relays;
        }
        try {
            std::thread([cfd, peer] {
                serve(cfd, peer);
                std::lock_guard lk(g_conn_mu);
                --g_relays;
                g_conn_cv.notify_all();
            }).detach();
        } catch (const std::system_error& e) {
            std::fprintf(stderr, "vpipe-proxy: cannot start a thread: %s\n", e.what());
            untrack_and_close(cfd);
            std::lock_guard lk(g_conn_mu);
            --g_relays;
        }
    }

    g_stop = true;
    ::close(lfd);
    std::fprintf(stderr, "%s vpipe-proxy: %s, stopping\n", now_text().c_str(), strsignal(signo));
    std::unique_lock lk(g_conn_mu);
    for (int fd : g_socks) ::shutdown(fd, SHUT_RDWR);
    bool drained = g_conn_cv.wait_for(lk, std::chrono::seconds(5), [] { return g_relays == 0; });
    if (!drained) {
        std::fprintf(stderr, "vpipe-proxy: %zu connection(s) still busy; exiting anyway\n", g_relays);
        std::fflush(stderr);
        _exit(0);
    }
    ::freeaddrinfo(g_backend);
    return 0;
}
