// SPDX-License-Identifier: MIT
/*
 * kmod_lib_probe -- libvpipe's non-blocking API (vpipe_queue_create / vpipe_submit_* /
 * vpipe_reap / vpipe_cancel, vpipe.h) over vpipe.ko, inside the same QEMU guest as kmod_probe
 * (vpipe.ko with its stand-in engine, files on /mnt). Built static from libvpipe's sources by
 * run-qemu.sh. Proves that with the kernel module as the guest component an event loop's
 * submit returns while dom0 works (the module's own queue, vpipe_async.c), that the completion
 * descriptor works with epoll, that restored sockets land on the application's descriptor
 * numbers, and that a cancel leaves an exact prefix. Ends with "LIB PROBE RESULT: PASS|FAIL".
 */
#include <fcntl.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <vpipe/vpipe.h>
#include <vpipe/abi/ioctl.h>

#include "vpipe_debug.h"

namespace {

int fails, checks;

#define CHECK(cond, ...)                                             \
    do {                                                             \
        int e_ = errno;                                              \
        checks++;                                                    \
        if (cond) {                                                  \
            std::printf("ok   " __VA_ARGS__);                        \
            std::printf("\n");                                       \
        } else {                                                     \
            fails++;                                                 \
            std::printf("FAIL " __VA_ARGS__);                        \
            std::printf(" (errno %d %s)\n", e_, std::strerror(e_)); \
        }                                                            \
    } while (0)

int set_param(const char* name, const char* val) {
    std::string path = std::string("/sys/module/vpipe/parameters/") + name;
    int fd = ::open(path.c_str(), O_WRONLY);
    bool ok = fd >= 0 && ::write(fd, val, std::strlen(val)) == static_cast<ssize_t>(std::strlen(val));
    if (fd >= 0) ::close(fd);
    return ok ? 0 : -1;
}

int script(int ans, int err) {
    vpipe_dbg_script sc{ans, err, 0};
    int fd = ::open("/dev/vpipe", O_RDWR | O_CLOEXEC);
    int r = fd >= 0 ? ::ioctl(fd, VPIPE_IOC_DBG_SCRIPT, &sc) : -1;
    if (fd >= 0) ::close(fd);
    return r;
}

std::vector<char> slurp(const char* path) {
    std::vector<char> b;
    int fd = ::open(path, O_RDONLY);
    if (fd < 0) return b;
    char buf[1 << 16];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof(buf))) > 0) b.insert(b.end(), buf, buf + n);
    ::close(fd);
    return b;
}

std::vector<char> pattern(size_t n, unsigned seed) {
    std::vector<char> b(n);
    unsigned x = seed * 2654435761u + 1;
    for (auto& c : b) {
        x = x * 1103515245u + 12345u;
        c = static_cast<char>(x >> 16);
    }
    return b;
}

bool write_file(const char* path, const std::vector<char>& b) {
    int fd = ::open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    bool ok = fd >= 0 && ::write(fd, b.data(), b.size()) == static_cast<ssize_t>(b.size()) && ::fsync(fd) == 0;
    if (fd >= 0) ::close(fd);
    return ok;
}

// the VM's end (server, on 10.9.9.1: the stand-in engine's identity) and its peer, which has an
// address of its own (10.9.9.2: the engine refuses a peer on the VM's or dom0's address)
int tcp_pair(int* client, int* server) {
    int l = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = inet_addr("10.9.9.1");
    socklen_t al = sizeof(a);
    if (l < 0 || ::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof(a)) < 0 || ::listen(l, 1) < 0 ||
        ::getsockname(l, reinterpret_cast<sockaddr*>(&a), &al) < 0)
        return -1;
    *client = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in p{};
    p.sin_family = AF_INET;
    p.sin_addr.s_addr = inet_addr("10.9.9.2");
    if (*client < 0 || ::bind(*client, reinterpret_cast<sockaddr*>(&p), sizeof(p)) < 0) return -1;
    if (::connect(*client, reinterpret_cast<sockaddr*>(&a), sizeof(a)) < 0) return -1;
    *server = ::accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    ::close(l);
    return *server < 0 ? -1 : 0;
}

