// Socket operations end to end in the lab (vpipe-lab up --vms 2): an application in vm1 (this
// binary re-executed under `vpipe-lab exec vm1`) uses libvpipe on real TCP connections with a
// client in vpl-client (this binary under `vpipe-lab client`). The connection really moves to
// dom0's stack (shadow socket + steering) and back. Every byte is checked against a
// position-addressable pseudo-random stream; after every test the engine must report 0 shadow
// sockets / steered flows and dom0's nft table no flow element.
//
// Helper modes: argv[1] == "--helper", argv[2] = mode, then key=value arguments.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sendfile.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <vpipe/vpipe.h>

#include "support/lab_agent.h"

#include "support/lab_fixture.h"
#include "support/lab_sockets.h"

namespace {

using namespace vpipe::labtest;
using Clock = std::chrono::steady_clock;
std::string g_self;  // /proc/self/exe at start
const std::string kDom0Ip = "10.199.0.254";  // xenbr0 in vpl-dom0: the engine's own address

// the byte streams: fill_pattern / check_pattern (support/lab_fixture.h)

// Receives exactly n stream bytes and checks them; returns the mismatch index or -1 (-2 EOF)
long long recv_check(int fd, uint64_t seed, uint64_t pos, uint64_t n) {
    std::vector<uint8_t> buf(1 << 20);
    uint64_t got = 0;
    while (got < n) {
        ssize_t r = recv(fd, buf.data(), std::min<uint64_t>(buf.size(), n - got), 0);
        if (r <= 0) return -2;
        long long bad = check_pattern(seed, pos + got, buf.data(), static_cast<size_t>(r));
        if (bad >= 0) return static_cast<long long>(got) + bad;
        got += static_cast<uint64_t>(r);
    }
    return -1;
}
bool send_stream(int fd, uint64_t seed, uint64_t pos, uint64_t n) {
    std::vector<uint8_t> buf(1 << 20);
    for (uint64_t done = 0; done < n;) {
        size_t k = static_cast<size_t>(std::min<uint64_t>(buf.size(), n - done));
        fill_pattern(seed, pos + done, buf.data(), k);
        if (!write_all(fd, buf.data(), k)) return false;
        done += k;
    }
    return true;
}

// A sender that overruns the receiver's advertised window. Before every 64 KiB it pretends
// (TCP_REPAIR_WINDOW) that the peer advertised 16 MiB, so its own kernel transmits past the real
// right edge until the next ACK corrects the window. Linux queues a segment that starts inside
// the window whole, so the receiver is offered more than it advertised; only its receive buffer
// bounds what it takes. Counts the chunks after which the first unsent byte lay past the edge
// the peer had advertised when the window was forged, and the largest such overrun.
struct Overrun {
    uint64_t times = 0, max_bytes = 0;
};
bool seq_state(int fd, uint32_t* una, uint32_t* nxt) {
    int q = TCP_SEND_QUEUE, none = TCP_NO_QUEUE, outq = 0, notsent = 0;
    uint32_t write_seq = 0;
    socklen_t sl = sizeof(write_seq);
    bool ok = setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, &q, sizeof(q)) == 0 &&
              getsockopt(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, &write_seq, &sl) == 0 &&
              setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, &none, sizeof(none)) == 0 &&
              ioctl(fd, SIOCOUTQ, &outq) == 0 && ioctl(fd, SIOCOUTQNSD, &notsent) == 0;
    *una = write_seq - static_cast<uint32_t>(outq);
    *nxt = write_seq - static_cast<uint32_t>(notsent);
    return ok;
}
bool send_stream_overrunning(int fd, uint64_t seed, uint64_t n, Overrun* o) {
    const int on = 1, off_no_probe = -1;
    std::vector<uint8_t> buf(64 << 10);
    for (uint64_t done = 0; done < n;) {
        uint32_t una = 0, nxt = 0, edge = 0;
        tcp_repair_window w{};
        socklen_t wl = sizeof(w);
        if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR, &on, sizeof(on)) != 0) return false;
        bool ok = seq_state(fd, &una, &nxt) && getsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &w, &wl) == 0;
        edge = una + w.snd_wnd;
        w.snd_wnd = w.max_window = std::max<uint32_t>(w.max_window, 16u << 20);
        ok = ok && setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &w, sizeof(w)) == 0;
        if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR, &off_no_probe, sizeof(off_no_probe)) != 0 || !ok) return false;
        size_t k = static_cast<size_t>(std::min<uint64_t>(buf.size(), n - done));
        fill_pattern(seed, done, buf.data(), k);
        if (!write_all(fd, buf.data(), k)) return false;
        done += k;
        if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR, &on, sizeof(on)) != 0) return false;
        ok = seq_state(fd, &una, &nxt);
        if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR, &off_no_probe, sizeof(off_no_probe)) != 0 || !ok) return false;
        const int32_t past = static_cast<int32_t>(nxt - edge);
        if (past > 0) {
            o->times++;
            o->max_bytes = std::max<uint64_t>(o->max_bytes, static_cast<uint64_t>(past));
        }
    }
    return true;
}
void print_overrun(int fd, const Overrun& o) {
    tcp_info ti{};
    socklen_t tl = sizeof(ti);
    getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &tl);
    printf("OVERRUN times=%llu max=%llu retrans=%u\n", static_cast<unsigned long long>(o.times),
           static_cast<unsigned long long>(o.max_bytes), ti.tcpi_total_retrans);
    fflush(stdout);
}

double pct(std::vector<double> v, double q) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5))];
}

// ---- helpers running inside the lab ------------------------------------------------------------

// vm: serves "GET off len bare" lines with header (send) + body (vpipe) + trailer (send).
int vm_serve_file(const std::map<std::string, std::string>& a) {
    const std::string file = a.at("file");
    const bool plain = num(a, "plain") != 0;  // sendfile baseline instead of vPipe
    int l = listen_on(kVm1Ip, static_cast<int>(num(a, "port")));
    printf("READY\n");
    fflush(stdout);
    int s = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    int f = open(file.c_str(), O_RDONLY | O_CLOEXEC);
    std::vector<double> lat;
    uint64_t total = 0;
    auto t0 = Clock::now();
    for (;;) {
        std::string line = read_line(s);
        if (line == "EOF" || line == "QUIT") break;
        unsigned long long off = 0, len = 0;
        int bare = 0;
        sscanf(line.c_str(), "GET %llu %llu %d", &off, &len, &bare);
        if (!bare) {
            std::string h = "H " + std::to_string(len) + "\n";
            write_all(s, h.data(), h.size());
        }
        uint64_t done = 0;
        int err = 0, calls = 0;
        auto a0 = Clock::now();
        while (done < len) {
            ++calls;
            ssize_t n;
            if (plain) {
                off_t o = static_cast<off_t>(off + done);
                n = sendfile(s, f, &o, len - done);
            } else {
                n = vpipe_file_to_socket_fd(f, s, static_cast<off_t>(off + done), len - done);
            }
            if (n < 0) {
                err = errno;
                break;
            }
            if (n == 0) break;
            done += static_cast<uint64_t>(n);
        }
        lat.push_back(std::chrono::duration<double, std::micro>(Clock::now() - a0).count());
        total += done;
        vpipe_result res{};
        vpipe_last_result(&res);
        int reuse = -1;  // inherited from the listener; a restored connection must keep it
        socklen_t rl = sizeof(reuse);
        getsockopt(s, SOL_SOCKET, SO_REUSEADDR, &reuse, &rl);
        printf("RESULT moved=%llu err=%d path=%d offloaded=%llu calls=%d reuseaddr=%d\n",
               static_cast<unsigned long long>(done), err, res.path, static_cast<unsigned long long>(res.offloaded),
               calls, reuse);
        fflush(stdout);
        if (err) break;
        if (!bare) write_all(s, "T\n", 2);
    }
    double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    printf("LATENCY n=%zu p50=%.1f p99=%.1f total=%llu secs=%.4f\n", lat.size(), pct(lat, 0.5), pct(lat, 0.99),
           static_cast<unsigned long long>(total), secs);
    fflush(stdout);
    close(s);
    close(l);
    return 0;
}

// vm: receives `len` bytes into `file` at offset 0 with vpipe_socket_to_file_fd, after waiting
// until `unread` bytes sit unread in the receive queue; then answers "OK <moved>".
int vm_recv_file(const std::map<std::string, std::string>& a) {
    const uint64_t len = num(a, "len"), unread = num(a, "unread");
    int l = listen_on(kVm1Ip, static_cast<int>(num(a, "port")));
    printf("READY\n");
    fflush(stdout);
    int s = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    int f = open(a.at("file").c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    for (int i = 0; i < 5000 && unread; ++i) {
        int q = 0;
        ioctl(s, FIONREAD, &q);
        if (static_cast<uint64_t>(q) >= unread) break;
        usleep(1000);
    }
    uint64_t done = 0, offl = 0;
    int err = 0, calls = 0;
    while (done < len) {
        ssize_t n = vpipe_socket_to_file_fd(s, f, static_cast<off_t>(done), len - done);
        ++calls;
        if (n < 0) {
            err = errno;
            break;
        }
        if (n == 0) break;
        vpipe_result res{};
        vpipe_last_result(&res);
        offl += res.offloaded;
        done += static_cast<uint64_t>(n);
    }
    fsync(f);
    printf("RESULT moved=%llu err=%d offloaded=%llu calls=%d\n", static_cast<unsigned long long>(done), err,
           static_cast<unsigned long long>(offl), calls);
    fflush(stdout);
    std::string ok = "OK " + std::to_string(done) + "\n";
    write_all(s, ok.data(), ok.size());
    std::string bye = read_line(s);  // the connection still works both ways
    printf("BYE %s\n", bye.c_str());
    fflush(stdout);
    close(s);
    return 0;
}

// vm: relays `len` bytes from the client's connection (port) to the client's listener (to).
int vm_relay(const std::map<std::string, std::string>& a) {
    const uint64_t len = num(a, "len");
    int l = listen_on(kVm1Ip, static_cast<int>(num(a, "port")));
    printf("READY\n");
    fflush(stdout);
    int in = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    int out = connect_to(kClientIp, static_cast<int>(num(a, "to")));
    uint64_t done = 0, offl = 0;
    int err = 0, calls = 0;
    while (done < len) {
        ++calls;
        ssize_t n = vpipe_socket_to_socket_fd(in, out, len - done);
        if (n < 0) {
            err = errno;
            break;
        }
        if (n == 0) break;
        vpipe_result res{};
        vpipe_last_result(&res);
        offl += res.offloaded;
        done += static_cast<uint64_t>(n);
    }
    printf("RESULT moved=%llu err=%d offloaded=%llu calls=%d\n", static_cast<unsigned long long>(done), err,
           static_cast<unsigned long long>(offl), calls);
    fflush(stdout);
    std::string bye = read_line(out);  // both connections still work
    write_all(in, "OK\n", 3);
    printf("BYE %s\n", bye.c_str());
    fflush(stdout);
    return 0;
}

// vm: the error cases, all local to the VM.
int vm_errors(const std::map<std::string, std::string>& a) {
    int f = open(a.at("file").c_str(), O_RDONLY | O_CLOEXEC);
    auto try_op = [&](int s) {
        errno = 0;
        ssize_t n = vpipe_file_to_socket_fd(f, s, 0, 10);
        return n < 0 ? errno : 0;
    };
    // UDP
    int u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int eu = try_op(u);
    sockaddr_in d{};
    d.sin_family = AF_INET;
    d.sin_port = htons(9);
    inet_pton(AF_INET, kClientIp.c_str(), &d.sin_addr);
    bool uok = sendto(u, "x", 1, 0, reinterpret_cast<sockaddr*>(&d), sizeof(d)) == 1;
    // unix
    int sp[2];
    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp);
    int ex = try_op(sp[0]);
    char c = 0;
    bool xok = write(sp[0], "y", 1) == 1 && read(sp[1], &c, 1) == 1 && c == 'y';
    // listening
    int l = listen_on(kVm1Ip, 7777);
    int el = try_op(l);
    // unconnected
    int t = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int et = try_op(t);
    sockaddr_in la{};
    la.sin_family = AF_INET;
    la.sin_port = htons(7777);
    inet_pton(AF_INET, kVm1Ip.c_str(), &la.sin_addr);
    bool tok = connect(t, reinterpret_cast<sockaddr*>(&la), sizeof(la)) == 0;
    int acc = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    bool lok = acc >= 0 && write(t, "z", 1) == 1 && read(acc, &c, 1) == 1 && c == 'z';
    printf("RESULT udp=%d unix=%d listen=%d unconnected=%d udp_ok=%d unix_ok=%d listen_ok=%d unconnected_ok=%d\n",
           eu, ex, el, et, uok, xok, lok, tok);
    fflush(stdout);
    return 0;
}

// client: sends requests "off:len:expect[:bare]" one after another on one connection and checks
// each response; `rst_after`: read that many body bytes of the first request, then reset.
int client_get(const std::map<std::string, std::string>& a) {
    const uint64_t seed = num(a, "seed");
    int s = connect_to(kVm1Ip, static_cast<int>(num(a, "port")));
    std::vector<std::string> reqs;
    std::stringstream ss(a.at("reqs"));
    for (std::string r; std::getline(ss, r, ',');) reqs.push_back(r);
    const uint64_t repeat = num(a, "repeat", 1);
    // pipeline=1: every request goes out first, then the responses are read: the next requests
    // arrive while an operation runs in dom0 and must come back to the VM unread, in order
    const bool pipeline = num(a, "pipeline") != 0;
    auto request_line = [](const std::string& r) {
        unsigned long long off = 0, len = 0, expect = 0;
        int bare = 0;
        sscanf(r.c_str(), "%llu:%llu:%llu:%d", &off, &len, &expect, &bare);
        return "GET " + std::to_string(off) + " " + std::to_string(len) + " " + std::to_string(bare) + "\n";
    };
    if (pipeline) {
        std::string all;
        for (uint64_t k = 0; k < repeat; ++k)
            for (const auto& r : reqs) all += request_line(r);
        write_all(s, all.data(), all.size());
    }
    int bad = 0;
    for (uint64_t k = 0; k < repeat; ++k) {
        for (const auto& r : reqs) {
            unsigned long long off = 0, len = 0, expect = 0;
            int bare = 0;
            sscanf(r.c_str(), "%llu:%llu:%llu:%d", &off, &len, &expect, &bare);
            if (!pipeline) {
                const std::string line = request_line(r);
                write_all(s, line.data(), line.size());
            }
            if (!bare && read_line(s) != "H " + std::to_string(len)) {
                ++bad;
                break;
            }
            if (a.count("rst_after")) {
                uint64_t n = num(a, "rst_after");
                long long e = recv_check(s, seed, off, n);
                linger lg{1, 0};
                setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
                close(s);
                printf("RESULT reset_after=%llu check=%lld\n", static_cast<unsigned long long>(n), e);
                return 0;
            }
            long long e = recv_check(s, seed, off, expect);
            if (e != -1) {
                printf("MISMATCH req=%s at=%lld\n", r.c_str(), e);
                ++bad;
                break;
            }
            if (!bare && read_line(s) != "T") {
                printf("NO-TRAILER req=%s\n", r.c_str());
                ++bad;
                break;
            }
        }
        if (bad) break;
    }
    write_all(s, "QUIT\n", 5);
    printf("RESULT bad=%d\n", bad);
    fflush(stdout);
    close(s);
    return 0;
}

// client: sends `len` stream bytes, waits for "OK <n>", answers "BYE".
int client_send(const std::map<std::string, std::string>& a) {
    int s = connect_to(kVm1Ip, static_cast<int>(num(a, "port")));
    Overrun o;
    bool ok = num(a, "overrun") ? send_stream_overrunning(s, num(a, "seed"), num(a, "len"), &o)
                                : send_stream(s, num(a, "seed"), 0, num(a, "len"));
    if (num(a, "fin")) shutdown(s, SHUT_WR);  // EOF in the middle of the VM's call
    std::string line = read_line(s);
    write_all(s, "BYE\n", 4);
    printf("RESULT sent=%d reply=%s\n", ok, line.c_str());
    if (num(a, "overrun")) print_overrun(s, o);
    fflush(stdout);
    close(s);
    return 0;
}

