// The non-blocking API end to end in the lab (vpipe-lab up): an event loop in vm1 (this binary
// re-executed under `vpipe-lab exec vm1`) submits operations on one queue from one thread and
// epolls the queue's descriptor while it serves another connection; a client in vpl-client
// (this binary under `vpipe-lab client`) checks every byte against the position-addressable
// stream of the lab fixture. Helper modes: argv[1] == "--helper", argv[2] = mode, key=value args.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <vpipe/vpipe.h>

#include "support/lab_fixture.h"
#include "support/lab_sockets.h"

namespace {

using namespace vpipe::labtest;
using Clock = std::chrono::steady_clock;
std::string g_self;
constexpr uint64_t kSeed = 7;
constexpr uint64_t kPiece = 16 * kMiB;   // file -> socket: bytes per connection
constexpr uint64_t kSmall = 4096;        // then this, below the threshold: a fallback
constexpr int kConns = 4;

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
void say(const std::string& s) {
    printf("%s\n", s.c_str());
    fflush(stdout);
}

// Waits (epoll on the queue's descriptor) for one completion.
bool wait_completion(int q, vpipe_completion* c, int timeout_ms) {
    const auto end = Clock::now() + std::chrono::milliseconds(timeout_ms);
    while (Clock::now() < end) {
        if (vpipe_reap(q, c, 1) == 1) return true;
        pollfd p{vpipe_queue_fd(q), POLLIN, 0};
        poll(&p, 1, 100);
    }
    return false;
}

// vm: kConns file -> socket operations in flight at once from this thread, an echo connection
// served meanwhile, then on each restored socket a small operation (a fallback) and "DONE".
int vm_fan_out(const std::map<std::string, std::string>& a) {
    int l = listen_on(kVm1Ip, static_cast<int>(num(a, "port")));
    say("READY");
    int echo = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    std::vector<int> s(kConns);
    for (int& x : s) x = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    int f = open(a.at("file").c_str(), O_RDONLY | O_CLOEXEC);
    int q = vpipe_queue_create(kConns, 0);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    epoll_event ev{EPOLLIN, {}};
    ev.data.u64 = 1000;
    epoll_ctl(ep, EPOLL_CTL_ADD, vpipe_queue_fd(q), &ev);
    ev.data.u64 = 2000;
    epoll_ctl(ep, EPOLL_CTL_ADD, echo, &ev);
    const auto t0 = Clock::now();
    int busy_submit = 0, busy_blocking = 0, full = 0;
    for (int i = 0; i < kConns; ++i) {
        if (vpipe_submit_file_to_socket(q, f, s[i], static_cast<off_t>(i * kPiece), kPiece, i) != 0) {
            say("SUBMIT-FAILED " + std::to_string(errno));
            return 1;
        }
    }
    const double submit_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    // the library refuses a descriptor in flight, a full queue refuses more
    {   // another queue does not get it either
        int q2 = vpipe_queue_create(0, 0);
        if (vpipe_submit_file_to_socket(q2, f, s[0], 0, kPiece, 99) < 0) busy_submit = errno;
        vpipe_queue_destroy(q2);
    }
    if (vpipe_file_to_socket_fd(f, s[0], 0, kPiece) < 0) busy_blocking = errno;
    {
        int dst = open((a.at("file") + ".copy").c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (vpipe_submit_file_to_file(q, f, dst, 0, kPiece, 0, 98) < 0) full = errno;
        close(dst);
        unlink((a.at("file") + ".copy").c_str());
    }
    // what the application sees on its own socket while it is handed over (once frozen)
    // (the first call reports the error the silent disconnect left pending, later ones the state)
    int raw_recv = EAGAIN, raw_recv2 = 0, raw_send = 0, raw_hup = -1;
    char c1;
    for (int i = 0; i < 2000 && raw_recv == EAGAIN; ++i) {
        if (recv(s[kConns - 1], &c1, 1, MSG_DONTWAIT | MSG_PEEK) < 0) raw_recv = errno; else raw_recv = 0;
        if (raw_recv == EAGAIN) usleep(500);
    }
    if (raw_recv == ECONNABORTED) {
        if (recv(s[kConns - 1], &c1, 1, MSG_DONTWAIT | MSG_PEEK) < 0) raw_recv2 = errno;
        if (send(s[kConns - 1], "", 0, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) raw_send = errno;
        pollfd pf{s[kConns - 1], POLLIN | POLLOUT, 0};
        if (poll(&pf, 1, 0) == 1) raw_hup = (pf.revents & POLLHUP) ? 1 : 0;
    }
    int done = 0, echoes = 0, bad = 0;
    uint64_t offloaded = 0;
    std::vector<vpipe_completion> comp;
    while (done < kConns) {
        epoll_event got[4];
        int n = epoll_wait(ep, got, 4, 30000);
        if (n <= 0) break;
        for (int k = 0; k < n; ++k) {
            if (got[k].data.u64 == 2000) {   // other work: the echo connection
                char b[64];
                ssize_t r = recv(echo, b, sizeof(b), 0);
                if (r > 0 && write_all(echo, b, static_cast<size_t>(r)) && done < kConns) ++echoes;
                continue;
            }
            vpipe_completion c[8];
            int m = vpipe_reap(q, c, 8);
            for (int j = 0; j < m; ++j) {
                ++done;
                comp.push_back(c[j]);
                if (c[j].res != static_cast<int64_t>(kPiece) || c[j].result.path != VPIPE_RESULT_OFFLOADED) ++bad;
                offloaded += c[j].result.offloaded;
            }
        }
    }
    // each restored socket: a small operation (below the threshold: a fallback), then DONE
    int fallbacks = 0;
    for (int i = 0; i < kConns; ++i) {
        if (vpipe_submit_file_to_socket(q, f, s[i], static_cast<off_t>(i * kPiece + kPiece), kSmall, 100 + i) != 0) {
            ++bad;
            continue;
        }
        vpipe_completion c{};
        if (!wait_completion(q, &c, 10000)) {
            ++bad;
            continue;
        }
        if (c.user_data == static_cast<uint64_t>(100 + i) && c.res == static_cast<int64_t>(kSmall) &&
            c.result.path == VPIPE_RESULT_FALLBACK && std::string(c.result.reason) == "below the offload threshold")
            ++fallbacks;
        write_all(s[i], "DONE\n", 5);
    }
    char line[512];
    snprintf(line, sizeof(line),
             "RESULT done=%d bad=%d offloaded=%llu echoes=%d busy_submit=%d busy_blocking=%d full=%d "
             "raw_recv=%d raw_recv2=%d raw_send=%d raw_hup=%d fallbacks=%d submit_ms=%.1f",
             done, bad, static_cast<unsigned long long>(offloaded), echoes, busy_submit, busy_blocking, full, raw_recv,
             raw_recv2, raw_send, raw_hup, fallbacks, submit_ms);
    say(line);
    for (int i = 0; i < kConns; ++i) read_line(s[i]);   // the client's BYE
    vpipe_queue_destroy(q);
    return 0;
}

// client: the echo connection (a ping every 5 ms while the data arrives) and kConns readers.
int client_fan_out(const std::map<std::string, std::string>& a) {
    const int port = static_cast<int>(num(a, "port"));
    int echo = connect_to(kVm1Ip, port);
    std::vector<int> s(kConns);
    for (int& x : s) x = connect_to(kVm1Ip, port);
    std::atomic<bool> stop{false};
    std::atomic<int> pongs{0};
    std::thread pinger([&] {
        while (!stop) {
            if (!write_all(echo, "p", 1)) break;
            char b;
            if (recv(echo, &b, 1, 0) == 1) ++pongs;
            usleep(5000);
        }
    });
    std::vector<long long> check(kConns);
    std::vector<std::string> tail(kConns);
    std::vector<std::thread> readers;
    for (int i = 0; i < kConns; ++i)
        readers.emplace_back([&, i] {
            check[i] = recv_check(s[i], kSeed, i * kPiece, kPiece + kSmall);
            tail[i] = read_line(s[i]);
            write_all(s[i], "BYE\n", 4);
        });
    for (auto& t : readers) t.join();
    stop = true;
    pinger.join();
    int bad = 0;
    for (int i = 0; i < kConns; ++i)
        if (check[i] != -1 || tail[i] != "DONE") ++bad;
    say("RESULT bad=" + std::to_string(bad) + " pongs=" + std::to_string(pongs.load()));
    return 0;
}

// vm: socket -> file of `len` bytes submitted and cancelled at once; then the rest of the stream
// read from the restored socket; the file's prefix and the rest both checked.
int vm_cancel(const std::map<std::string, std::string>& a) {
    const uint64_t len = num(a, "len");
    int l = listen_on(kVm1Ip, static_cast<int>(num(a, "port")));
    say("READY");
    int s = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    const std::string path = a.at("file");
    int f = open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int q = vpipe_queue_create(0, 0);
    if (vpipe_submit_socket_to_file(q, s, f, 0, len, 5) != 0) {
        say("SUBMIT-FAILED " + std::to_string(errno));
        return 1;
    }
    usleep(static_cast<useconds_t>(num(a, "delay_ms", 20) * 1000));
    int cr = vpipe_cancel(q, 5);
    int cancel_errno = cr < 0 ? errno : 0;
    vpipe_completion c{};
    bool got = wait_completion(q, &c, 120000);
    const uint64_t moved = c.result.moved;
    // the prefix in the file
    long long file_bad = -1;
    {
        std::vector<uint8_t> buf(1 << 20);
        for (uint64_t off = 0; off < moved && file_bad < 0;) {
            size_t k = static_cast<size_t>(std::min<uint64_t>(buf.size(), moved - off));
            if (pread(f, buf.data(), k, static_cast<off_t>(off)) != static_cast<ssize_t>(k)) {
                file_bad = static_cast<long long>(off);
                break;
            }
            long long b = check_pattern(kSeed, off, buf.data(), k);
            if (b >= 0) file_bad = static_cast<long long>(off) + b;
            off += k;
        }
    }
    // the rest: on the socket, right after the prefix
    long long rest = recv_check(s, kSeed, moved, len - moved);
    write_all(s, "OK\n", 3);
    char line[512];
    snprintf(line, sizeof(line), "RESULT got=%d cancel=%d cancel_errno=%d res=%lld moved=%llu offloaded=%llu file_bad=%lld rest=%lld",
             got ? 1 : 0, cr, cancel_errno, static_cast<long long>(c.res), static_cast<unsigned long long>(moved),
             static_cast<unsigned long long>(c.result.offloaded), file_bad, rest);
    say(line);
    vpipe_queue_destroy(q);
    close(f);
    unlink(path.c_str());
    return 0;
}

// vm: file -> file of `len` bytes submitted and cancelled after delay_ms; the destination's
// prefix checked.
int vm_cancel_copy(const std::map<std::string, std::string>& a) {
    const uint64_t len = num(a, "len");
    int in = open(a.at("src").c_str(), O_RDONLY | O_CLOEXEC);
    int out = open(a.at("dst").c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int q = vpipe_queue_create(0, 0);
    if (vpipe_submit_file_to_file(q, in, out, 0, len, 0, 9) != 0) {
        say("SUBMIT-FAILED " + std::to_string(errno));
        return 1;
    }
    usleep(static_cast<useconds_t>(num(a, "delay_ms", 20) * 1000));
    int cr = vpipe_cancel(q, 9);
    vpipe_completion c{};
    bool got = wait_completion(q, &c, 120000);
    const uint64_t moved = c.result.moved;
    long long bad = -1;
    std::vector<uint8_t> buf(1 << 20);
    for (uint64_t off = 0; off < moved && bad < 0; off += buf.size()) {
        size_t k = static_cast<size_t>(std::min<uint64_t>(buf.size(), moved - off));
        if (pread(out, buf.data(), k, static_cast<off_t>(off)) != static_cast<ssize_t>(k)) bad = static_cast<long long>(off);
        else if (long long b = check_pattern(kSeed, off, buf.data(), k); b >= 0) bad = static_cast<long long>(off) + b;
    }
    char line[256];
    snprintf(line, sizeof(line), "RESULT got=%d cancel=%d res=%lld moved=%llu offloaded=%llu bad=%lld", got ? 1 : 0, cr,
             static_cast<long long>(c.res), static_cast<unsigned long long>(moved),
             static_cast<unsigned long long>(c.result.offloaded), bad);
    say(line);
    vpipe_queue_destroy(q);
    close(out);
    unlink(a.at("dst").c_str());
    return 0;
}

int client_send(const std::map<std::string, std::string>& a) {
    int s = connect_to(kVm1Ip, static_cast<int>(num(a, "port")));
    const uint64_t len = num(a, "len");
    std::vector<uint8_t> buf(1 << 20);
    bool ok = true;
    for (uint64_t done = 0; done < len && ok;) {
        size_t k = static_cast<size_t>(std::min<uint64_t>(buf.size(), len - done));
        fill_pattern(kSeed, done, buf.data(), k);
        ok = write_all(s, buf.data(), k);
        done += k;
    }
    say("RESULT sent=" + std::to_string(ok ? 1 : 0) + " reply=" + read_line(s));
    return 0;
}

int helper_main(int argc, char** argv) {
    const std::string mode = argv[2];
    auto a = kv(argc, argv, 3);
    signal(SIGPIPE, SIG_IGN);
    if (mode == "vm-fan-out") return vm_fan_out(a);
    if (mode == "client-fan-out") return client_fan_out(a);
    if (mode == "vm-cancel") return vm_cancel(a);
    if (mode == "client-send") return client_send(a);
    if (mode == "vm-cancel-copy") return vm_cancel_copy(a);
    return 2;
}

struct Proc : LabProc {
    Proc(const std::string& where, const std::string& mode, const std::vector<std::string>& args)
        : LabProc(where, argv_of(mode, args)) {}
    static std::vector<std::string> argv_of(const std::string& mode, const std::vector<std::string>& args) {
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

class Async : public LabFixture {
protected:
    static void SetUpTestSuite() {
        if (!bring_up({.up = {"--vms", "1", "--disk-mib", "2048"}, .binaries = {"vpipectl"}, .name = "async"})) return;
        disk_ = mount(1);
        error_ = write_pattern_file(disk_ + "/f", kSeed, kConns * kPiece + kMiB, true);
    }
    void TearDown() override {
        if (ready()) expect_nothing_left_behind();
    }
    static uint64_t engine_disk_read() { return engine_stats()["vms"][0]["disks"][0]["bytes_read"].get<uint64_t>(); }
    static inline std::string disk_;
};

TEST_F(Async, SeveralOperationsInFlightFromOneThreadWithEpoll) {
    const uint64_t read0 = engine_disk_read();
    Proc vm("vm1", "vm-fan-out", {"port=21000", "file=" + disk_ + "/f"});
    ASSERT_EQ(vm.line("READY"), "READY") << vm.all;
    Proc cl("client", "client-fan-out", {"port=21000"});
    auto r = fields(vm.line("RESULT"));
    auto c = fields(cl.line("RESULT"));
    cl.wait();
    vm.wait();
    ASSERT_FALSE(r.empty()) << vm.all;
    EXPECT_EQ(r["done"], std::to_string(kConns)) << vm.all;
    EXPECT_EQ(r["bad"], "0") << vm.all;
    EXPECT_EQ(r["offloaded"], std::to_string(kConns * kPiece)) << vm.all;
    EXPECT_EQ(r["busy_submit"], std::to_string(EBUSY));
    EXPECT_EQ(r["busy_blocking"], std::to_string(EBUSY));
    EXPECT_EQ(r["full"], std::to_string(EAGAIN));
    // the handed-over socket, seen by the application: aborted once, then not connected
    EXPECT_EQ(r["raw_recv"], std::to_string(ECONNABORTED)) << vm.all;
    EXPECT_EQ(r["raw_recv2"], std::to_string(ENOTCONN)) << vm.all;
    EXPECT_EQ(r["raw_send"], std::to_string(EPIPE)) << vm.all;
    EXPECT_EQ(r["raw_hup"], "1") << vm.all;
    EXPECT_EQ(r["fallbacks"], std::to_string(kConns));
    EXPECT_EQ(c["bad"], "0") << cl.all;
    // the event loop kept serving while dom0 moved the bytes
    EXPECT_GT(std::stoi(r["echoes"]), 0) << vm.all;
    // dom0 read the file from the disk image
    EXPECT_GE(engine_disk_read() - read0, kConns * kPiece);
    printf("[ info ] %s submits took %s ms; %s echoes served meanwhile\n", std::to_string(kConns).c_str(),
           r["submit_ms"].c_str(), r["echoes"].c_str());
}

TEST_F(Async, CancelledSocketToFileKeepsAnExactPrefixAndTheRestOnTheSocket) {
    const uint64_t len = 512 * kMiB;
    Proc vm("vm1", "vm-cancel", {"port=21001", "file=" + disk_ + "/in", "len=" + std::to_string(len)});
    ASSERT_EQ(vm.line("READY"), "READY") << vm.all;
    Proc cl("client", "client-send", {"port=21001", "len=" + std::to_string(len)});
    auto r = fields(vm.line("RESULT"));
    auto c = fields(cl.line("RESULT"));
    cl.wait();
    vm.wait();
    ASSERT_FALSE(r.empty()) << vm.all;
    EXPECT_EQ(r["got"], "1");
    EXPECT_EQ(r["cancel"], "0") << vm.all;
    EXPECT_EQ(r["res"], std::to_string(-ECANCELED)) << vm.all;
    const uint64_t moved = std::stoull(r["moved"]);
    EXPECT_LT(moved, len);
    EXPECT_EQ(r["offloaded"], r["moved"]);
    EXPECT_EQ(r["file_bad"], "-1") << vm.all;
    EXPECT_EQ(r["rest"], "-1") << vm.all;   // the socket continues exactly after the prefix
    EXPECT_EQ(c["sent"], "1");
    EXPECT_EQ(c["reply"], "OK");
    printf("[ info ] cancelled after %llu of %llu bytes\n", static_cast<unsigned long long>(moved),
           static_cast<unsigned long long>(len));
}

TEST_F(Async, CancelledFileToFileStopsBetweenStagesWithAnExactPrefix) {
    const uint64_t len = 512 * kMiB;
    ASSERT_EQ(write_pattern_file(disk_ + "/big", kSeed, len, true), "");
    Proc vm("vm1", "vm-cancel-copy", {"src=" + disk_ + "/big", "dst=" + disk_ + "/big.copy", "len=" + std::to_string(len)});
    auto r = fields(vm.line("RESULT"));
    vm.wait();
    unlink((disk_ + "/big").c_str());
    ASSERT_FALSE(r.empty()) << vm.all;
    EXPECT_EQ(r["got"], "1");
    EXPECT_EQ(r["cancel"], "0") << vm.all;
    EXPECT_EQ(r["res"], std::to_string(-ECANCELED)) << vm.all;
    const uint64_t moved = std::stoull(r["moved"]);
    EXPECT_LT(moved, len);
    EXPECT_EQ(moved % (64 * kMiB), 0u) << "whole stages (chunk_mib 64) or nothing";
    EXPECT_EQ(r["offloaded"], r["moved"]);
    EXPECT_EQ(r["bad"], "-1") << vm.all;
    printf("[ info ] file->file cancelled after %llu of %llu bytes\n", static_cast<unsigned long long>(moved),
           static_cast<unsigned long long>(len));
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