bool talk(int a, int b, const char* tag) {
    char buf[64];
    const ssize_t n = static_cast<ssize_t>(std::strlen(tag));
    return ::send(a, tag, n, 0) == n && ::recv(b, buf, sizeof(buf), 0) == n && !std::memcmp(buf, tag, n) &&
           ::send(b, tag, n, 0) == n && ::recv(a, buf, sizeof(buf), 0) == n && !std::memcmp(buf, tag, n);
}

// the next completion, through epoll on the queue's descriptor
int wait_one(int ep, int q, vpipe_completion* c, int max_ms) {
    epoll_event ev;
    for (int waited = 0; waited < max_ms; waited += 1000) {
        if (::epoll_wait(ep, &ev, 1, 1000) < 0 && errno != EINTR) return -1;
        int n = vpipe_reap(q, c, 1);
        if (n == 1) {
            std::printf("     completion %llu: res %lld path %d moved %llu\n",
                        static_cast<unsigned long long>(c->user_data), static_cast<long long>(c->res),
                        c->result.path, static_cast<unsigned long long>(c->result.offloaded));
            return 0;
        }
    }
    return -1;
}

}  // namespace

int main() {
    vpipe_set_fallback(0);   // every operation offloaded, or an error: never the guest's copy
    int q = vpipe_queue_create(0, 0);
    int ep = ::epoll_create1(EPOLL_CLOEXEC);
    epoll_event ev{};
    ev.events = EPOLLIN;
    CHECK(q >= 0 && ep >= 0 && ::epoll_ctl(ep, EPOLL_CTL_ADD, vpipe_queue_fd(q), &ev) == 0,
          "a queue, its descriptor in epoll");
    vpipe_stats s0{}, s1{};
    vpipe_get_stats(&s0);
    struct statvfs fs{};
    if (::statvfs("/mnt", &fs) == 0)
        std::printf("     /mnt: %llu MiB free\n", static_cast<unsigned long long>(fs.f_bavail * fs.f_frsize >> 20));

    // 1. file -> file: the submit returns while dom0 (2 s late) works; epoll says when it is done
    const size_t nb = 5u << 20;
    const auto src = pattern(nb, 5);
    CHECK(write_file("/mnt/lib-src.bin", src) && set_param("test_engine_delay_ms", "2000") == 0,
          "lib-src.bin: 5 MiB; the engine answers 2 s late");
    int in = ::open("/mnt/lib-src.bin", O_RDONLY | O_CLOEXEC);
    int out = ::open("/mnt/lib-copy.bin", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    vpipe_completion c{};
    int r = vpipe_submit_file_to_file(q, in, out, 0, nb, 0, 42);
    CHECK(r == 0 && vpipe_reap(q, &c, 1) == 0, "submitted; nothing to reap yet (the submit did not wait)");
    int out2 = ::open("/mnt/lib-copy2.bin", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    errno = 0;
    CHECK(vpipe_submit_file_to_file(q, in, out, 0, nb, 0, 43) == -1 && errno == EBUSY,
          "the destination of an operation in flight: EBUSY");
    ::close(out2);
    CHECK(wait_one(ep, q, &c, 60000) == 0 && c.user_data == 42 && c.res == static_cast<int64_t>(nb) &&
              c.result.path == VPIPE_RESULT_OFFLOADED && c.result.offloaded == nb,
          "completion 42: %lld bytes, offloaded", static_cast<long long>(c.res));
    ::close(in);
    ::close(out);
    CHECK(slurp("/mnt/lib-copy.bin") == src, "lib-copy.bin byte-exact");
    ::unlink("/mnt/lib-copy.bin");
    ::unlink("/mnt/lib-copy2.bin");

    // 2. file -> socket refused by dom0: the connection is back on the application's number
    int cl = -1, sv = -1;
    CHECK(set_param("test_engine_delay_ms", "0") == 0 && script(1 /* ANS_STATUS */, EOPNOTSUPP) == 0 &&
              tcp_pair(&cl, &sv) == 0,
          "engine refuses socket requests; a TCP pair on 10.9.9.1");
    in = ::open("/mnt/lib-src.bin", O_RDONLY | O_CLOEXEC);
    r = vpipe_submit_file_to_socket(q, in, sv, 0, 1 << 20, 7);
    CHECK(r == 0 && wait_one(ep, q, &c, 60000) == 0 && c.user_data == 7 && c.res == -EOPNOTSUPP,
          "completion 7: -EOPNOTSUPP (no fallback)");
    ::close(in);
    CHECK(talk(cl, sv, "after an async hand-over"), "the same descriptor number carries the restored connection");
    ::close(cl);
    ::close(sv);
    CHECK(script(0, 0) == 0, "engine script: ok");
    ::unlink("/mnt/lib-src.bin");   // room on the small test partition for the next copy

    // 3. cancel between the stages of a copy: -ECANCELED, the destination an exact prefix
    const size_t big = 34u << 20;
    const auto src40 = pattern(big, 40);
    CHECK(write_file("/mnt/lib-src40.bin", src40) && set_param("chunk_mib", "16") == 0 &&
              set_param("test_engine_delay_ms", "3000") == 0,
          "lib-src40.bin: 34 MiB (three stages: 16, 16, 2 MiB), answers 3 s late");
    vpipe_ioc_stats ks{};
    int dev = ::open("/dev/vpipe", O_RDWR | O_CLOEXEC);
    ::ioctl(dev, VPIPE_IOC_STATS, &ks);
    const uint64_t posted0 = ks.ring_requests;
    in = ::open("/mnt/lib-src40.bin", O_RDONLY | O_CLOEXEC);
    out = ::open("/mnt/lib-copy40.bin", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    r = vpipe_submit_file_to_file(q, in, out, 0, big, 0, 9);
    for (int i = 0; i < 2000 && ::ioctl(dev, VPIPE_IOC_STATS, &ks) == 0 && ks.ring_requests < posted0 + 2; ++i)
        ::usleep(10000);
    CHECK(r == 0 && ks.ring_requests >= posted0 + 2, "submitted; two stages with dom0");
    CHECK(vpipe_cancel(q, 9) == 0, "vpipe_cancel: asked");
    CHECK(wait_one(ep, q, &c, 60000) == 0 && c.user_data == 9 && c.res == -ECANCELED &&
              c.result.offloaded > 0 && c.result.offloaded < big && c.result.offloaded % (16u << 20) == 0,
          "completion 9: -ECANCELED after %llu bytes", static_cast<unsigned long long>(c.result.offloaded));
    ::close(in);
    ::close(out);
    auto got = slurp("/mnt/lib-copy40.bin");
    CHECK(got.size() == c.result.offloaded && std::equal(got.begin(), got.end(), src40.begin()),
          "lib-copy40.bin: exactly that prefix (%zu bytes)", got.size());
    ::unlink("/mnt/lib-copy40.bin");

    // 4. destroying the queue with an operation in flight waits for it; nothing stays held
    in = ::open("/mnt/lib-src40.bin", O_RDONLY | O_CLOEXEC);
    out = ::open("/mnt/lib-copy40.bin", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    CHECK(vpipe_submit_file_to_file(q, in, out, 0, big, 0, 10) == 0, "submit 10");
    CHECK(vpipe_queue_destroy(q) == 0, "vpipe_queue_destroy: 0 once 10 ended");
    int w = ::open("/mnt/lib-src40.bin", O_WRONLY);
    CHECK(w >= 0, "the source is writable again (its hold released)");
    if (w >= 0) ::close(w);
    ::close(in);
    ::close(out);
    ::close(dev);
    ::unlink("/mnt/lib-copy40.bin");
    ::unlink("/mnt/lib-src40.bin");
    set_param("test_engine_delay_ms", "0");
    set_param("chunk_mib", "64");

    vpipe_get_stats(&s1);
    CHECK(s1.ops_offloaded - s0.ops_offloaded == 1 && s1.ops_fallback == s0.ops_fallback,
          "vpipe_get_stats: one offloaded, no fallback");
    std::printf("LIB PROBE RESULT: %s (%d checks, %d failed)\n", fails ? "FAIL" : "PASS", checks, fails);
    return fails ? 1 : 0;
}