// client: listens on `to`, connects to the VM on `port`, sends `len` bytes there and checks
// that they arrive on the accepted connection.
int client_relay(const std::map<std::string, std::string>& a) {
    const uint64_t len = num(a, "len"), seed = num(a, "seed");
    int l = listen_on(kClientIp, static_cast<int>(num(a, "to")));
    int s = connect_to(kVm1Ip, static_cast<int>(num(a, "port")));
    int b = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    const uint64_t pause_ms = num(a, "pause_ms");
    if (pause_ms) {  // a small receive buffer: the relay's destination fills up during the pause
        int small = 128 << 10;
        setsockopt(b, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    }
    Overrun o;
    std::thread tx([&] {
        if (num(a, "overrun")) send_stream_overrunning(s, seed, len, &o);
        else send_stream(s, seed, 0, len);
    });
    long long e;
    if (pause_ms) {  // the far end stops reading half-way, then resumes
        e = recv_check(b, seed, 0, len / 2);
        usleep(static_cast<useconds_t>(pause_ms * 1000));  // the stall under test, not a synchronisation
        const long long e2 = recv_check(b, seed, len / 2, len - len / 2);
        if (e == -1 && e2 != -1) e = e2;
    } else {
        e = recv_check(b, seed, 0, len);
    }
    tx.join();
    write_all(b, "BYE\n", 4);
    std::string ok = read_line(s);
    printf("RESULT check=%lld back=%s\n", e, ok.c_str());
    if (num(a, "overrun")) print_overrun(s, o);
    fflush(stdout);
    return 0;
}

// vm: answers one request line with ONE vpipe_file_to_socket_fd call of `len` bytes (the client
// does not read for a while), reports the outcome, then closes (EOF after what was handed over).
int vm_serve_once(const std::map<std::string, std::string>& a) {
    int l = listen_on(kVm1Ip, static_cast<int>(num(a, "port")));
    printf("READY\n");
    fflush(stdout);
    int s = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    int f = open(a.at("file").c_str(), O_RDONLY | O_CLOEXEC);
    std::string line = read_line(s);
    auto t0 = Clock::now();
    errno = 0;
    ssize_t n = vpipe_file_to_socket_fd(f, s, 0, num(a, "len"));
    int err = n < 0 ? errno : 0;
    double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    vpipe_result res{};
    vpipe_last_result(&res);
    printf("RESULT moved=%lld err=%d offloaded=%llu secs=%.2f\n", static_cast<long long>(n), err,
           static_cast<unsigned long long>(res.offloaded), secs);
    fflush(stdout);
    close(s);  // FIN after the handed-back tail (the restored socket retransmits it)
    return 0;
}

// client: sends one request line, does not read for `stall_ms`, then reads to EOF and checks.
int client_stall(const std::map<std::string, std::string>& a) {
    int s = connect_to(kVm1Ip, static_cast<int>(num(a, "port")));
    int small = 256 << 10;  // a small receive buffer: the sender blocks early
    setsockopt(s, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    write_all(s, "GET\n", 4);
    usleep(static_cast<useconds_t>(num(a, "stall_ms") * 1000));  // the stall under test, not a synchronisation
    std::vector<uint8_t> buf(1 << 20);
    uint64_t got = 0;
    long long bad = -1;
    for (;;) {
        ssize_t r = recv(s, buf.data(), buf.size(), 0);
        if (r <= 0) break;
        long long e = check_pattern(num(a, "seed"), got, buf.data(), static_cast<size_t>(r));
        if (e >= 0 && bad < 0) bad = static_cast<long long>(got) + e;
        got += static_cast<uint64_t>(r);
    }
    printf("RESULT got=%llu check=%lld\n", static_cast<unsigned long long>(got), bad);
    fflush(stdout);
    close(s);
    return 0;
}

// dom0 (vpl-dom0, the engine's own namespace): a service on dom0's address that a guest must
// not reach through the engine. Sends `len2` bytes of stream seed+1 at once, then expects `len`
// bytes of stream `seed` from the VM, answers "OK", and reports what it received.
int dom0_peer(const std::map<std::string, std::string>& a) {
    int l = listen_on(kDom0Ip, static_cast<int>(num(a, "port")));
    printf("READY\n");
    fflush(stdout);
    int s = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    bool sent = send_stream(s, num(a, "seed") + 1, 0, num(a, "len2"));
    long long check = recv_check(s, num(a, "seed"), 0, num(a, "len"));
    write_all(s, "OK\n", 3);
    std::string bye = read_line(s);
    printf("RESULT sent=%d check=%lld bye=%s\n", sent, check, bye.c_str());
    fflush(stdout);
    close(s);
    close(l);
    return 0;
}

// vm: connects to dom0's address; offloads file -> socket and (with `len2` bytes waiting
// unread) socket -> file on that connection, which the engine's peer policy refuses; then uses
// the same socket the classic way both ways and reports everything.
int vm_to_dom0(const std::map<std::string, std::string>& a) {
    const uint64_t len = num(a, "len"), len2 = num(a, "len2"), seed = num(a, "seed");
    int s = connect_to(kDom0Ip, static_cast<int>(num(a, "port")));
    int f = open(a.at("file").c_str(), O_RDONLY | O_CLOEXEC);
    int out = open(a.at("out").c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    for (int i = 0; i < 5000; ++i) {  // dom0's bytes wait in the receive queue (carried over)
        int q = 0;
        ioctl(s, FIONREAD, &q);
        if (static_cast<uint64_t>(q) >= len2) break;
        usleep(1000);
    }
    errno = 0;
    ssize_t n1 = vpipe_file_to_socket_fd(f, s, 0, len);
    int e1 = n1 < 0 ? errno : 0;
    vpipe_result r1{};
    vpipe_last_result(&r1);
    // with fallbacks on as well: a refusal is not "cannot offload here", it does not fall back
    // (threshold 0: 64 KiB would otherwise take the classic path without asking dom0)
    vpipe_set_fallback(1);
    vpipe_set_min_offload(0);
    errno = 0;
    ssize_t n2 = vpipe_socket_to_file_fd(s, out, 0, len2);
    int e2 = n2 < 0 ? errno : 0;
    vpipe_result r2{};
    vpipe_last_result(&r2);
    // the socket, restored by the guest, carries data both ways
    long long recv = recv_check(s, seed + 1, 0, len2);
    uint64_t done = 0;
    while (done < len) {
        off_t o = static_cast<off_t>(done);
        ssize_t w = sendfile(s, f, &o, len - done);
        if (w <= 0) break;
        done += static_cast<uint64_t>(w);
    }
    std::string reply = read_line(s);
    write_all(s, "BYE\n", 4);
    struct stat st {};
    fstat(out, &st);
    printf("RESULT f2s=%lld f2s_err=%d f2s_path=%d f2s_error=%d s2f=%lld s2f_err=%d s2f_path=%d recv=%lld "
           "sent=%llu reply=%s out_size=%lld\n",
           static_cast<long long>(n1), e1, r1.path, r1.error, static_cast<long long>(n2), e2, r2.path, recv,
           static_cast<unsigned long long>(done), reply.c_str(), static_cast<long long>(st.st_size));
    fflush(stdout);
    close(s);
    return 0;
}

// vm: serves one "GET <off> <len>" with ONE vpipe_file_to_socket_fd call, then tells what the
// call returned and what the descriptor does next (for a connection that is gone: the errno of
// a send, not a hang). Prints "RESULT ret=<n> err=<errno> next_send=<n> next_err=<errno>".
int vm_serve_one_call(const std::map<std::string, std::string>& a) {
    int l = listen_on(kVm1Ip, static_cast<int>(num(a, "port")));
    printf("READY\n");
    fflush(stdout);
    int s = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    int f = open(a.at("file").c_str(), O_RDONLY | O_CLOEXEC);
    unsigned long long off = 0, len = 0;
    sscanf(read_line(s).c_str(), "GET %llu %llu", &off, &len);
    errno = 0;
    ssize_t n = vpipe_file_to_socket_fd(f, s, static_cast<off_t>(off), len);
    const int err = n < 0 ? errno : 0;
    ssize_t m;
    if (num(a, "finish") && n >= 0) {  // go on from where the call stopped, on the guest's own path
        off_t o = static_cast<off_t>(off) + n;
        m = 0;
        while (static_cast<uint64_t>(n + m) < len) {
            ssize_t k = sendfile(s, f, &o, len - static_cast<uint64_t>(n + m));
            if (k <= 0) {
                m = -1;
                break;
            }
            m += k;
        }
    } else {
        m = send(s, "x", 1, MSG_NOSIGNAL);
    }
    const int merr = m < 0 ? errno : 0;
    printf("RESULT ret=%zd err=%d next_send=%zd next_err=%d\n", n, err, m, merr);
    fflush(stdout);
    close(s);
    close(l);
    return 0;
}

// Reads stream `seed` from `fd` until EOF or an error: `pause_at` bytes, then PAUSED and nothing
// more until the file `resume` exists (the test's event), then the rest; every byte checked.
void read_pausing(int fd, uint64_t seed, uint64_t pause_at, const std::string& resume, uint64_t* got,
                  long long* mismatch, int* end) {
    std::vector<uint8_t> buf(1 << 20);
    bool paused = false;
    for (;;) {
        if (!paused && *got >= pause_at) {
            paused = true;
            printf("PAUSED\n");
            fflush(stdout);
            struct stat st{};
            while (stat(resume.c_str(), &st) != 0) usleep(10000);  // the test's event: a file
        }
        uint64_t want = buf.size();
        if (!paused) want = std::min<uint64_t>(want, pause_at - *got);
        ssize_t r = recv(fd, buf.data(), want, 0);
        if (r == 0) return;
        if (r < 0) {
            if (errno == EINTR) continue;
            *end = errno;
            return;
        }
        long long bad = check_pattern(seed, *got, buf.data(), static_cast<size_t>(r));
        if (bad >= 0 && *mismatch < 0) *mismatch = static_cast<long long>(*got) + bad;
        *got += static_cast<uint64_t>(r);
    }
}

// client: asks for `len` bytes at 0 of stream `seed`, reads `pause_at` of them, prints PAUSED
// and reads nothing until the file `resume` exists (the test does something meanwhile, e.g.
// kills the engine); then reads until EOF or an error. Every byte is checked against the
// pattern. Prints "RESULT got=<bytes> mismatch=<pos or -1> end=<0 for EOF, else errno>".
int client_pause_get(const std::map<std::string, std::string>& a) {
    const uint64_t seed = num(a, "seed"), len = num(a, "len"), pause_at = num(a, "pause_at");
    int s = connect_to(kVm1Ip, static_cast<int>(num(a, "port")));
    const std::string req = "GET 0 " + std::to_string(len) + "\n";
    write_all(s, req.data(), req.size());
    uint64_t got = 0;
    long long mismatch = -1;
    int end = 0;
    read_pausing(s, seed, pause_at, a.at("resume"), &got, &mismatch, &end);
    printf("RESULT got=%llu mismatch=%lld end=%d\n", static_cast<unsigned long long>(got), mismatch, end);
    fflush(stdout);
    close(s);
    return 0;
}

// vm: receives up to `len` bytes into a new `file` with ONE vpipe_socket_to_file_fd call, then
// tells what the call returned, the file's size and what the descriptor does next.
// Prints "RESULT ret=<n> err=<errno> size=<bytes> next_send=<n> next_err=<errno>".
// The first send (next_send) is skipped with probe=0 (a client that reads the connection).
int vm_recv_one_call(const std::map<std::string, std::string>& a) {
    int l = listen_on(kVm1Ip, static_cast<int>(num(a, "port")));
    printf("READY\n");
    fflush(stdout);
    int s = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    int f = open(a.at("file").c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    errno = 0;
    ssize_t n = vpipe_socket_to_file_fd(s, f, 0, num(a, "len"));
    const int err = n < 0 ? errno : 0;
    struct stat st{};
    fstat(f, &st);
    ssize_t m = num(a, "probe", 1) ? send(s, "x", 1, MSG_NOSIGNAL) : 0;
    const int merr = m < 0 ? errno : 0;
    int q = 0;
    ioctl(s, FIONREAD, &q);
    printf("RESULT ret=%zd err=%d size=%lld next_send=%zd next_err=%d queued=%d\n", n, err,
           static_cast<long long>(st.st_size), m, merr, q);
    fflush(stdout);
    // finish=1: the application reads the rest of `len` itself from the same descriptor
    // (after the test let the client go on), every byte checked at its stream position
    if (num(a, "finish") && n >= 0) {
        printf("FINISH check=%lld\n", recv_check(s, num(a, "seed"), static_cast<uint64_t>(n),
                                                 num(a, "len") - static_cast<uint64_t>(n)));
        fflush(stdout);
    }
    // unread=N: the N bytes after those the call took must be readable from the same socket,
    // byte-exact. Not all of them need be queued yet (the sender resumes after the hand-over:
    // FIONREAD right after the call saw 571960 of 1 MiB once): wait for them, 30 s at most
    // (a lost byte then shows as check=-2, a wrong one as its position).
    if (num(a, "unread")) {
        timeval tv{30, 0};
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        printf("UNREAD check=%lld\n",
               recv_check(s, num(a, "seed"), n > 0 ? static_cast<uint64_t>(n) : 0, num(a, "unread")));
    }
    fflush(stdout);
    close(f);
    close(s);
    close(l);
    return 0;
}

// client: sends `pause_at` bytes of stream `seed`, prints PAUSED, waits for the file `resume`,
// then sends the rest of `len` until done or an error. Prints "RESULT sent=<bytes> end=<errno>".
// how=rst / how=fin: after `resume` the client resets the connection / shuts its sending side
// instead of sending more. await_end=1: afterwards it reads the connection until its end and
// adds "back=<bytes read> rend=<0 for EOF, else errno>" (a peer that is never told the end
// hangs there: the test's watchdog).
int client_pause_send(const std::map<std::string, std::string>& a) {
    const uint64_t seed = num(a, "seed"), len = num(a, "len"), pause_at = num(a, "pause_at");
    const std::string how = a.count("how") ? a.at("how") : "";
    int s = connect_to(kVm1Ip, static_cast<int>(num(a, "port")));
    send_stream(s, seed, 0, pause_at);
    printf("PAUSED\n");
    fflush(stdout);
    struct stat st{};
    while (stat(a.at("resume").c_str(), &st) != 0) usleep(10000);  // the test's event: a file
    if (how == "rst") {
        linger lg{1, 0};
        setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        close(s);
        printf("RESULT sent=%llu end=0 how=rst\n", static_cast<unsigned long long>(pause_at));
        fflush(stdout);
        return 0;
    }
    if (how == "fin") shutdown(s, SHUT_WR);
    std::vector<uint8_t> buf(1 << 20);
    uint64_t sent = pause_at;
    int end = 0;
    while (sent < len && how != "fin") {
        const size_t k = static_cast<size_t>(std::min<uint64_t>(buf.size(), len - sent));
        fill_pattern(seed, sent, buf.data(), k);
        ssize_t r = send(s, buf.data(), k, MSG_NOSIGNAL);
        if (r < 0) {
            if (errno == EINTR) continue;
            end = errno;
            break;
        }
        sent += static_cast<uint64_t>(r);
    }
    std::string back;
    if (num(a, "await_end")) {
        uint64_t got = 0;
        int rend = 0;
        for (;;) {
            ssize_t r = recv(s, buf.data(), buf.size(), 0);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) rend = errno;
            if (r <= 0) break;
            got += static_cast<uint64_t>(r);
        }
        back = " back=" + std::to_string(got) + " rend=" + std::to_string(rend);
    }
    printf("RESULT sent=%llu end=%d%s\n", static_cast<unsigned long long>(sent), end, back.c_str());
    fflush(stdout);
    close(s);
    return 0;
}

// vm: relays up to `len` bytes from the client's connection (port) to the client's listener (to)
// with ONE vpipe_socket_to_socket_fd call, then tells what the call returned and what each
// descriptor does next. Prints "RESULT ret= err= in_send= in_err= out_send= out_err=".
int vm_relay_one_call(const std::map<std::string, std::string>& a) {
    int l = listen_on(kVm1Ip, static_cast<int>(num(a, "port")));
    printf("READY\n");
    fflush(stdout);
    int in = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    int out = connect_to(kClientIp, static_cast<int>(num(a, "to")));
    const uint64_t len = num(a, "len");
    errno = 0;
    ssize_t n = vpipe_socket_to_socket_fd(in, out, len);
    const int err = n < 0 ? errno : 0;
    // peer_end=1: what the source descriptor reads next (the peer ended it: EOF or the reset)
    std::string extra;
    if (num(a, "peer_end")) {
        char c;
        ssize_t k = recv(in, &c, 1, MSG_DONTWAIT);
        extra += " in_recv=" + std::to_string(k) + " in_recv_err=" + std::to_string(k < 0 ? errno : 0);
    }
    // finish=1: the application relays the rest of `len` itself, the classic way
    if (num(a, "finish") && n >= 0) {
        printf("CALL ret=%zd err=%d\n", n, err);  // (the RESULT line comes after the rest)
        fflush(stdout);
        std::vector<uint8_t> buf(1 << 20);
        uint64_t rest = 0;
        std::string stop;  // why the relay of the rest ended early: which side, and its errno
        while (static_cast<uint64_t>(n) + rest < len) {
            ssize_t r = recv(in, buf.data(), std::min<uint64_t>(buf.size(), len - n - rest), 0);
            if (r <= 0) {
                stop = " rest_stop=recv:" + std::to_string(r < 0 ? errno : 0);
                break;
            }
            if (!write_all(out, buf.data(), static_cast<size_t>(r))) {
                stop = " rest_stop=send:" + std::to_string(errno);
                break;
            }
            rest += static_cast<uint64_t>(r);
        }
        extra += " rest=" + std::to_string(rest) + stop;
    }
    ssize_t mi = send(in, "x", 1, MSG_NOSIGNAL);
    const int ei = mi < 0 ? errno : 0;
    // probe_out=0: the far end checks every byte it reads, so nothing more is sent to it
    ssize_t mo = num(a, "probe_out", 1) ? send(out, "x", 1, MSG_NOSIGNAL) : 0;
    const int eo = mo < 0 ? errno : 0;
    printf("RESULT ret=%zd err=%d in_send=%zd in_err=%d out_send=%zd out_err=%d%s\n", n, err, mi, ei, mo, eo,
           extra.c_str());
    fflush(stdout);
    close(in);
    close(out);
    close(l);
    return 0;
}

// client of vm-relay-one-call: sends stream `seed` to the VM (a thread, until `len` or an
// error) and reads what the VM relays to its listener: `pause_at` bytes, PAUSED, nothing until
// the file `resume` exists, then until EOF or an error, every byte checked.
// Prints "RESULT got= mismatch= end= sent= send_end=".
int client_relay_pause(const std::map<std::string, std::string>& a) {
    const uint64_t len = num(a, "len"), seed = num(a, "seed"), pause_at = num(a, "pause_at");
    int l = listen_on(kClientIp, static_cast<int>(num(a, "to")));
    int s = connect_to(kVm1Ip, static_cast<int>(num(a, "port")));
    int b = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    uint64_t sent = 0;
    int send_end = 0;
    std::thread tx([&] {
        std::vector<uint8_t> buf(1 << 20);
        while (sent < len) {
            const size_t k = static_cast<size_t>(std::min<uint64_t>(buf.size(), len - sent));
            fill_pattern(seed, sent, buf.data(), k);
            ssize_t r = send(s, buf.data(), k, MSG_NOSIGNAL);
            if (r < 0) {
                if (errno == EINTR) continue;
                send_end = errno;
                break;
            }
            sent += static_cast<uint64_t>(r);
        }
    });
    uint64_t got = 0;
    long long mismatch = -1;
    int end = 0;
    read_pausing(b, seed, pause_at, a.at("resume"), &got, &mismatch, &end);
    // the sender stops on its own once the VM's end is gone (RST); SHUT_WR would not wake it
    tx.join();
    printf("RESULT got=%llu mismatch=%lld end=%d sent=%llu send_end=%d\n", static_cast<unsigned long long>(got),
           mismatch, end, static_cast<unsigned long long>(sent), send_end);
    fflush(stdout);
    return 0;
}

// client of vm-relay-one-call for a source peer that ends its connection mid-operation: sends
// `pause_at` bytes of stream `seed` to the VM and reads them relayed at its listener (`to`),
// prints PAUSED, waits for the file `resume`, then resets (how=rst) or shuts the sending side of
// (how=fin) its connection to the VM, and reads the relayed stream until its end. With how=fin it
// also reads what the VM sends back on that connection, until EOF.
// Prints "RESULT got= mismatch= end= back= back_end=".
int client_relay_end(const std::map<std::string, std::string>& a) {
    const uint64_t seed = num(a, "seed"), pause_at = num(a, "pause_at");
    const std::string how = a.at("how");
    int l = listen_on(kClientIp, static_cast<int>(num(a, "to")));
    int s = connect_to(kVm1Ip, static_cast<int>(num(a, "port")));
    int b = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    std::thread tx([&] { send_stream(s, seed, 0, pause_at); });
    long long mismatch = recv_check(b, seed, 0, pause_at);
    tx.join();
    uint64_t got = mismatch == -1 ? pause_at : 0;
    printf("PAUSED\n");
    fflush(stdout);
    struct stat st{};
    while (stat(a.at("resume").c_str(), &st) != 0) usleep(10000);  // the test's event: a file
    if (how == "rst") {
        linger lg{1, 0};
        setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        close(s);
    } else {
        shutdown(s, SHUT_WR);
    }
    std::vector<uint8_t> buf(1 << 20);
    int end = 0;
    for (;;) {  // nothing more was sent: anything read here is a byte too many
        ssize_t r = recv(b, buf.data(), buf.size(), 0);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) end = errno;
        if (r <= 0) break;
        if (mismatch == -1) mismatch = static_cast<long long>(got);
        got += static_cast<uint64_t>(r);
    }
    uint64_t back = 0;
    int back_end = 0;
    while (how == "fin") {
        ssize_t r = recv(s, buf.data(), buf.size(), 0);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) back_end = errno;
        if (r <= 0) break;
        back += static_cast<uint64_t>(r);
    }
    printf("RESULT got=%llu mismatch=%lld end=%d back=%llu back_end=%d\n", static_cast<unsigned long long>(got),
           mismatch, end, static_cast<unsigned long long>(back), back_end);
    fflush(stdout);
    return 0;
}

int helper_main(int argc, char** argv) {
    signal(SIGPIPE, SIG_IGN);
    setenv("VPIPE_NO_FALLBACK", "1", 1);
    std::string mode = argv[2];
    auto a = kv(argc, argv, 3);
    if (mode == "vm-serve-file") return vm_serve_file(a);
    if (mode == "vm-recv-file") return vm_recv_file(a);
    if (mode == "vm-relay") return vm_relay(a);
    if (mode == "vm-errors") return vm_errors(a);
    if (mode == "client-get") return client_get(a);
    if (mode == "client-send") return client_send(a);
    if (mode == "client-relay") return client_relay(a);
    if (mode == "vm-serve-once") return vm_serve_once(a);
    if (mode == "client-stall") return client_stall(a);
    if (mode == "dom0-peer") return dom0_peer(a);
    if (mode == "vm-to-dom0") return vm_to_dom0(a);
    if (mode == "vm-serve-one-call") return vm_serve_one_call(a);
    if (mode == "client-pause-get") return client_pause_get(a);
    if (mode == "vm-recv-one-call") return vm_recv_one_call(a);
    if (mode == "client-pause-send") return client_pause_send(a);
    if (mode == "vm-relay-one-call") return vm_relay_one_call(a);
    if (mode == "client-relay-pause") return client_relay_pause(a);
    if (mode == "client-relay-end") return client_relay_end(a);
    fprintf(stderr, "unknown helper mode %s\n", mode.c_str());
    return 2;
}

// ---- the test process -------------------------------------------------------------------------

// A helper process (this binary, --helper <mode> args) on a lab host ("client" or a VM).
struct Proc : LabProc {
    Proc(const std::string& where, const std::string& mode, const std::vector<std::string>& args)
        : LabProc(where, helper_argv(mode, args)) {}
    static std::vector<std::string> helper_argv(const std::string& mode, const std::vector<std::string>& args) {
        std::vector<std::string> av{g_self, "--helper", mode};
        av.insert(av.end(), args.begin(), args.end());
        return av;
    }
};

std::map<std::string, std::string> fields(const std::string& line) {
    std::map<std::string, std::string> m;
    std::stringstream ss(line);
    for (std::string w; ss >> w;) {
        auto eq = w.find('=');
        if (eq != std::string::npos) m[w.substr(0, eq)] = w.substr(eq + 1);
    }
    return m;
}

class Sockets : public LabFixture {
protected:
    static void SetUpTestSuite() {
        // VPIPE_TEST_DISK_CACHE=direct: the engine reads the images with O_DIRECT (blkback's
        // path) instead of through dom0's page cache (ctest runs the file -> socket tests so too)
        std::vector<std::string> up = {"--vms", "2", "--disk-mib", "3072"};
        if (const char* c = getenv("VPIPE_TEST_DISK_CACHE")) up.insert(up.end(), {"--disk-cache", c});
        if (!bring_up({.up = up, .binaries = {"vpipectl"}, .name = "sockets"})) return;
        disk_ = mount(1);
        // the files the VM serves
        for (auto [name, size] : std::vector<std::pair<std::string, uint64_t>>{
                 {"f0", 0}, {"f1", 1}, {"f1m", (1u << 20) + 1}, {"f64m", 64u << 20}, {"f4k", 4096}}) {
            error_ = write_pattern_file(disk_ + "/" + name, kSeed, size);
            if (!error_.empty()) return;
        }
    }
    void TearDown() override {
        // nothing of any flow may stay behind: no shadow socket, no steering, no guest block
        if (ready()) expect_nothing_left_behind();
    }
    static int port() { return next_port_++; }

    // After an engine restart: whether vm1's agent is connected to the new engine (it retries
    // by itself) within 30 s.
    static bool vm1_reconnected() {
        const auto deadline = Clock::now() + std::chrono::seconds(30);
        for (;;) {
            const nlohmann::json stats = engine_stats();  // (kept: a range-for over a temporary's member dangles)
            for (const auto& v : stats["vms"])
                if (v.value("name", "") == "vm1" && v.value("connected", false)) return true;
            if (Clock::now() >= deadline) return false;
            std::this_thread::sleep_for(std::chrono::milliseconds(50));  // polling the engine
        }
    }

    // Waits (up to 20 s, polling the engine) until dom0 holds at least `n` shadow sockets.
    static bool dom0_holds(int n) {
        const auto until = Clock::now() + std::chrono::seconds(20);
        for (;;) {
            if (engine_stats()["sockets"].value("shadow_sockets", 0) >= n) return true;
            if (Clock::now() >= until) return false;
            std::this_thread::sleep_for(std::chrono::milliseconds(10));  // polling the engine
        }
    }
    // Waits (up to 30 s, polling the engine) until dom0 holds no connection and runs nothing.
    static bool dom0_idle() {
        const auto until = Clock::now() + std::chrono::seconds(30);
        for (;;) {
            const nlohmann::json st = engine_stats();
            bool idle = st["sockets"].value("shadow_sockets", 1) == 0;
            for (const auto& v : st["vms"]) idle = idle && v.value("active", 1) == 0;
            if (idle) return true;
            if (Clock::now() >= until) return false;
            std::this_thread::sleep_for(std::chrono::milliseconds(20));  // polling the engine
        }
    }
    // The next line of `p` starting with `prefix`, or "" if none came within `secs` (p is killed
    // then: a peer that is never told the end of its connection would wait for ever).
    static std::string line_within(LabProc& p, const std::string& prefix, int secs = 30) {
        std::atomic<bool> done{false};
        std::thread watchdog([&done, pid = p.pid, secs] {
            for (int i = 0; i < secs * 10 && !done; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
            if (!done) ::kill(pid, SIGKILL);
        });
        std::string l = p.line(prefix);
        done = true;
        watchdog.join();
        return l;
    }
    // How many leading bytes of `data` are stream `seed`'s (from position 0).
    static size_t stream_prefix(uint64_t seed, const std::vector<uint8_t>& data) {
        size_t k = 0;
        while (k < data.size()) {
            const size_t n = std::min<size_t>(1 << 20, data.size() - k);
            const long long bad = check_pattern(seed, k, data.data() + k, n);
            if (bad >= 0) return k + static_cast<size_t>(bad);
            k += n;
        }
        return k;
    }
    // A file of `path` that the VM wrote (after dom0 let go of it): its bytes.
    static std::vector<uint8_t> file_bytes(const std::string& path) {
        std::ifstream in(path, std::ios::binary);
        return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    }

    // serve `reqs` from `file` to one client connection; returns the VM's RESULT lines
    std::vector<std::map<std::string, std::string>> serve(const std::string& file, const std::string& reqs,
                                                           uint64_t repeat = 1, std::string* latency = nullptr,
                                                           bool plain = false, std::string* client_out = nullptr,
                                                           const std::vector<std::string>& client_extra = {}) {
        int p = port();
        Proc vm("vm1", "vm-serve-file",
                {"port=" + std::to_string(p), "file=" + disk_ + "/" + file, std::string("plain=") + (plain ? "1" : "0")});
        EXPECT_EQ(vm.line("READY"), "READY") << vm.all;
        std::vector<std::string> cargs{"port=" + std::to_string(p), "seed=" + std::to_string(kSeed), "reqs=" + reqs,
                                       "repeat=" + std::to_string(repeat)};
        cargs.insert(cargs.end(), client_extra.begin(), client_extra.end());
        Proc cl("client", "client-get", cargs);
        // the VM's lines are read while the client runs (one line per request: a long run
        // would fill the pipe and block the VM)
        std::vector<std::map<std::string, std::string>> res;
        std::thread reader([&] {
            for (std::string l; !(l = vm.line("")).empty();) {
                if (l.rfind("RESULT", 0) == 0) res.push_back(fields(l));
                if (l.rfind("LATENCY", 0) == 0 && latency) *latency = l;
            }
        });
        std::string cres = cl.line("RESULT");
        if (cres != "RESULT bad=0") kill(vm.pid, SIGKILL);  // don't wait for a VM side that hangs
        reader.join();
        EXPECT_EQ(cres, "RESULT bad=0") << cl.all << "\nvm:\n" << vm.all;
        if (client_out) *client_out = cres;
        cl.wait();
        vm.wait();
        return res;
    }

    // socket -> file: the client sends `sent` bytes of stream `seed` (then FIN with `fin`), the VM
    // receives up to `want` of them into `file` with vpipe_socket_to_file_fd (once `unread` bytes
    // wait unread in its receive queue). Checks what moved, the replies both ways (after a FIN
    // the VM reads EOF) and the bytes on disk; returns the VM's RESULT fields. Fatal failures:
    // call it under ASSERT_NO_FATAL_FAILURE.
    void socket_to_file(const std::string& file, uint64_t want, uint64_t sent, uint64_t seed,
                        std::map<std::string, std::string>* res, uint64_t unread = 0, bool fin = false,
                        bool overrun = false) {
        int p = port();
        std::vector<std::string> vargs{"port=" + std::to_string(p), "file=" + file, "len=" + std::to_string(want)};
        if (unread) vargs.push_back("unread=" + std::to_string(unread));
        Proc vm("vm1", "vm-recv-file", vargs);
        ASSERT_EQ(vm.line("READY"), "READY") << vm.all;
        std::vector<std::string> cargs{"port=" + std::to_string(p), "seed=" + std::to_string(seed),
                                       "len=" + std::to_string(sent)};
        if (fin) cargs.push_back("fin=1");
        if (overrun) cargs.push_back("overrun=1");
        Proc cl("client", "client-send", cargs);
        *res = fields(vm.line("RESULT"));
        EXPECT_EQ((*res)["moved"], std::to_string(sent)) << vm.all;
        EXPECT_EQ(cl.line("RESULT"), "RESULT sent=1 reply=OK " + std::to_string(sent)) << cl.all;
        EXPECT_EQ(vm.line("BYE"), fin ? "BYE EOF" : "BYE BYE") << vm.all;
        cl.wait();
        vm.wait();
        (*res)["vm"] = vm.all;  // for the caller's messages
        (*res)["client"] = cl.all;
        // byte-exact on disk
        std::ifstream in(file, std::ios::binary);
        std::vector<uint8_t> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        ASSERT_EQ(data.size(), sent);
        EXPECT_EQ(check_pattern(seed, 0, data.data(), data.size()), -1) << "len " << sent;
        unlink(file.c_str());
    }

    // socket -> socket: the client sends `len` bytes of stream kSeed to the VM, which relays them
    // with vpipe_socket_to_socket_fd to the client's listener. Checks what moved and what
    // arrived; returns the VM's RESULT fields and output as socket_to_file does (call it under
    // ASSERT_NO_FATAL_FAILURE).
    void socket_to_socket(uint64_t len, std::map<std::string, std::string>* res, uint64_t pause_ms = 0,
                          bool overrun = false) {
        int p = port(), to = port();
        Proc vm("vm1", "vm-relay", {"port=" + std::to_string(p), "to=" + std::to_string(to), "len=" + std::to_string(len)});
        ASSERT_EQ(vm.line("READY"), "READY") << vm.all;
        Proc cl("client", "client-relay",
                {"port=" + std::to_string(p), "to=" + std::to_string(to), "seed=" + std::to_string(kSeed),
                 "len=" + std::to_string(len), "pause_ms=" + std::to_string(pause_ms),
                 std::string("overrun=") + (overrun ? "1" : "0")});
        *res = fields(vm.line("RESULT"));
        EXPECT_EQ((*res)["moved"], std::to_string(len)) << vm.all;
        EXPECT_EQ(cl.line("RESULT"), "RESULT check=-1 back=OK") << cl.all << vm.all;
        cl.wait();
        vm.wait();
        (*res)["vm"] = vm.all;  // for the caller's messages
        (*res)["client"] = cl.all;
    }

    static constexpr uint64_t kSeed = 42;

    // The fault-matrix cases where the source's peer ends its connection (HOW: "rst" or "fin")
    // while dom0 relays a 64 MiB socket -> socket call: the far end reads kPeerEndAt bytes, the
    // peer ends, and *r / *c get the application's and the far end's RESULT fields.
    static constexpr uint64_t kPeerEndAt = 8u << 20;
    static void peer_ends_mid_relay(const char* how, const char* what, std::map<std::string, std::string>* r,
                                    std::map<std::string, std::string>* c) {
        const uint64_t len = 64u << 20;
        const std::string resume = tmp_ + "/resume-" + how + "-s2s-" + std::to_string(::getpid());
        int p = port(), to = port();
        Proc vm("vm1", "vm-relay-one-call",
                {"port=" + std::to_string(p), "to=" + std::to_string(to), "len=" + std::to_string(len), "probe_out=0",
                 "peer_end=1"});
        ASSERT_EQ(vm.line("READY"), "READY") << vm.all;
        Proc cl("client", "client-relay-end",
                {"port=" + std::to_string(p), "to=" + std::to_string(to), "seed=" + std::to_string(kSeed),
                 "pause_at=" + std::to_string(kPeerEndAt), "resume=" + resume, std::string("how=") + how});
        ASSERT_EQ(cl.line("PAUSED"), "PAUSED") << cl.all;
        ASSERT_TRUE(dom0_holds(2)) << engine_stats().dump();
        std::ofstream(resume).put('1');
        *r = fields(line_within(vm, "RESULT"));
        *c = fields(line_within(cl, "RESULT"));
        cl.wait();
        vm.wait();
        unlink(resume.c_str());
        printf("[ info ] peer %s mid socket->socket: the call returned %s (errno %s), the far end got %s (end %s)\n",
               what, (*r)["ret"].c_str(), (*r)["err"].c_str(), (*c)["got"].c_str(), (*c)["end"].c_str());
        ASSERT_TRUE(r->count("ret")) << vm.all;
        ASSERT_TRUE(c->count("got")) << "the far end was not told the end within 30 s\n" << cl.all;
        (*r)["vm"] = vm.all;  // for the caller's messages
        (*c)["client"] = cl.all;
    }
    // vm1's agent's count of engines declared unresponsive (-1: it did not answer)
    static long long vm1_engine_timeouts() {
        vpipe_ioc_stats st{};
        return agent_stats(info_["vms"][0]["agent_socket"].get<std::string>(), &st)
                   ? static_cast<long long>(st.engine_timeouts)
                   : -1;
    }
    static constexpr uint32_t kHangBoundMs = 2000;   // the agent's request_timeout_ms in the hang cases

    static inline std::string disk_;
    static inline int next_port_ = 20000;
};

// (the suite runs twice: ctest's Sockets.FileToSocketWithDirectDiskReads brings the lab up
// with --disk-cache direct; the engine's stats say which path it used)
TEST_F(Sockets, TheEngineReadsTheImagesAsTheLabWasAsked) {
    const char* want = getenv("VPIPE_TEST_DISK_CACHE");
    auto r = engine({"stats", "--json"});
    ASSERT_EQ(r.status, 0) << r.all();
    const auto j = nlohmann::json::parse(r.out, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << r.out;
    for (const auto& vm : j["vms"])
        for (const auto& d : vm["disks"]) EXPECT_EQ(d.value("cache", ""), want ? want : "host") << d.dump();
}

TEST_F(Sockets, FileToSocketSizes) {
    struct Case {
        const char* file;
        uint64_t size;
    } cases[] = {{"f1", 1}, {"f1m", (1u << 20) + 1}, {"f64m", 64u << 20}, {"f0", 0}};
    for (const auto& c : cases) {
        auto t0 = Clock::now();
        auto r = serve(c.file, "0:" + std::to_string(c.size) + ":" + std::to_string(c.size));
        double secs = std::chrono::duration<double>(Clock::now() - t0).count();
        ASSERT_EQ(r.size(), 1u) << c.file;
        EXPECT_EQ(r[0]["moved"], std::to_string(c.size)) << c.file;
        EXPECT_EQ(r[0]["err"], "0") << c.file;
        if (c.size) {
            EXPECT_EQ(r[0]["offloaded"], std::to_string(c.size)) << c.file;
        }
        // the listener's SO_REUSEADDR survives the hand-over (repair mode clears it)
        EXPECT_EQ(r[0]["reuseaddr"], "1") << c.file;
        printf("[ info ] file->socket %s (%llu B): %.3f s incl. process start-up\n", c.file,
               static_cast<unsigned long long>(c.size), secs);
    }
    // which read path moved them: spliced from O_DIRECT (direct, unless VPIPE_ENGINE_NO_SPLICE)
    // for the operations above one pool buffer (1 MiB + 1 B and 64 MiB: their aligned parts,
    // the last byte goes through the bounce block), else none
    const char* cache = getenv("VPIPE_TEST_DISK_CACHE");
    const char* nosplice = getenv("VPIPE_ENGINE_NO_SPLICE");
    const bool spliced = cache && std::string(cache) == "direct" && !(nosplice && *nosplice && std::string(nosplice) != "0");
    auto r = engine({"stats", "--json"});
    ASSERT_EQ(r.status, 0) << r.all();
    const auto j = nlohmann::json::parse(r.out, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << r.out;
    uint64_t bytes_spliced = 0;
    for (const auto& vm : j["vms"])
        for (const auto& d : vm["disks"]) bytes_spliced += d.value("bytes_spliced", uint64_t{0});
    if (spliced)
        EXPECT_GE(bytes_spliced, (64u << 20) + (1u << 20)) << r.out;
    else
        EXPECT_EQ(bytes_spliced, 0u) << r.out;
}

TEST_F(Sockets, FileToSocketKeepAliveHeaderBodyTrailer) {
    // two requests on ONE connection: header + vPipe body + trailer each, the second request
    // sent by the client only after the first response arrived completely
    auto r = serve("f1m", "0:1048577:1048577,1000:5000:5000");
    ASSERT_EQ(r.size(), 2u);
    EXPECT_EQ(r[0]["moved"], "1048577");
    EXPECT_EQ(r[1]["moved"], "5000");
    EXPECT_EQ(r[1]["path"], "1");  // offloaded, not a fallback
}

TEST_F(Sockets, FileToSocketSendsWhatTheGuestWroteSinceTheLastOffload) {
    // The lab's disks are read through dom0's page cache (cache = "host"). A guest write that
    // lands between two offloads of the same blocks -- an in-place overwrite the application
    // never flushed -- must be what the second offload sends: vPipe flushes the range first,
    // the loop device's write invalidates dom0's cached pages (docs/protocol.md 6).
    const std::string path = disk_ + "/fco";
    const uint64_t len = 4 << 20;
    const std::string reqs = "0:" + std::to_string(len) + ":" + std::to_string(len);
    ASSERT_EQ(write_pattern_file(path, kSeed, len), "");
    auto r = serve("fco", reqs);
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0]["offloaded"], std::to_string(len));  // dom0 now caches these blocks
    struct stat before {};
    ASSERT_EQ(stat(path.c_str(), &before), 0);
    {
        int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);  // no O_TRUNC: the same blocks
        ASSERT_GE(fd, 0);
        const std::vector<char> v = pattern(kSeed + 5, len);
        ASSERT_EQ(pwrite(fd, v.data(), v.size(), 0), static_cast<ssize_t>(len));
        close(fd);  // not flushed
    }
    r = serve("fco", reqs, 1, nullptr, false, nullptr, {"seed=" + std::to_string(kSeed + 5)});
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0]["offloaded"], std::to_string(len));
    struct stat after {};
    ASSERT_EQ(stat(path.c_str(), &after), 0);
    EXPECT_EQ(after.st_blocks, before.st_blocks);
    unlink(path.c_str());
}

