// libvpipe-preload.so without any engine: this binary runs with LD_PRELOAD set (ctest), and every
// interposed call is compared with the raw system call on an identical set-up: return value,
// errno, *offset, the file positions and the bytes that arrived. The calls libvpipe gets (a
// "guest component" that refuses connections) must keep the same offset semantics, and the
// preload's counters must say which way each call went.
#include <arpa/inet.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "vpipe_preload.h"

namespace {

constexpr size_t kMiB = 1 << 20;
constexpr size_t kFileSize = 3 * kMiB + 12345;  // larger than the threshold (256 KiB) several times
constexpr off_t kNull = INT64_MIN;              // an offset argument that is NULL

using GetStats = int (*)(vpipe_preload_stats*);
using GetReasons = int (*)(const char**, uint64_t*, int);

GetStats preload_stats() { return reinterpret_cast<GetStats>(dlsym(RTLD_DEFAULT, "vpipe_preload_get_stats")); }

vpipe_preload_stats stats() {
    vpipe_preload_stats s{};
    if (auto f = preload_stats()) f(&s);
    return s;
}

std::vector<char> pattern(size_t n, unsigned seed) {
    std::vector<char> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = static_cast<char>((i * 131 + seed * 7 + (i >> 12)) & 0xff);
    return v;
}

// the raw system calls: what libc's wrappers do
ssize_t raw_sendfile(int out, int in, off_t* off, size_t n) { return syscall(SYS_sendfile, out, in, off, n); }
ssize_t raw_cfr(int in, loff_t* oi, int out, loff_t* oo, size_t n, unsigned fl) {
    return syscall(SYS_copy_file_range, in, oi, out, oo, n, fl);
}
ssize_t raw_splice(int in, loff_t* oi, int out, loff_t* oo, size_t n, unsigned fl) {
    return syscall(SYS_splice, in, oi, out, oo, n, fl);
}

// A connected loopback TCP pair.
struct Tcp {
    int a = -1, b = -1;
    Tcp() {
        int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in s{};
        s.sin_family = AF_INET;
        s.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t sl = sizeof(s);
        bind(l, reinterpret_cast<sockaddr*>(&s), sizeof(s));
        listen(l, 1);
        getsockname(l, reinterpret_cast<sockaddr*>(&s), &sl);
        a = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        connect(a, reinterpret_cast<sockaddr*>(&s), sizeof(s));
        b = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
        ::close(l);
    }
    ~Tcp() {
        ::close(a);
        ::close(b);
    }
};

// Where the bytes go: a unix socketpair, a pipe or TCP; `a` is written, `b` drained by a thread.
enum class Sink { kUnix, kPipe, kTcp };
struct Ends {
    int a = -1, b = -1;
    std::unique_ptr<Tcp> tcp;
    explicit Ends(Sink k) {
        if (k == Sink::kTcp) {
            tcp = std::make_unique<Tcp>();
            a = tcp->a;
            b = tcp->b;
        } else if (k == Sink::kPipe) {
            int p[2];
            pipe2(p, O_CLOEXEC);
            b = p[0];
            a = p[1];
        } else {
            int p[2];
            socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p);
            a = p[0];
            b = p[1];
        }
    }
    ~Ends() {
        if (!tcp) {
            ::close(a);
            ::close(b);
        }
    }
};

struct Outcome {
    ssize_t ret = 0;
    int err = 0;
    off_t off = kNull;   // *offset after the call (kNull: no offset pointer)
    off_t pos = -1;      // the source's file position after
    off_t out_pos = -1;  // the destination's (copy_file_range)
    std::string got;     // bytes that arrived (sendfile, splice) / the destination's content (copy_file_range)
    bool operator==(const Outcome&) const = default;
};
std::ostream& operator<<(std::ostream& o, const Outcome& x) {
    return o << "{ret " << x.ret << " errno " << x.err << " (" << strerror(x.err) << ") off " << x.off << " pos " << x.pos
             << " out_pos " << x.out_pos << " got " << x.got.size() << " bytes}";
}