// 1 GiB through each socket operation, byte-exact at the far end (one call each: the engine's
// windows, the shadow's buffers and the carry room over a long run).
TEST_F(Sockets, OneGiBFileToSocket) {
    const uint64_t len = 1ull << 30;
    ASSERT_EQ(write_pattern_file(disk_ + "/f1g", kSeed, len, /*drop_cache=*/true), "");
    const std::string n = std::to_string(len);
    auto r = serve("f1g", "0:" + n + ":" + n);
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0]["moved"], n);
    EXPECT_EQ(r[0]["offloaded"], n);
    unlink((disk_ + "/f1g").c_str());
}

TEST_F(Sockets, OneGiBSocketToFile) {
    std::map<std::string, std::string> res;
    ASSERT_NO_FATAL_FAILURE(socket_to_file(disk_ + "/in-1g", 1ull << 30, 1ull << 30, kSeed + 11, &res));
    EXPECT_EQ(res["err"], "0") << res["vm"];
}

TEST_F(Sockets, OneGiBSocketToSocketWithAFarEndThatPausesHalfWay) {
    // the destination's peer stops reading for 400 ms: the relay fills the destination up to
    // what fits the carry room, waits, and resumes without losing or reordering a byte
    std::map<std::string, std::string> res;
    ASSERT_NO_FATAL_FAILURE(socket_to_socket(1ull << 30, &res, 400));
    EXPECT_EQ(res["err"], "0") << res["vm"];
}

// A client whose kernel sends past the window the VM (then dom0's shadow) advertised: whatever
// the receivers take stays within their buffers, which were sized for the carry room, so the
// hand-back never overflows the room (the engine would fail the operation: "carry overflow"),
// and the peer's retransmissions fill in what was dropped, byte-exact.
TEST_F(Sockets, SocketToFileFromAPeerThatOverrunsTheWindow) {
    std::map<std::string, std::string> res;
    const uint64_t len = 256ull << 20;
    ASSERT_NO_FATAL_FAILURE(socket_to_file(disk_ + "/in-overrun", len, len, kSeed + 13, &res, 0, false, true));
    EXPECT_EQ(res["err"], "0") << res["vm"];
    // (what the VM had queued before its call is delivered in the guest, the rest by dom0)
    EXPECT_GE(std::stoull(res["offloaded"]), len * 9 / 10) << res["vm"];
    auto o = fields(res["client"].substr(res["client"].find("OVERRUN")));
    EXPECT_GT(std::stoull(o["times"]), 0u) << "the client never sent past the advertised window:\n" << res["client"];
    printf("[ info ] socket->file from an overrunning peer: %s chunks past the edge, largest %s B, %s retransmissions\n",
           o["times"].c_str(), o["max"].c_str(), o["retrans"].c_str());
}

TEST_F(Sockets, SocketToSocketFromAPeerThatOverrunsTheWindow) {
    std::map<std::string, std::string> res;
    const uint64_t len = 256ull << 20;
    ASSERT_NO_FATAL_FAILURE(socket_to_socket(len, &res, 0, true));
    EXPECT_EQ(res["err"], "0") << res["vm"];
    // (what the VM had queued before its call is delivered in the guest, the rest by dom0)
    EXPECT_GE(std::stoull(res["offloaded"]), len * 9 / 10) << res["vm"];
    auto o = fields(res["client"].substr(res["client"].find("OVERRUN")));
    EXPECT_GT(std::stoull(o["times"]), 0u) << "the client never sent past the advertised window:\n" << res["client"];
    printf("[ info ] socket->socket from an overrunning peer: %s chunks past the edge, largest %s B, %s retransmissions\n",
           o["times"].c_str(), o["max"].c_str(), o["retrans"].c_str());
}

TEST_F(Sockets, FileToSocketLengthBeyondFileIsShort) {
    auto r = serve("f4k", "1000:100000:3096");
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0]["moved"], "3096");
    EXPECT_EQ(r[0]["err"], "0");
}

// (the agent readies the destination while dom0 receives: VPIPE_REQF_PREPARING, counted)
TEST_F(Sockets, SocketToFile) {
    auto preparing = [] {
        uint64_t n = 0;
        const nlohmann::json stats = engine_stats();  // (a range-for over engine_stats()["vms"]
        for (const auto& vm : stats["vms"]) n += vm.value("preparing", uint64_t{0});  // would dangle)
        return n;
    };
    const uint64_t preparing0 = preparing();
    for (uint64_t len : {uint64_t{1}, uint64_t{4096}, (uint64_t{1} << 20) + 1, uint64_t{64} << 20}) {
        // bytes already unread in the receive queue when the call comes: part of the stream
        const uint64_t unread = std::min<uint64_t>(len, 3000);
        std::map<std::string, std::string> res;
        ASSERT_NO_FATAL_FAILURE(
            socket_to_file(disk_ + "/in-" + std::to_string(len), len, len, kSeed + len, &res, unread));
        EXPECT_EQ(res["err"], "0") << res["vm"];
        printf("[ info ] socket->file %llu B: offloaded %s in %s call(s)\n", static_cast<unsigned long long>(len),
               res["offloaded"].c_str(), res["calls"].c_str());
    }
    // (they read 0 while this loop iterated over a destroyed temporary)
    const uint64_t readied = preparing() - preparing0;
    printf("[ info ] socket->file hand-overs readied while dom0 received: %llu\n",
           static_cast<unsigned long long>(readied));
    EXPECT_EQ(readied, 4u);  // one hand-over per length, each into a new file
}

TEST_F(Sockets, SocketToSocketRelay) {
    for (uint64_t len : {uint64_t{1000}, uint64_t{8} << 20}) {
        std::map<std::string, std::string> res;
        ASSERT_NO_FATAL_FAILURE(socket_to_socket(len, &res));
        EXPECT_EQ(res["err"], "0") << res["vm"];
        printf("[ info ] socket->socket %llu B: offloaded %s\n", static_cast<unsigned long long>(len),
               res["offloaded"].c_str());
    }
}

TEST_F(Sockets, WrongSocketsGiveExactErrorsAndStayUsable) {
    Proc vm("vm1", "vm-errors", {"file=" + disk_ + "/f4k"});
    auto r = fields(vm.line("RESULT"));
    vm.wait();
    EXPECT_EQ(r["udp"], std::to_string(EINVAL)) << vm.all;
    EXPECT_EQ(r["unix"], std::to_string(EINVAL));
    EXPECT_EQ(r["listen"], std::to_string(ENOTCONN));
    EXPECT_EQ(r["unconnected"], std::to_string(ENOTCONN));
    EXPECT_EQ(r["udp_ok"], "1");
    EXPECT_EQ(r["unix_ok"], "1");
    EXPECT_EQ(r["listen_ok"], "1");
    EXPECT_EQ(r["unconnected_ok"], "1");
}

// The peer policy end to end: a guest connection whose peer is dom0 itself (a service on
// xenbr0's address in the engine's namespace) is refused by the engine with EACCES for
// file -> socket and socket -> file, before anything changes in dom0; the guest gets its socket
// back as it was (the bytes waiting in its receive queue included) and uses it both ways.
TEST_F(Sockets, APeerInDom0IsRefusedWithEaccesAndTheSocketStaysUsable) {
    auto refused = [] {
        const auto s = engine_stats();
        for (const auto& vm : s.value("vms", nlohmann::json::array()))
            if (vm.value("name", "") == "vm1") return vm.value("peer_refused", uint64_t{0});
        ADD_FAILURE() << "no vm1 in the engine's stats: " << s.dump();
        return uint64_t{0};
    };
    const uint64_t before = refused();
    const uint64_t len = (1u << 20) + 1, len2 = 65536;
    int p = port();
    Proc d0("dom0", "dom0-peer", {"port=" + std::to_string(p), "seed=" + std::to_string(kSeed),
                                  "len=" + std::to_string(len), "len2=" + std::to_string(len2)});
    ASSERT_EQ(d0.line("READY"), "READY") << d0.all;
    Proc vm("vm1", "vm-to-dom0", {"port=" + std::to_string(p), "seed=" + std::to_string(kSeed),
                                  "len=" + std::to_string(len), "len2=" + std::to_string(len2),
                                  "file=" + disk_ + "/f1m", "out=" + disk_ + "/from-dom0"});
    auto r = fields(vm.line("RESULT"));
    auto d = fields(d0.line("RESULT"));
    vm.wait();
    d0.wait();
    EXPECT_EQ(r["f2s"], "-1") << vm.all;
    EXPECT_EQ(r["f2s_err"], std::to_string(EACCES)) << vm.all;
    EXPECT_EQ(r["f2s_path"], std::to_string(VPIPE_RESULT_FAILED)) << vm.all;
    EXPECT_EQ(r["f2s_error"], std::to_string(EACCES)) << vm.all;
    EXPECT_EQ(r["s2f"], "-1") << vm.all;
    EXPECT_EQ(r["s2f_err"], std::to_string(EACCES)) << vm.all;
    EXPECT_EQ(r["s2f_path"], std::to_string(VPIPE_RESULT_FAILED)) << vm.all;
    EXPECT_EQ(r["out_size"], "0") << vm.all;               // nothing written for the refused receive
    EXPECT_EQ(r["recv"], "-1") << vm.all;                  // dom0's 64 KiB intact, in order
    EXPECT_EQ(r["sent"], std::to_string(len)) << vm.all;
    EXPECT_EQ(r["reply"], "OK") << vm.all;
    EXPECT_EQ(d["sent"], "1") << d0.all;
    EXPECT_EQ(d["check"], "-1") << d0.all;                 // the VM's 1 MiB + 1 checked byte by byte
    EXPECT_EQ(d["bye"], "BYE") << d0.all;
    EXPECT_EQ(refused(), before + 2);
    unlink((disk_ + "/from-dom0").c_str());
    // TearDown: no shadow socket, steered flow or nft element left anywhere
}

TEST_F(Sockets, PeerResetMidOperation) {
    int p = port();
    Proc vm("vm1", "vm-serve-file", {"port=" + std::to_string(p), "file=" + disk_ + "/f64m"});
    ASSERT_EQ(vm.line("READY"), "READY");
    Proc cl("client", "client-get",
            {"port=" + std::to_string(p), "seed=" + std::to_string(kSeed), "reqs=0:67108864:67108864",
             "rst_after=1048576"});
    auto c = cl.line("RESULT");
    EXPECT_EQ(c, "RESULT reset_after=1048576 check=-1") << cl.all;
    auto r = fields(vm.line("RESULT"));
    cl.wait();
    vm.wait();
    const uint64_t moved = std::stoull(r["moved"]);
    EXPECT_LT(moved, uint64_t{64} << 20) << vm.all;
    EXPECT_TRUE(r["err"] == "0" || r["err"] == std::to_string(ECONNRESET) || r["err"] == std::to_string(EPIPE))
        << vm.all;
    printf("[ info ] peer reset: moved %s, errno %s\n", r["moved"].c_str(), r["err"].c_str());
}

// The engine dies (SIGKILL) while it sends a file to a client: dom0 had taken the connection
// over (VPIPE_EPF_TAKEN in the request's area), so the guest must not restore the state it froze
// (dom0 sent bytes since): the call fails with ECONNABORTED (no fallback), the descriptor is a
// reset socket, the client holds an exact prefix of the file and then sees the end of the
// connection. The engine started again removes what the dead one left (steering), the agent
// reconnects, and the next offload works.
TEST_F(Sockets, EngineKilledMidFileToSocket) {
    const uint64_t len = 64u << 20, pause_at = 8u << 20;
    const std::string resume = tmp_ + "/resume-" + std::to_string(::getpid());
    int p = port();
    Proc vm("vm1", "vm-serve-one-call", {"port=" + std::to_string(p), "file=" + disk_ + "/f64m"});
    ASSERT_EQ(vm.line("READY"), "READY") << vm.all;
    Proc cl("client", "client-pause-get",
            {"port=" + std::to_string(p), "seed=" + std::to_string(kSeed), "len=" + std::to_string(len),
             "pause_at=" + std::to_string(pause_at), "resume=" + resume});
    ASSERT_EQ(cl.line("PAUSED").rfind("PAUSED", 0), 0u) << cl.all;
    // dom0 is blocked on the client's closed window now, holding the connection
    ASSERT_GE(engine_stats()["sockets"].value("shadow_sockets", 0), 1) << engine_stats().dump();
    auto rs = lab({"restart-engine", "--kill"});
    ASSERT_EQ(rs.status, 0) << rs.all();
    auto r = fields(vm.line("RESULT"));
    EXPECT_EQ(r["ret"], "-1") << vm.all;
    EXPECT_EQ(r["err"], std::to_string(ECONNABORTED)) << vm.all;
    // the descriptor is cleanly closed, not a stale connection the client no longer follows
    EXPECT_EQ(r["next_send"], "-1") << vm.all;
    EXPECT_TRUE(r["next_err"] == std::to_string(ECONNRESET) || r["next_err"] == std::to_string(EPIPE)) << vm.all;
    std::ofstream(resume).put('1');
    auto c = fields(cl.line("RESULT"));
    cl.wait();
    vm.wait();
    unlink(resume.c_str());
    EXPECT_EQ(c["mismatch"], "-1") << cl.all;  // whatever arrived is the file's prefix
    const uint64_t got = std::stoull(c["got"]);
    EXPECT_GE(got, pause_at) << cl.all;
    EXPECT_LT(got, len) << cl.all;  // nobody finished the transfer behind the application's back
    EXPECT_TRUE(c["end"] == "0" || c["end"] == std::to_string(ECONNRESET)) << cl.all;
    // the new engine: the VM's agent reconnects (it retries by itself), then an offload works
    ASSERT_TRUE(vm1_reconnected()) << engine_stats().dump();
    auto again = serve("f1m", "0:1048577:1048577");
    ASSERT_EQ(again.size(), 1u);
    EXPECT_EQ(again[0]["offloaded"], "1048577");
    // (TearDown: no shadow, no steering element, no guest block left)
}