class Preload : public ::testing::Test {
protected:
    void SetUp() override {
        if (!preload_stats()) {
            if (getenv("VPIPE_PRELOAD_EXPECTED")) FAIL() << "LD_PRELOAD=" << (getenv("LD_PRELOAD") ?: "") << " is not in effect";
            GTEST_SKIP() << "libvpipe-preload.so is not preloaded (ctest sets LD_PRELOAD)";
        }
        char p[] = "/var/tmp/vpipe-preload-XXXXXX";
        ASSERT_NE(mkdtemp(p), nullptr);
        dir_ = p;
        data_ = pattern(kFileSize, 1);
        src_ = dir_ + "/src";
        int fd = open(src_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        ASSERT_EQ(write(fd, data_.data(), data_.size()), static_cast<ssize_t>(data_.size()));
        ::close(fd);
        no_component();
    }
    void TearDown() override {
        if (refuser_ >= 0) ::close(refuser_);
        if (!dir_.empty()) std::system(("rm -rf " + dir_).c_str());
    }

    // No guest component anywhere: every qualifying call goes to libc ("no_component").
    static void no_component() { setenv("VPIPE_AGENT_SOCKET", "/nonexistent/vpipe-agent.sock", 1); }
    // An agent socket that exists and refuses connections: qualifying calls reach libvpipe, which
    // falls back (counted) and moves the bytes in the guest.
    void refusing_component() {
        const std::string path = dir_ + "/agent.sock";
        refuser_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::snprintf(a.sun_path, sizeof(a.sun_path), "%s", path.c_str());
        ASSERT_EQ(bind(refuser_, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);  // bound, not listening
        setenv("VPIPE_AGENT_SOCKET", path.c_str(), 1);
    }

    int open_src(int flags = O_RDONLY) { return open(src_.c_str(), flags | O_CLOEXEC); }

    // Runs `call(out_fd, in_fd, offp)` on a fresh source descriptor at position `pos`, with an
    // offset pointer holding `off` (kNull: none), into a fresh sink, draining it.
    Outcome sendfile_case(Sink sink, off_t pos, off_t off, const std::function<ssize_t(int, int, off_t*)>& call,
                          int src_flags = O_RDONLY) {
        Outcome o;
        int in = open_src(src_flags);
        if (pos) lseek(in, pos, SEEK_SET);
        Ends e(sink);
        std::thread drain([&] {
            char buf[65536];
            ssize_t n;
            while ((n = read(e.b, buf, sizeof(buf))) > 0) o.got.append(buf, static_cast<size_t>(n));
        });
        off_t v = off;
        errno = 0;
        o.ret = call(e.a, in, off != kNull ? &v : nullptr);
        o.err = o.ret < 0 ? errno : 0;
        if (off != kNull) o.off = v;
        o.pos = lseek(in, 0, SEEK_CUR);
        shutdown(e.a, SHUT_WR);
        if (sink == Sink::kPipe) {
            ::close(e.a);
            e.a = open("/dev/null", O_RDONLY | O_CLOEXEC);  // ~Ends closes something harmless
        }
        drain.join();
        ::close(in);
        return o;
    }

    std::string slice(off_t from, size_t n) const {
        if (from >= static_cast<off_t>(data_.size())) return "";
        n = std::min(n, data_.size() - static_cast<size_t>(from));
        return std::string(data_.data() + from, n);
    }

    std::string dir_, src_;
    std::vector<char> data_;
    int refuser_ = -1;
};

ssize_t preloaded_sendfile(int out, int in, off_t* off, size_t n) { return sendfile(out, in, off, n); }
ssize_t preloaded_sendfile64(int out, int in, off_t* off, size_t n) {
    return sendfile64(out, in, reinterpret_cast<off64_t*>(off), n);
}

// ---- passthrough: the call is libc's, whatever the size ---------------------------------------

struct SfCase {
    Sink sink;
    off_t pos, off;  // off kNull: no offset pointer
    size_t count;
};

TEST_F(Preload, SendfileIntoUnixSocketAndPipeIsLibcs) {
    const SfCase cases[] = {
        {Sink::kUnix, 5000, kNull, 100000},            // offset NULL: the position advances
        {Sink::kUnix, 5000, 70000, 100000},         // offset pointer: *offset advances, the position stays
        {Sink::kUnix, 0, kNull, 2 * kMiB},             // above the threshold: still not a TCP socket
        {Sink::kPipe, 100, 3 * kMiB, 2 * kMiB},     // short at EOF
        {Sink::kPipe, 0, kFileSize, 4096},          // at EOF: 0
        {Sink::kUnix, kFileSize - 10, kNull, kMiB},    // the last 10 bytes
        {Sink::kUnix, kFileSize + 5, kNull, kMiB},     // past EOF: 0
    };
    for (const auto& c : cases) {
        for (auto fn : {preloaded_sendfile, preloaded_sendfile64}) {
            const auto s0 = stats();
            const Outcome got = sendfile_case(c.sink, c.pos, c.off, [&](int o, int i, off_t* off) { return fn(o, i, off, c.count); });
            const Outcome want =
                sendfile_case(c.sink, c.pos, c.off, [&](int o, int i, off_t* off) { return raw_sendfile(o, i, off, c.count); });
            EXPECT_EQ(got, want) << "pos " << c.pos << " off " << c.off << " count " << c.count;
            const off_t from = c.off != kNull ? c.off : c.pos;
            EXPECT_EQ(got.got, slice(from, static_cast<size_t>(std::max<ssize_t>(got.ret, 0))));
            const auto s1 = stats();
            EXPECT_EQ(s1.calls[VPIPE_PRELOAD_SENDFILE], s0.calls[VPIPE_PRELOAD_SENDFILE] + 1);
            EXPECT_EQ(s1.handed[VPIPE_PRELOAD_SENDFILE], s0.handed[VPIPE_PRELOAD_SENDFILE]);
        }
    }
}

TEST_F(Preload, SendfileErrorsAreLibcsAtEverySize) {
    Tcp t;
    int closed = open_src();
    ::close(closed);
    int wronly = open((dir_ + "/w").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    int app = open((dir_ + "/app").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    int in = open_src();
    int src_wronly = open_src(O_WRONLY);
    int dirfd = open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int p[2];
    ASSERT_EQ(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);  // (sendfile may read pipes: never block on one)
    int udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int unconnected = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct Err {
        const char* what;
        int out, in;
        off_t off;  // kNull: NULL
    } errs[] = {
        {"in -1", t.a, -1, kNull},
        {"in closed", t.a, closed, kNull},
        {"out closed", closed, in, kNull},
        {"in write-only", t.a, src_wronly, kNull},
        {"in a directory", t.a, dirfd, kNull},
        {"in a pipe", t.a, p[0], kNull},
        {"out read-only file", in, in, kNull},
        {"out O_APPEND", app, in, kNull},
        {"negative offset", t.a, in, -100},
        {"out a UDP socket, unconnected", udp, in, kNull},
        {"out an unconnected TCP socket", unconnected, in, kNull},
        {"out write-only file, fine", wronly, in, 0},
    };
    signal(SIGPIPE, SIG_IGN);
    for (const auto& e : errs) {
        for (size_t count : {size_t{4096}, 2 * kMiB}) {
            for (auto fn : {preloaded_sendfile, preloaded_sendfile64}) {
                off_t a = e.off, b = e.off;
                lseek(in, 0, SEEK_SET);
                errno = 0;
                const ssize_t rg = fn(e.out, e.in, e.off != kNull ? &a : nullptr, count);
                const int eg = errno;
                const off_t pg = lseek(in, 0, SEEK_CUR);
                lseek(in, 0, SEEK_SET);
                if (e.out == wronly) ftruncate(wronly, 0);
                errno = 0;
                const ssize_t rw = raw_sendfile(e.out, e.in, e.off != kNull ? &b : nullptr, count);
                const int ew = errno;
                const off_t pw = lseek(in, 0, SEEK_CUR);
                EXPECT_EQ(rg, rw) << e.what << ", count " << count;
                if (rw < 0) {
                    EXPECT_EQ(eg, ew) << e.what << ", count " << count << ": " << strerror(eg) << " vs " << strerror(ew);
                }
                EXPECT_EQ(a, b) << e.what;
                EXPECT_EQ(pg, pw) << e.what;
            }
        }
    }
    for (int fd : {wronly, app, in, src_wronly, dirfd, p[0], p[1], udp, unconnected}) ::close(fd);
}

// ---- TCP: qualifying calls ----------------------------------------------------------------------

TEST_F(Preload, SendfileToTcpWithoutComponentIsLibcsAndCounted) {
    const auto s0 = stats();
    const Outcome got = sendfile_case(Sink::kTcp, 1000, kNull, [](int o, int i, off_t* off) { return sendfile(o, i, off, kMiB); });
    const Outcome want = sendfile_case(Sink::kTcp, 1000, kNull, [](int o, int i, off_t* off) { return raw_sendfile(o, i, off, kMiB); });
    EXPECT_EQ(got, want);
    const auto s1 = stats();
    EXPECT_EQ(s1.passed[VPIPE_PRELOAD_SENDFILE][VPIPE_PASS_NO_COMPONENT],
              s0.passed[VPIPE_PRELOAD_SENDFILE][VPIPE_PASS_NO_COMPONENT] + 1);
    EXPECT_EQ(s1.handed[VPIPE_PRELOAD_SENDFILE], s0.handed[VPIPE_PRELOAD_SENDFILE]);
}

TEST_F(Preload, SendfileToTcpGoesThroughLibvpipeWithTheSameOffsetSemantics) {
    refusing_component();
    struct C {
        off_t pos, off;
        size_t count;
        ssize_t want;
    } cases[] = {
        {1000, kNull, kMiB, static_cast<ssize_t>(kMiB)},                  // position 1000 -> 1000 + 1 MiB
        {1000, 7777, kMiB, static_cast<ssize_t>(kMiB)},                // *offset 7777 -> 7777 + 1 MiB, position stays
        {0, static_cast<off_t>(kFileSize - 300000), kMiB, 300000},     // short at EOF (300000 >= threshold)
        {static_cast<off_t>(kFileSize - 400000), kNull, 4 * kMiB, 400000},
    };
    for (const auto& c : cases) {
        const auto s0 = stats();
        const Outcome got =
            sendfile_case(Sink::kTcp, c.pos, c.off, [&](int o, int i, off_t* off) { return sendfile(o, i, off, c.count); });
        const auto s1 = stats();
        const Outcome want =
            sendfile_case(Sink::kTcp, c.pos, c.off, [&](int o, int i, off_t* off) { return raw_sendfile(o, i, off, c.count); });
        EXPECT_EQ(got.ret, c.want);
        EXPECT_EQ(got, want) << "pos " << c.pos << " off " << c.off;
        EXPECT_EQ(got.got, slice(c.off != kNull ? c.off : c.pos, static_cast<size_t>(c.want)));
        EXPECT_EQ(s1.handed[VPIPE_PRELOAD_SENDFILE], s0.handed[VPIPE_PRELOAD_SENDFILE] + 1);
        EXPECT_EQ(s1.lib_fallback[VPIPE_PRELOAD_SENDFILE], s0.lib_fallback[VPIPE_PRELOAD_SENDFILE] + 1)
            << "libvpipe's fallback must be counted";
        EXPECT_EQ(s1.bytes_guest[VPIPE_PRELOAD_SENDFILE] - s0.bytes_guest[VPIPE_PRELOAD_SENDFILE], static_cast<uint64_t>(c.want));
        EXPECT_EQ(s1.bytes_dom0[VPIPE_PRELOAD_SENDFILE], s0.bytes_dom0[VPIPE_PRELOAD_SENDFILE]);
        EXPECT_GT(s1.reentrant, s0.reentrant) << "libvpipe's own sendfile must reach libc directly";
    }
    auto reasons = reinterpret_cast<GetReasons>(dlsym(RTLD_DEFAULT, "vpipe_preload_get_reasons"));
    ASSERT_NE(reasons, nullptr);
    const char* why[8];
    uint64_t n[8];
    const int k = reasons(why, n, 8);
    ASSERT_GE(k, 1);
    EXPECT_STREQ(why[0], "no vPipe guest component (no /dev/vpipe, no agent socket)");
    EXPECT_GE(n[0], 4u);
}

TEST_F(Preload, SmallAndEofCallsNeverReachLibvpipe) {
    refusing_component();
    const auto s0 = stats();
    // below the threshold
    Outcome got = sendfile_case(Sink::kTcp, 0, kNull, [](int o, int i, off_t* off) { return sendfile(o, i, off, 200000); });
    EXPECT_EQ(got.ret, 200000);
    EXPECT_EQ(got.pos, 200000);
    // large count, but only 100 bytes left: below the threshold after clamping at EOF
    got = sendfile_case(Sink::kTcp, static_cast<off_t>(kFileSize - 100), kNull,
                        [](int o, int i, off_t* off) { return sendfile(o, i, off, kMiB); });
    EXPECT_EQ(got.ret, 100);
    // at EOF
    got = sendfile_case(Sink::kTcp, 0, static_cast<off_t>(kFileSize), [](int o, int i, off_t* off) { return sendfile(o, i, off, kMiB); });
    EXPECT_EQ(got.ret, 0);
    EXPECT_EQ(got.off, static_cast<off_t>(kFileSize));
    const auto s1 = stats();
    EXPECT_EQ(s1.handed[VPIPE_PRELOAD_SENDFILE], s0.handed[VPIPE_PRELOAD_SENDFILE]);
    EXPECT_EQ(s1.passed[VPIPE_PRELOAD_SENDFILE][VPIPE_PASS_BELOW_THRESHOLD],
              s0.passed[VPIPE_PRELOAD_SENDFILE][VPIPE_PASS_BELOW_THRESHOLD] + 2);
    EXPECT_EQ(s1.passed[VPIPE_PRELOAD_SENDFILE][VPIPE_PASS_AT_EOF], s0.passed[VPIPE_PRELOAD_SENDFILE][VPIPE_PASS_AT_EOF] + 1);
}

// ---- copy_file_range ------------------------------------------------------------------------------

struct CfrCase {
    const char* what;
    off_t in_pos, out_pos;
    off_t in_off, out_off;  // kNull: NULL
    size_t len;
    unsigned flags = 0;
    int out_flags = O_WRONLY;
    bool same_file = false;
};

class CopyFileRange : public Preload {
protected:
    // a fresh source descriptor and a fresh destination (2 KiB of 'x' already in it)
    Outcome run(const CfrCase& c, bool preloaded) {
        const std::string dst = dir_ + "/dst";
        int d = open(dst.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        std::string x(2048, 'x');
        EXPECT_EQ(write(d, x.data(), x.size()), 2048);
        ::close(d);
        int in = open_src(c.same_file ? O_RDWR : O_RDONLY);
        int out = c.same_file ? in : open(dst.c_str(), c.out_flags | O_CLOEXEC);
        lseek(in, c.in_pos, SEEK_SET);
        if (!c.same_file) lseek(out, c.out_pos, SEEK_SET);
        loff_t a = c.in_off, b = c.out_off;
        Outcome o;
        errno = 0;
        o.ret = preloaded ? copy_file_range(in, c.in_off != kNull ? &a : nullptr, out, c.out_off != kNull ? &b : nullptr, c.len, c.flags)
                          : raw_cfr(in, c.in_off != kNull ? &a : nullptr, out, c.out_off != kNull ? &b : nullptr, c.len, c.flags);
        o.err = o.ret < 0 ? errno : 0;
        o.off = static_cast<off_t>(static_cast<uint64_t>(a) * 1000003u + static_cast<uint64_t>(b));  // both offsets in one number (wraps harmlessly)
        o.pos = lseek(in, 0, SEEK_CUR);
        o.out_pos = lseek(out, 0, SEEK_CUR);
        ::close(in);
        if (!c.same_file) ::close(out);
        std::ifstream f(dst, std::ios::binary);
        o.got.assign(std::istreambuf_iterator<char>(f), {});
        return o;
    }
};

TEST_F(CopyFileRange, ResultsOffsetsAndErrorsAreLibcs) {
    const CfrCase cases[] = {
        {"positions, small", 100, 10, kNull, kNull, 5000},
        {"positions, above the threshold", 100, 10, kNull, kNull, 2 * kMiB},
        {"offsets, positions stay", 100, 10, 4000, 50, 2 * kMiB},
        {"in offset, out position", 7, 10, 4000, kNull, kMiB},
        {"short at EOF", 0, 0, static_cast<off_t>(kFileSize - 300000), 0, 2 * kMiB},
        {"at EOF", 0, 0, static_cast<off_t>(kFileSize), 0, 2 * kMiB},
        {"flags", 0, 0, kNull, kNull, 2 * kMiB, 1},
        {"out O_APPEND", 0, 0, kNull, kNull, 2 * kMiB, 0, O_WRONLY | O_APPEND},
        {"out read-only", 0, 0, kNull, kNull, 2 * kMiB, 0, O_RDONLY},
        {"negative offset", 0, 0, -100, 0, 2 * kMiB},
        {"same file, overlapping", 0, 0, 0, 1000, 2 * kMiB, 0, O_WRONLY, true},
    };
    const auto start = stats();
    for (bool component : {false, true}) {
        if (component) refusing_component();
        for (const auto& c : cases) {
            const auto s0 = stats();
            const Outcome got = run(c, true);
            const auto s1 = stats();
            const Outcome want = run(c, false);
            EXPECT_EQ(got, want) << c.what << (component ? " (through libvpipe)" : " (no component)");
            EXPECT_EQ(s1.calls[VPIPE_PRELOAD_COPY_FILE_RANGE], s0.calls[VPIPE_PRELOAD_COPY_FILE_RANGE] + 1);
        }
    }
    // which of them libvpipe got: the qualifying ones above the threshold, with a component
    const auto s = stats();
    constexpr int C = VPIPE_PRELOAD_COPY_FILE_RANGE;
    EXPECT_EQ(s.handed[C] - start.handed[C], 4u);
    EXPECT_EQ(s.lib_fallback[C] - start.lib_fallback[C], 4u);
    EXPECT_EQ(s.bytes_moved[C] - start.bytes_moved[C], 2 * kMiB + 2 * kMiB + kMiB + 300000);
    EXPECT_EQ(s.passed[C][VPIPE_PASS_NO_COMPONENT] - start.passed[C][VPIPE_PASS_NO_COMPONENT], 4u);
    EXPECT_EQ(s.passed[C][VPIPE_PASS_ARGUMENTS] - start.passed[C][VPIPE_PASS_ARGUMENTS], 2u * 5);
    EXPECT_EQ(s.passed[C][VPIPE_PASS_AT_EOF] - start.passed[C][VPIPE_PASS_AT_EOF], 2u);
    EXPECT_EQ(s.passed[C][VPIPE_PASS_BELOW_THRESHOLD] - start.passed[C][VPIPE_PASS_BELOW_THRESHOLD], 2u);
}

// ---- epoll: a socket handed to libvpipe stays registered -----------------------------------------

TEST_F(Preload, EpollRegistrationSurvivesTheHandOver) {
    refusing_component();
    Tcp t;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    epoll_event ev{};
    ev.events = EPOLLOUT | EPOLLET;
    ev.data.u64 = 0x1234567890ull;
    ASSERT_EQ(epoll_ctl(ep, EPOLL_CTL_ADD, t.a, &ev), 0);
    epoll_event got[4];
    ASSERT_EQ(epoll_wait(ep, got, 4, 0), 1);  // the edge of "writable" consumed
    ASSERT_EQ(epoll_wait(ep, got, 4, 0), 0);
    int in = open_src();
    std::string rx;
    std::thread drain([&] {
        char buf[65536];
        ssize_t n;
        while (rx.size() < kMiB && (n = read(t.b, buf, sizeof(buf))) > 0) rx.append(buf, static_cast<size_t>(n));
    });
    const auto s0 = stats();
    EXPECT_EQ(sendfile(t.a, in, nullptr, kMiB), static_cast<ssize_t>(kMiB));
    drain.join();
    const auto s1 = stats();
    EXPECT_EQ(rx, slice(0, kMiB));
    EXPECT_EQ(s1.handed[VPIPE_PRELOAD_SENDFILE], s0.handed[VPIPE_PRELOAD_SENDFILE] + 1);
    EXPECT_EQ(s1.epoll_rearmed, s0.epoll_rearmed + 1);
    EXPECT_EQ(s1.epoll_lost, s0.epoll_lost);
    // registered again, same events and data: the socket is writable, so the edge is there again
    ASSERT_EQ(epoll_wait(ep, got, 4, 0), 1);
    EXPECT_EQ(got[0].data.u64, 0x1234567890ull);
    EXPECT_TRUE(got[0].events & EPOLLOUT);
    // and it is the program's registration: EPOLL_CTL_DEL works (it would fail with ENOENT otherwise)
    EXPECT_EQ(epoll_ctl(ep, EPOLL_CTL_DEL, t.a, nullptr), 0);
    ::close(in);
    ::close(ep);
}

TEST_F(Preload, AClosedDescriptorsRegistrationIsNotPutBackOnItsSuccessor) {
    refusing_component();
    int ep = epoll_create1(EPOLL_CLOEXEC);
    int num;
    {
        Tcp old;
        epoll_event ev{};
        ev.events = EPOLLOUT;
        ev.data.u64 = 99;
        ASSERT_EQ(epoll_ctl(ep, EPOLL_CTL_ADD, old.a, &ev), 0);
        num = old.a;
    }  // closed: the kernel drops the registration, so must the preload
    Tcp t;  // very likely gets the same descriptor number
    int in = open_src();
    std::thread drain([&] {
        char buf[65536];
        size_t total = 0;
        ssize_t n;
        while (total < kMiB && (n = read(t.b, buf, sizeof(buf))) > 0) total += static_cast<size_t>(n);
    });
    const auto s0 = stats();
    EXPECT_EQ(sendfile(t.a, in, nullptr, kMiB), static_cast<ssize_t>(kMiB));
    drain.join();
    EXPECT_EQ(stats().epoll_rearmed, s0.epoll_rearmed) << "descriptor " << num << " -> " << t.a;
    epoll_event got[2];
    EXPECT_EQ(epoll_wait(ep, got, 2, 0), 0) << "a socket the program never registered appeared in its epoll set";
    ::close(in);
    ::close(ep);
}

// ---- the opt-in parts (their own ctest entries set the environment) ------------------------------

TEST_F(Preload, NonblockingSocketsByPolicy) {
    refusing_component();
    const bool pass = getenv("VPIPE_PRELOAD_NONBLOCK") && std::string(getenv("VPIPE_PRELOAD_NONBLOCK")) == "pass";
    const auto s0 = stats();
    Outcome got = sendfile_case(Sink::kTcp, 0, 0, [](int o, int i, off_t* off) {
        fcntl(o, F_SETFL, fcntl(o, F_GETFL) | O_NONBLOCK);
        return sendfile(o, i, off, 2 * kMiB);
    });
    const auto s1 = stats();
    if (pass) {
        // libc's non-blocking sendfile: whatever fit into the socket, *offset says how much
        EXPECT_GT(got.ret, 0);
        EXPECT_EQ(got.off, got.ret);
        EXPECT_EQ(s1.passed[VPIPE_PRELOAD_SENDFILE][VPIPE_PASS_NONBLOCK], s0.passed[VPIPE_PRELOAD_SENDFILE][VPIPE_PASS_NONBLOCK] + 1);
        EXPECT_EQ(s1.handed[VPIPE_PRELOAD_SENDFILE], s0.handed[VPIPE_PRELOAD_SENDFILE]);
    } else {
        // synchronous: all of it, in one call
        EXPECT_EQ(got.ret, static_cast<ssize_t>(2 * kMiB));
        EXPECT_EQ(got.off, static_cast<off_t>(2 * kMiB));
        EXPECT_EQ(got.got, slice(0, 2 * kMiB));
        EXPECT_EQ(s1.handed[VPIPE_PRELOAD_SENDFILE], s0.handed[VPIPE_PRELOAD_SENDFILE] + 1);
    }
}

TEST_F(Preload, SpliceByPolicy) {
    refusing_component();
    const bool on = getenv("VPIPE_PRELOAD_SPLICE") && std::string(getenv("VPIPE_PRELOAD_SPLICE")) == "1";
    // through a pipe (what programs do): always libc's
    int p[2];
    ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
    int in = open_src();
    loff_t off = 10;
    EXPECT_EQ(splice(in, &off, p[1], nullptr, 4096, 0), 4096);
    EXPECT_EQ(off, 4096 + 10);
    ::close(p[0]);
    ::close(p[1]);
    // file -> TCP socket directly: EINVAL from Linux, a vPipe operation when opted in
    const auto s0 = stats();
    Outcome got = sendfile_case(Sink::kTcp, 0, 4096, [](int o, int i, off_t* offp) {
        loff_t x = *offp;
        ssize_t r = splice(i, &x, o, nullptr, kMiB, 0);
        *offp = x;
        return r;
    });
    Outcome want = sendfile_case(Sink::kTcp, 0, 4096, [](int o, int i, off_t* offp) {
        loff_t x = *offp;
        ssize_t r = raw_splice(i, &x, o, nullptr, kMiB, 0);
        *offp = x;
        return r;
    });
    const auto s1 = stats();
    if (on) {
        EXPECT_EQ(got.ret, static_cast<ssize_t>(kMiB));
        EXPECT_EQ(got.off, static_cast<off_t>(4096 + kMiB));
        EXPECT_EQ(got.pos, 0);
        EXPECT_EQ(got.got, slice(4096, kMiB));
        EXPECT_EQ(s1.handed[VPIPE_PRELOAD_SPLICE], s0.handed[VPIPE_PRELOAD_SPLICE] + 1);
    } else {
        EXPECT_EQ(got, want);
        EXPECT_EQ(want.err, EINVAL);
        EXPECT_EQ(s1.passed[VPIPE_PRELOAD_SPLICE][VPIPE_PASS_SPLICE_OFF], s0.passed[VPIPE_PRELOAD_SPLICE][VPIPE_PASS_SPLICE_OFF] + 1);
    }
    ::close(in);
}

}  // namespace