// A clean stop (SIGTERM) mid file -> socket: the engine hands the connection back with its
// final state, so nothing is lost: the call returns a short count, the application sends the
// rest itself on the same descriptor, and the client gets the whole file, byte-exact.
TEST_F(Sockets, EngineStoppedMidFileToSocket) {
    const uint64_t len = 64u << 20, pause_at = 8u << 20;
    const std::string resume = tmp_ + "/resume-term-" + std::to_string(::getpid());
    int p = port();
    Proc vm("vm1", "vm-serve-one-call", {"port=" + std::to_string(p), "file=" + disk_ + "/f64m", "finish=1"});
    ASSERT_EQ(vm.line("READY"), "READY") << vm.all;
    Proc cl("client", "client-pause-get",
            {"port=" + std::to_string(p), "seed=" + std::to_string(kSeed), "len=" + std::to_string(len),
             "pause_at=" + std::to_string(pause_at), "resume=" + resume});
    ASSERT_EQ(cl.line("PAUSED").rfind("PAUSED", 0), 0u) << cl.all;
    ASSERT_GE(engine_stats()["sockets"].value("shadow_sockets", 0), 1) << engine_stats().dump();
    // the engine's stop waits for the hand-back, which waits for the client: resume it meanwhile
    std::thread resumer([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(300));  // a client that pauses: the point
        std::ofstream(resume).put('1');
    });
    auto rs = lab({"restart-engine"});
    resumer.join();
    ASSERT_EQ(rs.status, 0) << rs.all();
    auto r = fields(vm.line("RESULT"));
    auto c = fields(cl.line("RESULT"));
    cl.wait();
    vm.wait();
    unlink(resume.c_str());
    printf("[ info ] engine stopped mid file->socket: the call returned %s, the guest sent %s more\n",
           r["ret"].c_str(), r["next_send"].c_str());
    const long long ret = std::stoll(r["ret"]);
    EXPECT_GT(ret, 0) << vm.all;
    EXPECT_EQ(std::stoll(r["next_send"]), static_cast<long long>(len) - ret) << vm.all;
    EXPECT_EQ(c["got"], std::to_string(len)) << cl.all;
    EXPECT_EQ(c["mismatch"], "-1") << cl.all;
    EXPECT_EQ(c["end"], "0") << cl.all;
    ASSERT_TRUE(vm1_reconnected()) << engine_stats().dump();
}

// The same for socket -> file: dom0 acknowledged bytes it may not have written when it died.
// The call fails with ECONNABORTED, the descriptor is reset (the client's next sends fail),
// the file holds no byte that is not the stream's at that offset, and nothing is left held.
TEST_F(Sockets, EngineKilledMidSocketToFile) {
    const uint64_t len = 64u << 20, pause_at = 8u << 20;
    const std::string resume = tmp_ + "/resume-s2f-" + std::to_string(::getpid());
    const std::string file = disk_ + "/killed-s2f";
    int p = port();
    Proc vm("vm1", "vm-recv-one-call", {"port=" + std::to_string(p), "file=" + file, "len=" + std::to_string(len)});
    ASSERT_EQ(vm.line("READY"), "READY") << vm.all;
    Proc cl("client", "client-pause-send",
            {"port=" + std::to_string(p), "seed=" + std::to_string(kSeed), "len=" + std::to_string(len),
             "pause_at=" + std::to_string(pause_at), "resume=" + resume});
    ASSERT_EQ(cl.line("PAUSED"), "PAUSED") << cl.all;
    // the client's 8 MiB may sit in buffers before the hand-over: wait until dom0 holds the flow
    const auto until = Clock::now() + std::chrono::seconds(20);
    while (engine_stats()["sockets"].value("shadow_sockets", 0) < 1 && Clock::now() < until)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));  // polling the engine
    ASSERT_GE(engine_stats()["sockets"].value("shadow_sockets", 0), 1) << engine_stats().dump();
    auto rs = lab({"restart-engine", "--kill"});
    ASSERT_EQ(rs.status, 0) << rs.all();
    auto r = fields(vm.line("RESULT"));
    EXPECT_EQ(r["ret"], "-1") << vm.all;
    EXPECT_EQ(r["err"], std::to_string(ECONNABORTED)) << vm.all;
    EXPECT_EQ(r["next_send"], "-1") << vm.all;
    EXPECT_TRUE(r["next_err"] == std::to_string(ECONNRESET) || r["next_err"] == std::to_string(EPIPE)) << vm.all;
    std::ofstream(resume).put('1');
    auto c = fields(cl.line("RESULT"));
    cl.wait();
    vm.wait();
    unlink(resume.c_str());
    // the client learns the connection is gone: its sends fail before the end of the stream
    EXPECT_LT(std::stoull(c["sent"]), len) << cl.all;
    EXPECT_TRUE(c["end"] == std::to_string(ECONNRESET) || c["end"] == std::to_string(EPIPE)) << cl.all;
    // the file: no byte that is not the stream's at its offset, and no more than was sent
    std::ifstream in(file, std::ios::binary);
    std::vector<uint8_t> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_LE(data.size(), pause_at);
    EXPECT_EQ(check_pattern(kSeed, 0, data.data(), data.size()), -1) << data.size() << " bytes";
    printf("[ info ] engine killed mid socket->file: the file kept %zu bytes, the client sent %s\n", data.size(),
           c["sent"].c_str());
    unlink(file.c_str());
    ASSERT_TRUE(vm1_reconnected()) << engine_stats().dump();
}

// And socket -> socket: both connections were dom0's. Both descriptors come back reset, the
// far end holds an exact prefix of what the client sent, and the client's sender learns.
TEST_F(Sockets, EngineKilledMidSocketToSocket) {
    const uint64_t len = 64u << 20, pause_at = 8u << 20;
    const std::string resume = tmp_ + "/resume-s2s-" + std::to_string(::getpid());
    int p = port(), to = port();
    Proc vm("vm1", "vm-relay-one-call",
            {"port=" + std::to_string(p), "to=" + std::to_string(to), "len=" + std::to_string(len)});
    ASSERT_EQ(vm.line("READY"), "READY") << vm.all;
    Proc cl("client", "client-relay-pause",
            {"port=" + std::to_string(p), "to=" + std::to_string(to), "seed=" + std::to_string(kSeed),
             "len=" + std::to_string(len), "pause_at=" + std::to_string(pause_at), "resume=" + resume});
    ASSERT_EQ(cl.line("PAUSED"), "PAUSED") << cl.all;
    const auto until = Clock::now() + std::chrono::seconds(20);
    while (engine_stats()["sockets"].value("shadow_sockets", 0) < 2 && Clock::now() < until)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));  // polling the engine
    ASSERT_EQ(engine_stats()["sockets"].value("shadow_sockets", 0), 2) << engine_stats().dump();
    auto rs = lab({"restart-engine", "--kill"});
    ASSERT_EQ(rs.status, 0) << rs.all();
    auto r = fields(vm.line("RESULT"));
    EXPECT_EQ(r["ret"], "-1") << vm.all;
    EXPECT_EQ(r["err"], std::to_string(ECONNABORTED)) << vm.all;
    for (const char* side : {"in", "out"}) {
        EXPECT_EQ(r[std::string(side) + "_send"], "-1") << side << "\n" << vm.all;
        const std::string e = r[std::string(side) + "_err"];
        EXPECT_TRUE(e == std::to_string(ECONNRESET) || e == std::to_string(EPIPE)) << side << "\n" << vm.all;
    }
    std::ofstream(resume).put('1');
    auto c = fields(cl.line("RESULT"));
    cl.wait();
    vm.wait();
    unlink(resume.c_str());
    EXPECT_EQ(c["mismatch"], "-1") << cl.all;
    EXPECT_GE(std::stoull(c["got"]), pause_at) << cl.all;
    EXPECT_LT(std::stoull(c["got"]), len) << cl.all;
    EXPECT_TRUE(c["end"] == "0" || c["end"] == std::to_string(ECONNRESET)) << cl.all;
    EXPECT_LT(std::stoull(c["sent"]), len) << cl.all;
    EXPECT_TRUE(c["send_end"] == std::to_string(ECONNRESET) || c["send_end"] == std::to_string(EPIPE)) << cl.all;
    ASSERT_TRUE(vm1_reconnected()) << engine_stats().dump();
}

// ---- the engine hangs (vpiped SIGSTOPped in dom0) under the agent's request_timeout_ms -------
// The agent's watchdog posts a NOP after half the bound, gets no answer, declares the engine
// unresponsive after the bound (counted in its engine_timeouts) and drops the channel: the
// endpoint dom0 had taken is lost to the application (ECONNABORTED, a reset socket), never
// restored from the state the guest froze, whatever the engine does when it runs again.

// file -> socket: the engine is continued afterwards; it finds the channel gone and ends the
// connection it holds (it may send more of the file first: the client sees an exact prefix,
// then the end). The agent reconnects, the next offload works, nothing is left.
TEST_F(Sockets, EngineHungMidFileToSocket) {
    ShortAgentTimeout bound(kHangBoundMs);
    ASSERT_EQ(bound.error, "");
    ASSERT_TRUE(vm1_reconnected()) << engine_stats().dump();
    const long long t0 = vm1_engine_timeouts();
    ASSERT_GE(t0, 0);
    const uint64_t len = 64u << 20, pause_at = 8u << 20;
    const std::string resume = tmp_ + "/resume-hang-f2s-" + std::to_string(::getpid());
    int p = port();
    Proc vm("vm1", "vm-serve-one-call", {"port=" + std::to_string(p), "file=" + disk_ + "/f64m"});
    ASSERT_EQ(vm.line("READY"), "READY") << vm.all;
    Proc cl("client", "client-pause-get",
            {"port=" + std::to_string(p), "seed=" + std::to_string(kSeed), "len=" + std::to_string(len),
             "pause_at=" + std::to_string(pause_at), "resume=" + resume});
    ASSERT_EQ(cl.line("PAUSED").rfind("PAUSED", 0), 0u) << cl.all;
    ASSERT_GE(engine_stats()["sockets"].value("shadow_sockets", 0), 1) << engine_stats().dump();
    EngineHang hang(engine_pid());
    ASSERT_TRUE(hang.stopped);
    auto r = fields(line_within(vm, "RESULT"));   // the agent's bound ends the call
    const long long t1 = vm1_engine_timeouts();
    hang.resume();
    printf("[ info ] engine hung mid file->socket: the call returned %s errno %s; agent engine_timeouts %lld -> %lld\n",
           r["ret"].c_str(), r["err"].c_str(), t0, t1);
    EXPECT_EQ(t1, t0 + 1);
    EXPECT_EQ(r["ret"], "-1") << vm.all;
    EXPECT_EQ(r["err"], std::to_string(ECONNABORTED)) << vm.all;
    EXPECT_EQ(r["next_send"], "-1") << vm.all;
    EXPECT_TRUE(r["next_err"] == std::to_string(ECONNRESET) || r["next_err"] == std::to_string(EPIPE)) << vm.all;
    std::ofstream(resume).put('1');
    auto c = fields(line_within(cl, "RESULT"));
    cl.wait();
    vm.wait();
    unlink(resume.c_str());
    printf("[ info ] engine hung mid file->socket: the client got %s bytes, end %s\n", c["got"].c_str(), c["end"].c_str());
    ASSERT_FALSE(c.empty()) << "the client was not told the end of the connection within 30 s\n" << cl.all;
    EXPECT_EQ(c["mismatch"], "-1") << cl.all;  // whatever arrived is the file's prefix
    EXPECT_GE(std::stoull(c["got"]), pause_at) << cl.all;
    EXPECT_LE(std::stoull(c["got"]), len) << cl.all;
    EXPECT_TRUE(c["end"] == "0" || c["end"] == std::to_string(ECONNRESET)) << cl.all;
    ASSERT_TRUE(dom0_idle()) << engine_stats().dump();
    ASSERT_TRUE(vm1_reconnected()) << engine_stats().dump();
    auto again = serve("f1m", "0:1048577:1048577");
    ASSERT_EQ(again.size(), 1u);
    EXPECT_EQ(again[0]["offloaded"], "1048577");
}

// socket -> file: dom0 had acknowledged stream bytes it may not have written. The hung engine
// is killed and restarted (continued instead: the next test). The file holds no byte that is not
// the stream's, the client learns the connection is gone, the agent reconnects.
TEST_F(Sockets, EngineHungMidSocketToFile) {
    ShortAgentTimeout bound(kHangBoundMs);
    ASSERT_EQ(bound.error, "");
    ASSERT_TRUE(vm1_reconnected()) << engine_stats().dump();
    const long long t0 = vm1_engine_timeouts();
    ASSERT_GE(t0, 0);
    const uint64_t len = 64u << 20, pause_at = 8u << 20;
    const std::string resume = tmp_ + "/resume-hang-s2f-" + std::to_string(::getpid());
    const std::string file = disk_ + "/hung-s2f";
    int p = port();
    Proc vm("vm1", "vm-recv-one-call", {"port=" + std::to_string(p), "file=" + file, "len=" + std::to_string(len)});
    ASSERT_EQ(vm.line("READY"), "READY") << vm.all;
    Proc cl("client", "client-pause-send",
            {"port=" + std::to_string(p), "seed=" + std::to_string(kSeed), "len=" + std::to_string(len),
             "pause_at=" + std::to_string(pause_at), "resume=" + resume});
    ASSERT_EQ(cl.line("PAUSED"), "PAUSED") << cl.all;
    ASSERT_TRUE(dom0_holds(1)) << engine_stats().dump();
    EngineHang hang(engine_pid());
    ASSERT_TRUE(hang.stopped);
    auto r = fields(line_within(vm, "RESULT"));
    const long long t1 = vm1_engine_timeouts();
    auto rs = lab({"restart-engine", "--kill"});   // SIGKILL ends a stopped process too
    hang.stopped = false;
    ASSERT_EQ(rs.status, 0) << rs.all();
    printf("[ info ] engine hung mid socket->file: the call returned %s errno %s; agent engine_timeouts %lld -> %lld\n",
           r["ret"].c_str(), r["err"].c_str(), t0, t1);
    EXPECT_EQ(t1, t0 + 1);
    EXPECT_EQ(r["ret"], "-1") << vm.all;
    EXPECT_EQ(r["err"], std::to_string(ECONNABORTED)) << vm.all;
    EXPECT_EQ(r["next_send"], "-1") << vm.all;
    EXPECT_TRUE(r["next_err"] == std::to_string(ECONNRESET) || r["next_err"] == std::to_string(EPIPE)) << vm.all;
    std::ofstream(resume).put('1');
    auto c = fields(line_within(cl, "RESULT"));
    cl.wait();
    vm.wait();
    unlink(resume.c_str());
    ASSERT_FALSE(c.empty()) << "the client was not told the end of the connection within 30 s\n" << cl.all;
    EXPECT_LT(std::stoull(c["sent"]), len) << cl.all;
    EXPECT_TRUE(c["end"] == std::to_string(ECONNRESET) || c["end"] == std::to_string(EPIPE)) << cl.all;
    std::vector<uint8_t> data = file_bytes(file);
    printf("[ info ] engine hung mid socket->file: the file kept %zu bytes, the client sent %s\n", data.size(),
           c["sent"].c_str());
    EXPECT_LE(data.size(), pause_at);
    EXPECT_EQ(check_pattern(kSeed, 0, data.data(), data.size()), -1) << data.size() << " bytes";
    unlink(file.c_str());
    ASSERT_TRUE(vm1_reconnected()) << engine_stats().dump();
    std::map<std::string, std::string> res;
    ASSERT_NO_FATAL_FAILURE(socket_to_file(disk_ + "/after-hang-s2f", 1u << 20, 1u << 20, kSeed + 1, &res));
    EXPECT_EQ(res["offloaded"], std::to_string(1u << 20)) << res["vm"];
}

// socket -> file, the hung engine CONTINUED: the client paused once it had sent 8 MiB and dom0
// had written them; the engine is stopped, the agent declares it unresponsive (the call fails
// with ECONNABORTED), marks the request abandoned in its header and cuts the file; then the
// engine is continued and the client sends the rest into the connection the engine still holds.
// The engine must write none of it into the file's blocks (given back): it stops the request
// at its next write batch and counts it abandoned; its bytes written for socket -> file stay
// what they were before the hang. The file keeps only a prefix of the stream.
TEST_F(Sockets, EngineHungThenContinuedMidSocketToFileWritesNothingMore) {
    ShortAgentTimeout bound(kHangBoundMs);
    ASSERT_EQ(bound.error, "");
    ASSERT_TRUE(vm1_reconnected()) << engine_stats().dump();
    auto vm1 = []() -> nlohmann::json {
        const nlohmann::json st = engine_stats();
        if (st.contains("vms"))
            for (const auto& v : st["vms"])
                if (v.value("name", "") == "vm1") return v;
        return nlohmann::json::object();
    };
    auto s2f_bytes = [](const nlohmann::json& v) -> uint64_t {
        return v.contains("bytes") ? v["bytes"].value("socket_to_file", uint64_t{0}) : 0;
    };
    const long long t0 = vm1_engine_timeouts();
    ASSERT_GE(t0, 0);
    const nlohmann::json e0 = vm1();
    const uint64_t b0 = s2f_bytes(e0), abandoned0 = e0.value("abandoned", uint64_t{0});
    const uint64_t len = 64u << 20, pause_at = 8u << 20;
    const std::string resume = tmp_ + "/resume-hang-s2f-cont-" + std::to_string(::getpid());
    const std::string file = disk_ + "/hung-s2f-cont";
    int p = port();
    Proc vm("vm1", "vm-recv-one-call", {"port=" + std::to_string(p), "file=" + file, "len=" + std::to_string(len)});
    ASSERT_EQ(vm.line("READY"), "READY") << vm.all;
    Proc cl("client", "client-pause-send",
            {"port=" + std::to_string(p), "seed=" + std::to_string(kSeed), "len=" + std::to_string(len),
             "pause_at=" + std::to_string(pause_at), "resume=" + resume});
    ASSERT_EQ(cl.line("PAUSED"), "PAUSED") << cl.all;
    ASSERT_TRUE(dom0_holds(1)) << engine_stats().dump();
    // dom0 has written everything the client sent before its pause
    const auto until = Clock::now() + std::chrono::seconds(20);
    while (s2f_bytes(vm1()) - b0 < pause_at && Clock::now() < until)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));  // polling the engine
    const uint64_t before = s2f_bytes(vm1()) - b0;
    ASSERT_EQ(before, pause_at) << "dom0 did not write what the client sent before its pause: " << vm1().dump();
    EngineHang hang(engine_pid());
    ASSERT_TRUE(hang.stopped);
    auto r = fields(line_within(vm, "RESULT"));   // the agent's bound ends the call
    const long long t1 = vm1_engine_timeouts();
    hang.resume();                                 // continued, not killed
    std::ofstream(resume).put('1');               // the client sends the rest
    auto c = fields(line_within(cl, "RESULT"));
    cl.wait();
    vm.wait();
    unlink(resume.c_str());
    ASSERT_TRUE(dom0_idle()) << engine_stats().dump();
    const nlohmann::json e1 = vm1();
    const uint64_t after = s2f_bytes(e1) - b0, abandoned1 = e1.value("abandoned", uint64_t{0});
    std::vector<uint8_t> data = file_bytes(file);
    printf("[ info ] engine hung then continued mid socket->file: the call returned %s errno %s; engine_timeouts "
           "%lld -> %lld; client sent %s; engine wrote %llu bytes before the hang, %llu in all; abandoned %llu -> "
           "%llu; the file kept %zu bytes\n",
           r["ret"].c_str(), r["err"].c_str(), t0, t1, c["sent"].c_str(), static_cast<unsigned long long>(before),
           static_cast<unsigned long long>(after), static_cast<unsigned long long>(abandoned0),
           static_cast<unsigned long long>(abandoned1), data.size());
    EXPECT_EQ(t1, t0 + 1);
    EXPECT_EQ(r["ret"], "-1") << vm.all;
    EXPECT_EQ(r["err"], std::to_string(ECONNABORTED)) << vm.all;
    EXPECT_EQ(after, before) << "the continued engine wrote more of the abandoned request into the VM's disk";
    EXPECT_EQ(abandoned1, abandoned0 + 1) << "the engine did not report the request abandoned: " << e1.dump();
    ASSERT_FALSE(c.empty()) << "the client was not told the end of the connection within 30 s\n" << cl.all;
    EXPECT_LE(data.size(), pause_at);
    EXPECT_EQ(check_pattern(kSeed, 0, data.data(), data.size()), -1) << data.size() << " bytes";
    unlink(file.c_str());
    ASSERT_TRUE(vm1_reconnected()) << engine_stats().dump();
    std::map<std::string, std::string> res;
    ASSERT_NO_FATAL_FAILURE(socket_to_file(disk_ + "/after-hang-s2f-cont", 1u << 20, 1u << 20, kSeed + 1, &res));
    EXPECT_EQ(res["offloaded"], std::to_string(1u << 20)) << res["vm"];
    expect_nothing_left_behind();
}

// socket -> socket: both connections were dom0's; both come back reset. The engine is continued
// afterwards: it finds the channel gone and ends both connections (it may relay more first: the
// far end holds an exact prefix of the stream, then the end). The agent reconnects.
TEST_F(Sockets, EngineHungMidSocketToSocket) {
    ShortAgentTimeout bound(kHangBoundMs);
    ASSERT_EQ(bound.error, "");
    ASSERT_TRUE(vm1_reconnected()) << engine_stats().dump();
    const long long t0 = vm1_engine_timeouts();
    ASSERT_GE(t0, 0);
    const uint64_t len = 64u << 20, pause_at = 8u << 20;
    const std::string resume = tmp_ + "/resume-hang-s2s-" + std::to_string(::getpid());
    int p = port(), to = port();
    Proc vm("vm1", "vm-relay-one-call",
            {"port=" + std::to_string(p), "to=" + std::to_string(to), "len=" + std::to_string(len)});
    ASSERT_EQ(vm.line("READY"), "READY") << vm.all;
    Proc cl("client", "client-relay-pause",
            {"port=" + std::to_string(p), "to=" + std::to_string(to), "seed=" + std::to_string(kSeed),
             "len=" + std::to_string(len), "pause_at=" + std::to_string(pause_at), "resume=" + resume});
    ASSERT_EQ(cl.line("PAUSED"), "PAUSED") << cl.all;
    ASSERT_TRUE(dom0_holds(2)) << engine_stats().dump();
    EngineHang hang(engine_pid());
    ASSERT_TRUE(hang.stopped);
    auto r = fields(line_within(vm, "RESULT"));
    const long long t1 = vm1_engine_timeouts();
    hang.resume();
    printf("[ info ] engine hung mid socket->socket: the call returned %s errno %s; agent engine_timeouts %lld -> "
           "%lld\n",
           r["ret"].c_str(), r["err"].c_str(), t0, t1);
    EXPECT_EQ(t1, t0 + 1);
    EXPECT_EQ(r["ret"], "-1") << vm.all;
    EXPECT_EQ(r["err"], std::to_string(ECONNABORTED)) << vm.all;
    for (const char* side : {"in", "out"}) {
        EXPECT_EQ(r[std::string(side) + "_send"], "-1") << side << "\n" << vm.all;
        const std::string e = r[std::string(side) + "_err"];
        EXPECT_TRUE(e == std::to_string(ECONNRESET) || e == std::to_string(EPIPE)) << side << "\n" << vm.all;
    }
    std::ofstream(resume).put('1');
    auto c = fields(line_within(cl, "RESULT"));
    cl.wait();
    vm.wait();
    unlink(resume.c_str());
    ASSERT_FALSE(c.empty()) << "the client was not told the end of the connections within 30 s\n" << cl.all;
    printf("[ info ] engine hung mid socket->socket: the far end got %s bytes (end %s), the client sent %s (end %s)\n",
           c["got"].c_str(), c["end"].c_str(), c["sent"].c_str(), c["send_end"].c_str());
    EXPECT_EQ(c["mismatch"], "-1") << cl.all;
    EXPECT_GE(std::stoull(c["got"]), pause_at) << cl.all;
    EXPECT_LE(std::stoull(c["got"]), len) << cl.all;
    EXPECT_TRUE(c["end"] == "0" || c["end"] == std::to_string(ECONNRESET)) << cl.all;
    ASSERT_TRUE(dom0_idle()) << engine_stats().dump();
    ASSERT_TRUE(vm1_reconnected()) << engine_stats().dump();
    std::map<std::string, std::string> res;
    ASSERT_NO_FATAL_FAILURE(socket_to_socket(1u << 20, &res));
    EXPECT_EQ(res["offloaded"], std::to_string(1u << 20)) << res["vm"];
}

// ---- more than one chunk (64 MiB) per call: the agent hands over again and again, and the
// application sees ONE call moving everything (a short count would mean EOF / peer gone)

TEST_F(Sockets, FileToSocketMultiChunkOneCall) {
    const uint64_t len = uint64_t{100} << 20;
    const std::string path = disk_ + "/f100m";
    ASSERT_EQ(write_pattern_file(path, kSeed, len), "");
    auto r = serve("f100m", "0:" + std::to_string(len) + ":" + std::to_string(len));
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0]["moved"], std::to_string(len));
    EXPECT_EQ(r[0]["offloaded"], std::to_string(len));
    EXPECT_EQ(r[0]["calls"], "1");
    EXPECT_EQ(r[0]["err"], "0");
    unlink(path.c_str());
}

TEST_F(Sockets, SocketToFileMultiChunkOneCall) {
    const uint64_t len = uint64_t{100} << 20;
    std::map<std::string, std::string> res;
    ASSERT_NO_FATAL_FAILURE(socket_to_file(disk_ + "/in-multi", len, len, kSeed + 7, &res));
    EXPECT_EQ(res["err"], "0") << res["vm"];
    EXPECT_EQ(res["calls"], "1") << res["vm"];
}

TEST_F(Sockets, SocketToSocketMultiChunkOneCall) {
    std::map<std::string, std::string> res;
    ASSERT_NO_FATAL_FAILURE(socket_to_socket(uint64_t{100} << 20, &res));
    EXPECT_EQ(res["err"], "0") << res["vm"];
    EXPECT_EQ(res["calls"], "1") << res["vm"];
}

// The peer sends `sent` bytes and then FIN while the VM asks for `want` > sent: the call
// returns the short count `sent`, the next one 0 (EOF); the connection still sends.
TEST_F(Sockets, PeerFinMidOperation) {
    for (auto [sent, want] : std::vector<std::pair<uint64_t, uint64_t>>{{uint64_t{8} << 20, uint64_t{16} << 20},
                                                                        {uint64_t{70} << 20, uint64_t{128} << 20}}) {
        SCOPED_TRACE(sent);
        std::map<std::string, std::string> res;
        ASSERT_NO_FATAL_FAILURE(socket_to_file(disk_ + "/in-fin", want, sent, kSeed + 9, &res, 0, /*fin=*/true));
        EXPECT_EQ(res["err"], "0") << res["vm"];
        EXPECT_EQ(res["calls"], "2") << res["vm"];  // the short count, then 0
    }
}

TEST_F(Sockets, HandoverLatencyAndThroughput) {
    int iters = 200;
    if (const char* e = getenv("VPIPE_HANDOVER_ITERS")) iters = std::max(1, atoi(e));
    std::string lat;
    auto r = serve("f4k", "0:1:1:1", static_cast<uint64_t>(iters), &lat);
    EXPECT_EQ(r.size(), static_cast<size_t>(iters));
    auto l = fields(lat);
    printf("[ info ] 1-byte file->socket on one connection, %d ops: p50 %s us, p99 %s us\n", iters,
           l["p50"].c_str(), l["p99"].c_str());
    // throughput: 64 MiB file->socket, vPipe vs plain sendfile() in the VM, same lab, same run
    // alternating, 3 of each (single runs vary by +-30 % on a shared host): the medians
    std::vector<double> tv, tp;
    for (int i = 0; i < 3; ++i) {
        std::string lv, lp;
        serve("f64m", "0:67108864:67108864:1", 1, &lv, false);
        serve("f64m", "0:67108864:67108864:1", 1, &lp, true);
        tv.push_back(std::stod(fields(lv)["secs"]));
        tp.push_back(std::stod(fields(lp)["secs"]));
    }
    const double sv = pct(tv, 0.5), sp = pct(tp, 0.5);
    printf("[ info ] 64 MiB file->socket, median of 3: vPipe %.1f MB/s, guest sendfile %.1f MB/s (ratio %.2f)\n",
           64 * 1.048576 / sv, 64 * 1.048576 / sp, sp / sv);
}

// The engine's socket timeout shortened to 2 s for this suite (its own lab: ctest runs each case
// in its own process; the variable reaches vpiped through vpipe-lab up).
// nftables in the client's namespace for one test (the lab host has no netem): removed at the
// end of the scope, whatever happens.
class ClientNft {
public:
    explicit ClientNft(const std::string& rules) {
        ok_ = lab({"client", "--", "nft", "add table inet vpipe_test_net; " + rules}).status == 0;
    }
    ~ClientNft() { lab({"client", "--", "nft", "delete table inet vpipe_test_net"}); }
    bool ok() const { return ok_; }

private:
    bool ok_ = false;
};

// The client pipelines 40 requests (head + 64 KiB + trailer each) on one connection: most of
// them arrive while an earlier body is being sent by dom0, travel back with the connection as
// unread bytes, and must be read by the VM in order, each exactly once.
TEST_F(Sockets, PipelinedRequestsComeBackUnreadAndInOrder) {
    std::string reqs;
    for (int i = 0; i < 40; ++i) {
        const uint64_t off = static_cast<uint64_t>(i) * 65536 + static_cast<uint64_t>(i) * 7;
        reqs += (i ? "," : "") + std::to_string(off) + ":65536:65536";
    }
    std::string cres;
    auto r = serve("f64m", reqs, 1, nullptr, false, &cres, {"pipeline=1"});
    ASSERT_EQ(r.size(), 40u);
    for (const auto& x : r) {
        EXPECT_EQ(x.at("moved"), "65536");
        EXPECT_EQ(x.at("err"), "0");
        EXPECT_EQ(x.at("path"), "1");  // offloaded
    }
}

// Nothing is acknowledged when the hand-over begins: the client's pure ACKs are dropped, only
// acknowledgements riding on its next request get through. Each response head is unacknowledged
// when the offload starts (it travels to dom0 in the carried send queue, to be retransmitted
// there), each body is unacknowledged when the connection comes back. Byte-exact anyway.
TEST_F(Sockets, NothingAcknowledgedAtTheHandOver) {
    ClientNft nft(
        "add chain inet vpipe_test_net out { type filter hook output priority 0; }; "
        "add rule inet vpipe_test_net out ip daddr 10.199.0.11 tcp flags & (syn | fin | rst | psh) == 0 drop");
    ASSERT_TRUE(nft.ok());
    std::string reqs;
    for (int i = 0; i < 20; ++i) reqs += (i ? "," : "") + std::to_string(i * 5000) + ":2000:2000";
    auto r = serve("f64m", reqs);
    ASSERT_EQ(r.size(), 20u);
    for (const auto& x : r) {
        EXPECT_EQ(x.at("moved"), "2000");
        EXPECT_EQ(x.at("err"), "0");
        EXPECT_EQ(x.at("path"), "1");
    }
}

// 1 % of the client's segments are lost each way (nft numgen; the lab host's kernel has no
// netem, so no reordering) while all three socket operations hand their connections over
// again and again: byte-exact at both ends, nothing left behind (TearDown).
TEST_F(Sockets, OnePercentLossDuringHandOvers) {
    ClientNft nft(
        "add chain inet vpipe_test_net out { type filter hook output priority 0; }; "
        "add chain inet vpipe_test_net in { type filter hook input priority 0; }; "
        "add rule inet vpipe_test_net out ip daddr 10.199.0.11 numgen random mod 100 < 1 drop; "
        "add rule inet vpipe_test_net in ip saddr 10.199.0.11 numgen random mod 100 < 1 drop");
    ASSERT_TRUE(nft.ok());
    // file -> socket: 100 hand-overs on one connection
    std::string reqs;
    for (int i = 0; i < 100; ++i) reqs += (i ? "," : "") + std::to_string(i * 65536) + ":65536:65536";
    auto r = serve("f64m", reqs);
    ASSERT_EQ(r.size(), 100u);
    for (const auto& x : r) EXPECT_EQ(x.at("moved"), "65536");
    // socket -> file
    std::map<std::string, std::string> res;
    ASSERT_NO_FATAL_FAILURE(socket_to_file(disk_ + "/in-loss", 16 << 20, 16 << 20, kSeed + 77, &res));
    // socket -> socket
    ASSERT_NO_FATAL_FAILURE(socket_to_socket(8 << 20, &res));
}

// Fault matrix (docs/faults.md), 5 % loss on the client link, each way (nft numgen as above:
// the lab host's kernel has no sch_netem, so no tc netem and no reordering), for the three
// socket operations: one long hand-over each and many short ones for file -> socket, every
// byte exact at both ends, nothing left behind (TearDown).
TEST_F(Sockets, FivePercentLossAllSocketOperations) {
    ClientNft nft(
        "add chain inet vpipe_test_net out { type filter hook output priority 0; }; "
        "add chain inet vpipe_test_net in { type filter hook input priority 0; }; "
        "add rule inet vpipe_test_net out ip daddr 10.199.0.11 numgen random mod 100 < 5 drop; "
        "add rule inet vpipe_test_net in ip saddr 10.199.0.11 numgen random mod 100 < 5 drop");
    ASSERT_TRUE(nft.ok());
    // file -> socket: 40 hand-overs on one connection, then one of 16 MiB
    std::string reqs;
    for (int i = 0; i < 40; ++i) reqs += (i ? "," : "") + std::to_string(i * 65536) + ":65536:65536";
    reqs += ",1048576:16777216:16777216";
    auto r = serve("f64m", reqs);
    ASSERT_EQ(r.size(), 41u);
    for (size_t i = 0; i < 40; ++i) EXPECT_EQ(r[i].at("moved"), "65536");
    EXPECT_EQ(r[40].at("moved"), "16777216");
    for (const auto& x : r) EXPECT_EQ(x.at("err"), "0");
    // socket -> file
    std::map<std::string, std::string> res;
    ASSERT_NO_FATAL_FAILURE(socket_to_file(disk_ + "/in-loss5", 8 << 20, 8 << 20, kSeed + 78, &res));
    // socket -> socket
    ASSERT_NO_FATAL_FAILURE(socket_to_socket(4 << 20, &res));
}

// Fault matrix (docs/faults.md), socket -> file x the disk fills up mid-operation: the VM's
// disk has room for a little more than one hand-over window (1 GiB, VPIPE_SOCK_FILE_WINDOW) of
// a 1.5 GiB call. ext4 keeps a reserve the root agent may use (f_bfree, not f_bavail, is what
// it has), so the filler leaves f_bfree = 1 GiB + 128 MiB. The call returns a short count (or
// -1 ENOSPC if nothing moved), the file holds exactly that prefix of the stream, the socket
// stays usable and the next bytes of the stream are still readable from it.
TEST_F(Sockets, DiskFullMidSocketToFileLeavesAPrefixAndTheRestInTheSocket) {
    const uint64_t len = 1536ull << 20, unread = 1u << 20, seed = kSeed + 90;
    const std::string file = disk_ + "/full-s2f", filler = disk_ + "/full-filler";
    struct Unlink {
        std::string a, b;
        ~Unlink() {
            ::unlink(a.c_str());
            ::unlink(b.c_str());
        }  // a full disk must not outlive the test
    } guard{file, filler};
    ::sync();
    struct statvfs v{};
    ASSERT_EQ(::statvfs(disk_.c_str(), &v), 0);
    const uint64_t bfree = static_cast<uint64_t>(v.f_bfree) * v.f_frsize, keep = (1ull << 30) + (128u << 20);
    ASSERT_GT(bfree, keep + (64u << 20)) << "the VM's disk is too small for this test";
    int ff = ::open(filler.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(ff, 0);
    ASSERT_EQ(::fallocate(ff, 0, 0, static_cast<off_t>(bfree - keep)), 0) << std::strerror(errno);
    ::close(ff);
    ::sync();
    int p = port();
    Proc vm("vm1", "vm-recv-one-call",
            {"port=" + std::to_string(p), "file=" + file, "len=" + std::to_string(len),
             "unread=" + std::to_string(unread), "seed=" + std::to_string(seed)});
    ASSERT_EQ(vm.line("READY"), "READY") << vm.all;
    Proc cl("client", "client-send",
            {"port=" + std::to_string(p), "seed=" + std::to_string(seed), "len=" + std::to_string(len)});
    auto r = fields(vm.line("RESULT"));
    const std::string u = vm.line("UNREAD");
    vm.wait();
    cl.wait();
    printf("[ info ] disk full mid socket->file: ret %s errno %s, file %s bytes\n", r["ret"].c_str(), r["err"].c_str(),
           r["size"].c_str());
    const long long ret = std::stoll(r["ret"]);
    if (ret < 0) {
        EXPECT_EQ(r["err"], std::to_string(ENOSPC)) << vm.all;
    } else {
        EXPECT_GT(ret, 0) << vm.all;
        EXPECT_LT(static_cast<uint64_t>(ret), len) << vm.all;
    }
    const uint64_t valid = ret > 0 ? static_cast<uint64_t>(ret) : 0;
    // the socket is usable: a send works, the next stream bytes are there, byte-exact
    EXPECT_EQ(r["next_send"], "1") << vm.all;
    EXPECT_EQ(u, "UNREAD check=-1") << vm.all;
    // the file: exactly the reported prefix
    EXPECT_EQ(r["size"], std::to_string(valid)) << vm.all;
    std::ifstream in(file, std::ios::binary);
    std::vector<uint8_t> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_EQ(data.size(), valid);
    EXPECT_EQ(check_pattern(seed, 0, data.data(), data.size()), -1) << data.size() << " bytes";
    // (TearDown: no shadow, no steering element, no guest block left)
}

// Fault matrix (docs/faults.md), file -> socket x the application SIGKILLed mid-operation: the
// VM's process dies while dom0 holds its connection (the client reads 8 MiB and pauses). What
// the peer must see: an exact prefix of the file, then the end of the connection (FIN or RST),
// never a byte that is not the file's; and nothing of the flow left anywhere (TearDown).
TEST_F(Sockets, CallerKilledMidFileToSocket) {
    const uint64_t len = 64u << 20, pause_at = 8u << 20;
    const std::string resume = tmp_ + "/resume-caller-" + std::to_string(::getpid());
    int p = port();
    Proc vm("vm1", "vm-serve-one-call", {"port=" + std::to_string(p), "file=" + disk_ + "/f64m"});
    ASSERT_EQ(vm.line("READY"), "READY") << vm.all;
    Proc cl("client", "client-pause-get",
            {"port=" + std::to_string(p), "seed=" + std::to_string(kSeed), "len=" + std::to_string(len),
             "pause_at=" + std::to_string(pause_at), "resume=" + resume});
    ASSERT_EQ(cl.line("PAUSED").rfind("PAUSED", 0), 0u) << cl.all;
    ASSERT_GE(engine_stats()["sockets"].value("shadow_sockets", 0), 1) << engine_stats().dump();
    ASSERT_EQ(::kill(vm.pid, SIGKILL), 0);  // `vpipe-lab exec` execs the helper: this is the caller
    vm.wait();
    std::ofstream(resume).put('1');
    // a peer that is never told the end would wait for ever: bounded, that is a failure too
    std::atomic<bool> done{false};
    std::thread watchdog([&done, pid = cl.pid] {
        for (int i = 0; i < 300 && !done; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
        if (!done) ::kill(pid, SIGKILL);
    });
    auto c = fields(cl.line("RESULT"));
    done = true;
    watchdog.join();
    ASSERT_FALSE(c.empty()) << "the client was not told the end of the connection within 30 s\n" << cl.all;
    cl.wait();
    unlink(resume.c_str());
    printf("[ info ] caller killed mid file->socket: the client got %s bytes, end %s\n", c["got"].c_str(),
           c["end"].c_str());
    EXPECT_EQ(c["mismatch"], "-1") << cl.all;
    EXPECT_GE(std::stoull(c["got"]), pause_at) << cl.all;
    EXPECT_LE(std::stoull(c["got"]), len) << cl.all;
    EXPECT_TRUE(c["end"] == "0" || c["end"] == std::to_string(ECONNRESET)) << cl.all;
    // dom0 let go of the flow (no shadow, no steering: TearDown), and the next offload works
    const auto until = Clock::now() + std::chrono::seconds(20);
    while (engine_stats()["sockets"].value("shadow_sockets", 0) > 0 && Clock::now() < until)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));  // polling the engine
    auto again = serve("f1m", "0:1048577:1048577");
    ASSERT_EQ(again.size(), 1u);
    EXPECT_EQ(again[0]["offloaded"], "1048577");
}

// Fault matrix (docs/faults.md), file -> socket x the guest agent (vpipe-guestd) SIGKILLed
// mid-operation, while dom0 holds the connection. The application's call fails (its agent
// connection is gone: ECONNABORTED, the connection stays where dom0 has it and is lost to the
// application), its descriptor must be usable or cleanly closed, the peer sees an exact prefix
// then the end; the restarted agent and the engine leave nothing behind (TearDown) and the next
// offload works.
TEST_F(Sockets, AgentKilledMidFileToSocket) {
    const uint64_t len = 64u << 20, pause_at = 8u << 20;
    const std::string resume = tmp_ + "/resume-agent-" + std::to_string(::getpid());
    int p = port();
    Proc vm("vm1", "vm-serve-one-call", {"port=" + std::to_string(p), "file=" + disk_ + "/f64m"});
    ASSERT_EQ(vm.line("READY"), "READY") << vm.all;
    Proc cl("client", "client-pause-get",
            {"port=" + std::to_string(p), "seed=" + std::to_string(kSeed), "len=" + std::to_string(len),
             "pause_at=" + std::to_string(pause_at), "resume=" + resume});
    ASSERT_EQ(cl.line("PAUSED").rfind("PAUSED", 0), 0u) << cl.all;
    ASSERT_GE(engine_stats()["sockets"].value("shadow_sockets", 0), 1) << engine_stats().dump();
    auto rs = lab({"restart-agent", "vm1", "--kill"});
    ASSERT_EQ(rs.status, 0) << rs.all();
    auto r = fields(vm.line("RESULT"));
    printf("[ info ] agent killed mid file->socket: the call returned %s errno %s, next send %s errno %s\n",
           r["ret"].c_str(), r["err"].c_str(), r["next_send"].c_str(), r["next_err"].c_str());
    EXPECT_EQ(r["ret"], "-1") << vm.all;
    EXPECT_EQ(r["err"], std::to_string(ECONNABORTED)) << vm.all;
    // the descriptor: a socket that reports the end, not one that sends into a stale connection
    EXPECT_EQ(r["next_send"], "-1") << vm.all;
    EXPECT_TRUE(r["next_err"] == std::to_string(ECONNRESET) || r["next_err"] == std::to_string(EPIPE)) << vm.all;
    std::ofstream(resume).put('1');
    // a peer that is never told the end would wait for ever: bounded, that is a failure too
    std::atomic<bool> done{false};
    std::thread watchdog([&done, pid = cl.pid] {
        for (int i = 0; i < 300 && !done; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
        if (!done) ::kill(pid, SIGKILL);
    });
    auto c = fields(cl.line("RESULT"));
    done = true;
    watchdog.join();
    ASSERT_FALSE(c.empty()) << "the client was not told the end of the connection within 30 s\n" << cl.all;
    cl.wait();
    vm.wait();
    unlink(resume.c_str());
    printf("[ info ] agent killed mid file->socket: the client got %s bytes, end %s\n", c["got"].c_str(),
           c["end"].c_str());
    EXPECT_EQ(c["mismatch"], "-1") << cl.all;
    EXPECT_GE(std::stoull(c["got"]), pause_at) << cl.all;
    EXPECT_LE(std::stoull(c["got"]), len) << cl.all;
    EXPECT_TRUE(c["end"] == "0" || c["end"] == std::to_string(ECONNRESET)) << cl.all;
    const auto until = Clock::now() + std::chrono::seconds(20);
    while (engine_stats()["sockets"].value("shadow_sockets", 0) > 0 && Clock::now() < until)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));  // polling the engine
    ASSERT_TRUE(vm1_reconnected()) << engine_stats().dump();
    // the restarted agent removed the dead one's flow block before any new offload
    auto g = lab({"exec", "vm1", "--", "nft", "-j", "list", "table", "ip", "vpipe_guest"});
    EXPECT_EQ(g.out.find("\"elem\""), std::string::npos) << "the dead agent's flow block is still there: " << g.out;
    auto again = serve("f1m", "0:1048577:1048577");
    ASSERT_EQ(again.size(), 1u);
    EXPECT_EQ(again[0]["offloaded"], "1048577");
}

// Fault matrix (docs/faults.md), socket -> file x the guest agent SIGKILLed while dom0 receives
// the stream (the client sent 8 MiB and pauses). The call fails with ECONNABORTED and the
// descriptor is a reset socket; dom0 resets the connection (its request's channel is gone), so
// the client learns; the file was prepared but never finished (no agent): it holds a prefix of
// the stream followed by zeros only (docs/append.md, "crash between prepare and finish"),
// never a byte that is neither; nothing is left held and the restarted agent offloads again.
TEST_F(Sockets, AgentKilledMidSocketToFile) {
    const uint64_t len = 64u << 20, pause_at = 8u << 20;
    const std::string resume = tmp_ + "/resume-agent-s2f-" + std::to_string(::getpid());
    const std::string file = disk_ + "/agent-s2f";
    int p = port();
    Proc vm("vm1", "vm-recv-one-call", {"port=" + std::to_string(p), "file=" + file, "len=" + std::to_string(len)});
    ASSERT_EQ(vm.line("READY"), "READY") << vm.all;
    Proc cl("client", "client-pause-send",
            {"port=" + std::to_string(p), "seed=" + std::to_string(kSeed), "len=" + std::to_string(len),
             "pause_at=" + std::to_string(pause_at), "resume=" + resume, "await_end=1"});
    ASSERT_EQ(cl.line("PAUSED"), "PAUSED") << cl.all;
    ASSERT_TRUE(dom0_holds(1)) << engine_stats().dump();
    auto rs = lab({"restart-agent", "vm1", "--kill"});
    ASSERT_EQ(rs.status, 0) << rs.all();
    auto r = fields(vm.line("RESULT"));
    EXPECT_EQ(r["ret"], "-1") << vm.all;
    EXPECT_EQ(r["err"], std::to_string(ECONNABORTED)) << vm.all;
    EXPECT_EQ(r["next_send"], "-1") << vm.all;
    EXPECT_TRUE(r["next_err"] == std::to_string(ECONNRESET) || r["next_err"] == std::to_string(EPIPE)) << vm.all;
    std::ofstream(resume).put('1');
    auto c = fields(line_within(cl, "RESULT"));
    ASSERT_FALSE(c.empty()) << "the client was not told the end of the connection within 30 s\n" << cl.all;
    cl.wait();
    vm.wait();
    unlink(resume.c_str());
    printf("[ info ] agent killed mid socket->file: the client sent %s (end %s), then read the end %s\n",
           c["sent"].c_str(), c["end"].c_str(), c["rend"].c_str());
    EXPECT_LE(std::stoull(c["sent"]), len) << cl.all;
    EXPECT_TRUE(c["end"] == "0" || c["end"] == std::to_string(ECONNRESET) || c["end"] == std::to_string(EPIPE))
        << cl.all;
    EXPECT_EQ(c["back"], "0") << cl.all;  // nothing but the end came back
    ASSERT_TRUE(dom0_idle()) << engine_stats().dump();
    // the file: a prefix of the stream, then zeros only (prepared, never finished)
    const std::vector<uint8_t> data = file_bytes(file);
    EXPECT_LE(data.size(), len);
    const size_t k = stream_prefix(kSeed, data);
    printf("[ info ] agent killed mid socket->file: the file holds %zu bytes, the stream's first %zu\n", data.size(), k);
    EXPECT_TRUE(std::all_of(data.begin() + static_cast<long>(k), data.end(), [](uint8_t b) { return b == 0; }))
        << "a byte past the stream's prefix (" << k << ") that is neither the stream's nor a zero";
    unlink(file.c_str());
    ASSERT_TRUE(vm1_reconnected()) << engine_stats().dump();
    auto g = lab({"exec", "vm1", "--", "nft", "-j", "list", "table", "ip", "vpipe_guest"});
    EXPECT_EQ(g.out.find("\"elem\""), std::string::npos) << "the dead agent's flow block is still there: " << g.out;
    auto again = serve("f1m", "0:1048577:1048577");
    ASSERT_EQ(again.size(), 1u);
    EXPECT_EQ(again[0]["offloaded"], "1048577");
}

// Fault matrix, socket -> socket x the guest agent SIGKILLed while dom0 relays (the far end read
// 8 MiB and pauses). The call fails with ECONNABORTED and both descriptors are reset sockets;
// the far end holds an exact prefix of what the client sent and is told the end; nothing is
// left behind and the restarted agent offloads again.
TEST_F(Sockets, AgentKilledMidSocketToSocket) {
    const uint64_t len = 64u << 20, pause_at = 8u << 20;
    const std::string resume = tmp_ + "/resume-agent-s2s-" + std::to_string(::getpid());
    int p = port(), to = port();
    Proc vm("vm1", "vm-relay-one-call",
            {"port=" + std::to_string(p), "to=" + std::to_string(to), "len=" + std::to_string(len)});
    ASSERT_EQ(vm.line("READY"), "READY") << vm.all;
    Proc cl("client", "client-relay-pause",
            {"port=" + std::to_string(p), "to=" + std::to_string(to), "seed=" + std::to_string(kSeed),
             "len=" + std::to_string(len), "pause_at=" + std::to_string(pause_at), "resume=" + resume});
    ASSERT_EQ(cl.line("PAUSED"), "PAUSED") << cl.all;
    ASSERT_TRUE(dom0_holds(2)) << engine_stats().dump();
    auto rs = lab({"restart-agent", "vm1", "--kill"});
    ASSERT_EQ(rs.status, 0) << rs.all();
    auto r = fields(vm.line("RESULT"));
    EXPECT_EQ(r["ret"], "-1") << vm.all;
    EXPECT_EQ(r["err"], std::to_string(ECONNABORTED)) << vm.all;
    for (const char* side : {"in", "out"}) {
        EXPECT_EQ(r[std::string(side) + "_send"], "-1") << side << "\n" << vm.all;
        const std::string e = r[std::string(side) + "_err"];
        EXPECT_TRUE(e == std::to_string(ECONNRESET) || e == std::to_string(EPIPE)) << side << "\n" << vm.all;
    }
    std::ofstream(resume).put('1');
    auto c = fields(line_within(cl, "RESULT"));
    ASSERT_FALSE(c.empty()) << "the client was not told the end of its connections within 30 s\n" << cl.all;
    cl.wait();
    vm.wait();
    unlink(resume.c_str());
    printf("[ info ] agent killed mid socket->socket: the far end got %s bytes (end %s), the client sent %s (%s)\n",
           c["got"].c_str(), c["end"].c_str(), c["sent"].c_str(), c["send_end"].c_str());
    EXPECT_EQ(c["mismatch"], "-1") << cl.all;
    EXPECT_GE(std::stoull(c["got"]), pause_at) << cl.all;
    EXPECT_LE(std::stoull(c["got"]), len) << cl.all;
    EXPECT_TRUE(c["end"] == "0" || c["end"] == std::to_string(ECONNRESET)) << cl.all;
    EXPECT_TRUE(c["send_end"] == "0" || c["send_end"] == std::to_string(ECONNRESET) ||
                c["send_end"] == std::to_string(EPIPE))
        << cl.all;
    ASSERT_TRUE(dom0_idle()) << engine_stats().dump();
    ASSERT_TRUE(vm1_reconnected()) << engine_stats().dump();
    auto g = lab({"exec", "vm1", "--", "nft", "-j", "list", "table", "ip", "vpipe_guest"});
    EXPECT_EQ(g.out.find("\"elem\""), std::string::npos) << "the dead agent's flow block is still there: " << g.out;
    auto again = serve("f1m", "0:1048577:1048577");
    ASSERT_EQ(again.size(), 1u);
    EXPECT_EQ(again[0]["offloaded"], "1048577");
}

// Fault matrix, socket -> file x the application SIGKILLed while dom0 receives its stream. The
// agent sees the caller's connection close and stops at its next safe point, as vpipe.ko does on
// a fatal signal: it stops readying the destination (dom0 takes no byte past what is ready),
// awaits dom0's answer to the hand-over in flight (bounded by request_timeout_ms), finishes the
// file (its size says what is valid) and restores the connection for nobody; closing it ends the
// connection. The file holds an exact prefix of the stream, nothing beyond.
TEST_F(Sockets, CallerKilledMidSocketToFile) {
    const uint64_t len = 64u << 20, pause_at = 8u << 20;
    const std::string resume = tmp_ + "/resume-caller-s2f-" + std::to_string(::getpid());
    const std::string file = disk_ + "/caller-s2f";
    int p = port();
    Proc vm("vm1", "vm-recv-one-call", {"port=" + std::to_string(p), "file=" + file, "len=" + std::to_string(len)});
    ASSERT_EQ(vm.line("READY"), "READY") << vm.all;
    Proc cl("client", "client-pause-send",
            {"port=" + std::to_string(p), "seed=" + std::to_string(kSeed), "len=" + std::to_string(len),
             "pause_at=" + std::to_string(pause_at), "resume=" + resume, "await_end=1"});
    ASSERT_EQ(cl.line("PAUSED"), "PAUSED") << cl.all;
    ASSERT_TRUE(dom0_holds(1)) << engine_stats().dump();
    ASSERT_EQ(::kill(vm.pid, SIGKILL), 0);  // `vpipe-lab exec` execs the helper: this is the caller
    vm.wait();
    std::ofstream(resume).put('1');
    auto c = fields(line_within(cl, "RESULT"));
    ASSERT_FALSE(c.empty()) << "the client was not told the end of the connection within 30 s\n" << cl.all;
    cl.wait();
    unlink(resume.c_str());
    printf("[ info ] caller killed mid socket->file: the client sent %s (end %s), then read the end %s\n",
           c["sent"].c_str(), c["end"].c_str(), c["rend"].c_str());
    EXPECT_LE(std::stoull(c["sent"]), len) << cl.all;
    EXPECT_TRUE(c["end"] == "0" || c["end"] == std::to_string(ECONNRESET) || c["end"] == std::to_string(EPIPE))
        << cl.all;
    EXPECT_EQ(c["back"], "0") << cl.all;
    EXPECT_TRUE(c["rend"] == "0" || c["rend"] == std::to_string(ECONNRESET)) << cl.all;
    ASSERT_TRUE(dom0_idle()) << engine_stats().dump();
    // the agent finished the file before it restored the connection whose end the client saw
    const std::vector<uint8_t> data = file_bytes(file);
    printf("[ info ] caller killed mid socket->file: the file holds %zu bytes\n", data.size());
    EXPECT_LE(data.size(), len);
    EXPECT_EQ(stream_prefix(kSeed, data), data.size()) << "a byte that is not the stream's at its offset";
    unlink(file.c_str());
    auto again = serve("f1m", "0:1048577:1048577");
    ASSERT_EQ(again.size(), 1u);
    EXPECT_EQ(again[0]["offloaded"], "1048577");
}

// Fault matrix, socket -> socket x the application SIGKILLed while dom0 relays. The agent sees
// the caller's connection close and starts no further hand-over; it awaits dom0's answer to the
// one in flight (dom0 relays until the far end has read on; bounded by request_timeout_ms),
// restores both connections for nobody and its close ends them: the far end holds an exact
// prefix of the client's stream, then the end; nothing is left behind.
TEST_F(Sockets, CallerKilledMidSocketToSocket) {
    const uint64_t len = 64u << 20, pause_at = 8u << 20;
    const std::string resume = tmp_ + "/resume-caller-s2s-" + std::to_string(::getpid());
    int p = port(), to = port();
    Proc vm("vm1", "vm-relay-one-call",
            {"port=" + std::to_string(p), "to=" + std::to_string(to), "len=" + std::to_string(len)});
    ASSERT_EQ(vm.line("READY"), "READY") << vm.all;
    Proc cl("client", "client-relay-pause",
            {"port=" + std::to_string(p), "to=" + std::to_string(to), "seed=" + std::to_string(kSeed),
             "len=" + std::to_string(len), "pause_at=" + std::to_string(pause_at), "resume=" + resume});
    ASSERT_EQ(cl.line("PAUSED"), "PAUSED") << cl.all;
    ASSERT_TRUE(dom0_holds(2)) << engine_stats().dump();
    ASSERT_EQ(::kill(vm.pid, SIGKILL), 0);
    vm.wait();
    std::ofstream(resume).put('1');
    auto c = fields(line_within(cl, "RESULT"));
    ASSERT_FALSE(c.empty()) << "the client was not told the end of its connections within 30 s\n" << cl.all;
    cl.wait();
    unlink(resume.c_str());
    printf("[ info ] caller killed mid socket->socket: the far end got %s bytes (end %s), the client sent %s (%s)\n",
           c["got"].c_str(), c["end"].c_str(), c["sent"].c_str(), c["send_end"].c_str());
    EXPECT_EQ(c["mismatch"], "-1") << cl.all;
    EXPECT_GE(std::stoull(c["got"]), pause_at) << cl.all;
    EXPECT_LE(std::stoull(c["got"]), len) << cl.all;
    EXPECT_TRUE(c["end"] == "0" || c["end"] == std::to_string(ECONNRESET)) << cl.all;
    EXPECT_TRUE(c["send_end"] == "0" || c["send_end"] == std::to_string(ECONNRESET) ||
                c["send_end"] == std::to_string(EPIPE))
        << cl.all;
    ASSERT_TRUE(dom0_idle()) << engine_stats().dump();
    auto again = serve("f1m", "0:1048577:1048577");
    ASSERT_EQ(again.size(), 1u);
    EXPECT_EQ(again[0]["offloaded"], "1048577");
}

// Fault matrix, socket -> file x a clean engine stop (SIGTERM) while dom0 receives. The engine
// cancels the operation at its next safe point and hands the connection back with its final
// state: the call returns a short count, the file holds exactly that prefix, and the
// application reads the rest of the stream itself from the same descriptor, byte-exact.
TEST_F(Sockets, EngineStoppedMidSocketToFile) {
    const uint64_t len = 64u << 20, pause_at = 8u << 20;
    const std::string resume = tmp_ + "/resume-term-s2f-" + std::to_string(::getpid());
    const std::string file = disk_ + "/stopped-s2f";
    int p = port();
    Proc vm("vm1", "vm-recv-one-call",
            {"port=" + std::to_string(p), "file=" + file, "len=" + std::to_string(len), "finish=1",
             "seed=" + std::to_string(kSeed), "probe=0"});
    ASSERT_EQ(vm.line("READY"), "READY") << vm.all;
    Proc cl("client", "client-pause-send",
            {"port=" + std::to_string(p), "seed=" + std::to_string(kSeed), "len=" + std::to_string(len),
             "pause_at=" + std::to_string(pause_at), "resume=" + resume});
    ASSERT_EQ(cl.line("PAUSED"), "PAUSED") << cl.all;
    ASSERT_TRUE(dom0_holds(1)) << engine_stats().dump();
    auto rs = lab({"restart-engine"});
    ASSERT_EQ(rs.status, 0) << rs.all();
    auto r = fields(vm.line("RESULT"));
    printf("[ info ] engine stopped mid socket->file: the call returned %s (errno %s), the file %s bytes\n",
           r["ret"].c_str(), r["err"].c_str(), r["size"].c_str());
    const long long ret = std::stoll(r["ret"]);
    EXPECT_GE(ret, 0) << vm.all;
    EXPECT_LT(ret, static_cast<long long>(len)) << vm.all;
    EXPECT_EQ(r["err"], "0") << vm.all;
    EXPECT_EQ(r["next_send"], "0") << vm.all;  // (not probed: the client does not read)
    EXPECT_EQ(r["size"], r["ret"]) << vm.all;
    std::ofstream(resume).put('1');
    EXPECT_EQ(line_within(vm, "FINISH"), "FINISH check=-1") << vm.all;  // the rest, from the same socket
    auto c = fields(cl.line("RESULT"));
    cl.wait();
    vm.wait();
    unlink(resume.c_str());
    EXPECT_EQ(c["sent"], std::to_string(len)) << cl.all;
    EXPECT_EQ(c["end"], "0") << cl.all;
    const std::vector<uint8_t> data = file_bytes(file);
    EXPECT_EQ(static_cast<long long>(data.size()), ret);
    EXPECT_EQ(stream_prefix(kSeed, data), data.size()) << "a byte that is not the stream's at its offset";
    unlink(file.c_str());
    ASSERT_TRUE(vm1_reconnected()) << engine_stats().dump();
}

// Fault matrix, socket -> socket x a clean engine stop while dom0 relays (the far end paused
// after 8 MiB): both connections come back with their final state, the call returns a short
// count, the application relays the rest itself on the same descriptors and the far end gets
// the whole stream, byte-exact.
TEST_F(Sockets, EngineStoppedMidSocketToSocket) {
    const uint64_t len = 64u << 20, pause_at = 8u << 20;
    const std::string resume = tmp_ + "/resume-term-s2s-" + std::to_string(::getpid());
    int p = port(), to = port();
    Proc vm("vm1", "vm-relay-one-call",
            {"port=" + std::to_string(p), "to=" + std::to_string(to), "len=" + std::to_string(len), "finish=1",
             "probe_out=0"});
    ASSERT_EQ(vm.line("READY"), "READY") << vm.all;
    Proc cl("client", "client-relay-pause",
            {"port=" + std::to_string(p), "to=" + std::to_string(to), "seed=" + std::to_string(kSeed),
             "len=" + std::to_string(len), "pause_at=" + std::to_string(pause_at), "resume=" + resume});
    ASSERT_EQ(cl.line("PAUSED"), "PAUSED") << cl.all;
    ASSERT_TRUE(dom0_holds(2)) << engine_stats().dump();
    // the stop may wait for the hand-back, which may wait for the far end: resume it meanwhile
    std::thread resumer([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(300));  // a far end that pauses: the point
        std::ofstream(resume).put('1');
    });
    auto rs = lab({"restart-engine"});
    resumer.join();
    ASSERT_EQ(rs.status, 0) << rs.all();
    auto r = fields(line_within(vm, "RESULT"));
    auto c = fields(line_within(cl, "RESULT"));
    cl.wait();
    vm.wait();
    unlink(resume.c_str());
    printf("[ info ] engine stopped mid socket->socket: the call returned %s (errno %s), the guest relayed %s more\n",
           r["ret"].c_str(), r["err"].c_str(), r["rest"].c_str());
    ASSERT_TRUE(r.count("rest")) << "the application did not finish the relay within 30 s\n" << vm.all
                                 << "\nclient:\n" << cl.all;
    ASSERT_TRUE(c.count("got")) << "the far end did not get the whole stream within 30 s\n" << cl.all;
    const long long ret = std::stoll(r["ret"]);
    EXPECT_GE(ret, 0) << vm.all;
    EXPECT_LT(ret, static_cast<long long>(len)) << vm.all;
    EXPECT_EQ(r["err"], "0") << vm.all;
    EXPECT_EQ(std::stoll(r["rest"]), static_cast<long long>(len) - ret) << vm.all;
    EXPECT_EQ(r["in_send"], "1") << vm.all;
    EXPECT_EQ(c["got"], std::to_string(len)) << cl.all;
    EXPECT_EQ(c["mismatch"], "-1") << cl.all;
    EXPECT_EQ(c["end"], "0") << cl.all;
    EXPECT_EQ(c["sent"], std::to_string(len)) << cl.all;
    EXPECT_EQ(c["send_end"], "0") << cl.all;
    ASSERT_TRUE(vm1_reconnected()) << engine_stats().dump();
}

// Fault matrix, socket -> file x the peer resets its connection while dom0 receives (after
// 8 MiB). The call returns the bytes it wrote (or -1 ECONNRESET if none), the file holds
// exactly that prefix, and the descriptor is a reset socket.
TEST_F(Sockets, PeerResetMidSocketToFile) {
    const uint64_t len = 64u << 20, pause_at = 8u << 20;
    const std::string resume = tmp_ + "/resume-rst-s2f-" + std::to_string(::getpid());
    const std::string file = disk_ + "/rst-s2f";
    int p = port();
    Proc vm("vm1", "vm-recv-one-call", {"port=" + std::to_string(p), "file=" + file, "len=" + std::to_string(len)});
    ASSERT_EQ(vm.line("READY"), "READY") << vm.all;
    Proc cl("client", "client-pause-send",
            {"port=" + std::to_string(p), "seed=" + std::to_string(kSeed), "len=" + std::to_string(len),
             "pause_at=" + std::to_string(pause_at), "resume=" + resume, "how=rst"});
    ASSERT_EQ(cl.line("PAUSED"), "PAUSED") << cl.all;
    ASSERT_TRUE(dom0_holds(1)) << engine_stats().dump();
    std::ofstream(resume).put('1');
    auto r = fields(line_within(vm, "RESULT"));
    cl.wait();
    vm.wait();
    unlink(resume.c_str());
    printf("[ info ] peer reset mid socket->file: the call returned %s (errno %s), the file %s bytes\n",
           r["ret"].c_str(), r["err"].c_str(), r["size"].c_str());
    ASSERT_TRUE(r.count("ret")) << vm.all;
    const long long ret = std::stoll(r["ret"]);
    if (ret < 0) {
        EXPECT_EQ(r["err"], std::to_string(ECONNRESET)) << vm.all;
    } else {
        EXPECT_EQ(r["err"], "0") << vm.all;
        EXPECT_LE(ret, static_cast<long long>(pause_at)) << vm.all;
    }
    EXPECT_EQ(r["next_send"], "-1") << vm.all;
    EXPECT_TRUE(r["next_err"] == std::to_string(ECONNRESET) || r["next_err"] == std::to_string(EPIPE)) << vm.all;
    const std::vector<uint8_t> data = file_bytes(file);
    EXPECT_EQ(data.size(), static_cast<size_t>(std::max(ret, 0ll))) << vm.all;
    EXPECT_EQ(r["size"], std::to_string(data.size())) << vm.all;
    EXPECT_EQ(stream_prefix(kSeed, data), data.size()) << "a byte that is not the stream's at its offset";
    unlink(file.c_str());
}

// Fault matrix, socket -> socket x the source's peer resets its connection while dom0 relays
// (the far end has read all 8 MiB the peer sent). The call returns what it relayed (or -1
// ECONNRESET), the source descriptor is a reset socket, the far end holds exactly the relayed
// prefix and then its connection's end.
TEST_F(Sockets, PeerResetMidSocketToSocket) {
    std::map<std::string, std::string> r, c;
    peer_ends_mid_relay("rst", "reset", &r, &c);
    if (HasFatalFailure()) return;
    const uint64_t pause_at = kPeerEndAt;
    const long long ret = std::stoll(r["ret"]);
    if (ret < 0) {
        EXPECT_EQ(r["err"], std::to_string(ECONNRESET)) << r["vm"];
    } else {
        EXPECT_EQ(ret, static_cast<long long>(pause_at)) << r["vm"];  // the far end read all of it
        EXPECT_EQ(r["err"], "0") << r["vm"];
    }
    EXPECT_EQ(r["in_send"], "-1") << r["vm"];
    EXPECT_TRUE(r["in_err"] == std::to_string(ECONNRESET) || r["in_err"] == std::to_string(EPIPE)) << r["vm"];
    EXPECT_EQ(c["got"], std::to_string(pause_at)) << c["client"];
    EXPECT_EQ(c["mismatch"], "-1") << c["client"];
    EXPECT_TRUE(c["end"] == "0" || c["end"] == std::to_string(ECONNRESET)) << c["client"];
}

// Fault matrix, socket -> socket x the source's peer ends its stream (FIN) while dom0 relays:
// the call returns the short count it relayed (8 MiB), the source descriptor reads EOF and still
// sends, the far end holds exactly that prefix and gets FIN when the application closes.
TEST_F(Sockets, PeerFinMidSocketToSocket) {
    std::map<std::string, std::string> r, c;
    peer_ends_mid_relay("fin", "FIN", &r, &c);
    if (HasFatalFailure()) return;
    const uint64_t pause_at = kPeerEndAt;
    EXPECT_EQ(r["ret"], std::to_string(pause_at)) << r["vm"];
    EXPECT_EQ(r["err"], "0") << r["vm"];
    EXPECT_EQ(r["in_recv"], "0") << r["vm"];  // EOF
    EXPECT_EQ(r["in_send"], "1") << r["vm"];  // the connection still sends
    EXPECT_EQ(c["got"], std::to_string(pause_at)) << c["client"];
    EXPECT_EQ(c["mismatch"], "-1") << c["client"];
    EXPECT_EQ(c["end"], "0") << c["client"];
    EXPECT_EQ(c["back"], "1") << c["client"];  // the application's "x", then EOF
    EXPECT_EQ(c["back_end"], "0") << c["client"];
}

class SocketsShortTimeout : public Sockets {
protected:
    static void SetUpTestSuite() {
        setenv("VPIPE_SOCKET_TIMEOUT_MS", "2000", 1);
        Sockets::SetUpTestSuite();
        unsetenv("VPIPE_SOCKET_TIMEOUT_MS");
    }
};

// The peer stops reading: dom0 makes no progress for the timeout and hands the connection back;
// the call returns the bytes handed to the connection (acknowledged + carried back) as a short
// count, and the connection delivers exactly those bytes once the peer reads again.
TEST_F(SocketsShortTimeout, PeerStopsReading) {
    int p = port();
    Proc vm("vm1", "vm-serve-once", {"port=" + std::to_string(p), "file=" + disk_ + "/f64m", "len=67108864"});
    ASSERT_EQ(vm.line("READY"), "READY") << vm.all;
    Proc cl("client", "client-stall", {"port=" + std::to_string(p), "seed=" + std::to_string(kSeed), "stall_ms=5000"});
    auto r = fields(vm.line("RESULT"));
    auto c = fields(cl.line("RESULT"));
    cl.wait();
    vm.wait();
    ASSERT_FALSE(r.empty()) << vm.all;
    const long long moved = std::stoll(r["moved"]);
    EXPECT_GT(moved, 0) << vm.all;
    EXPECT_LT(moved, 64ll << 20) << vm.all;
    EXPECT_EQ(r["err"], "0") << vm.all;
    // the call waited for the 2 s timeout before handing back (a lower bound: load can only make
    // it later). No upper bound: that would be a timing figure on a shared box; a call that did
    // not hand back at the timeout would have moved everything once the client read again,
    // which `moved < 64 MiB` above already refuses.
    const double secs = std::stod(r["secs"]);
    EXPECT_GE(secs, 1.9) << vm.all;
    EXPECT_EQ(c["got"], r["moved"]) << cl.all << vm.all;
    EXPECT_EQ(c["check"], "-1") << cl.all;
    printf("[ info ] peer stopped reading: the call returned %lld bytes after %.2f s\n", moved, secs);
}

}  // namespace

int main(int argc, char** argv) {
    char buf[4096];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
    g_self = n > 0 ? std::string(buf, static_cast<size_t>(n)) : argv[0];
    if (argc >= 3 && std::string(argv[1]) == "--helper") return helper_main(argc, argv);
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
