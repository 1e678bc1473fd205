// vpipe-bench-tool: the two small programs the scenario harness (bench/run.sh) needs besides
// the applications themselves.
//
//   serve-image --image IMG --file F --port P
//       The ceiling: the native dom0 data path for file -> socket. Maps F (a file on a VM disk,
//       mounted on the host) to byte ranges of the disk image IMG with FIEMAP, listens on P and
//       answers every HTTP request on a connection with `200 OK` + the file's bytes sent with
//       sendfile(2) straight from the image: what dom0 could do with no guest in the loop.
//       Runs until SIGTERM/SIGINT.
//
//   get --host H --port P --path /F --size S --count N [--start OFF] [--wrap BYTES]
//       The operation-size sweep: one keep-alive connection, N GETs of `Range: bytes=A-B`
//       (S bytes each, consecutive ranges from OFF, back to OFF once a range would pass
//       OFF + BYTES), every body read and discarded. Prints
//       `ops=N bytes=B seconds=T p50_us=.. p99_us=.. max_us=..` (each GET from sending the
//       request to the body's last byte) on stdout; exits 1 on any protocol error or short body.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Range {
    uint64_t logical, physical, length;
};

[[noreturn]] void die(const std::string& what) {
    std::fprintf(stderr, "vpipe-bench-tool: %s: %s\n", what.c_str(), std::strerror(errno));
    std::exit(1);
}

std::string arg(int argc, char** argv, const char* name, const char* def = nullptr) {
    for (int i = 2; i + 1 < argc; ++i)
        if (std::strcmp(argv[i], name) == 0) return argv[i + 1];
    if (!def) {
        std::fprintf(stderr, "vpipe-bench-tool: %s is required\n", name);
        std::exit(2);
    }
    return def;
}

// The file's extents (flushed first), sorted by logical offset; holes or unwritten extents
// are refused (the harness maps freshly written, synced files).
std::vector<Range> map_file(const std::string& path, uint64_t* size) {
    int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) die("open " + path);
    struct stat st {};
    if (::fstat(fd, &st) < 0) die("fstat");
    *size = static_cast<uint64_t>(st.st_size);
    std::vector<Range> out;
    uint64_t start = 0;
    const unsigned kBatch = 512;
    std::vector<uint8_t> buf(sizeof(fiemap) + kBatch * sizeof(fiemap_extent));
    for (;;) {
        auto* fm = reinterpret_cast<fiemap*>(buf.data());
        std::memset(fm, 0, buf.size());
        fm->fm_start = start;
        fm->fm_length = FIEMAP_MAX_OFFSET - start;
        fm->fm_flags = FIEMAP_FLAG_SYNC;
        fm->fm_extent_count = kBatch;
        if (::ioctl(fd, FS_IOC_FIEMAP, fm) < 0) die("FIEMAP " + path);
        if (fm->fm_mapped_extents == 0) break;
        bool last = false;
        for (unsigned i = 0; i < fm->fm_mapped_extents; ++i) {
            const fiemap_extent& e = fm->fm_extents[i];
            if (e.fe_flags & (FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_ENCODED | FIEMAP_EXTENT_UNWRITTEN |
                              FIEMAP_EXTENT_DATA_INLINE)) {
                std::fprintf(stderr, "vpipe-bench-tool: %s has an extent the image cannot serve\n", path.c_str());
                std::exit(1);
            }
            out.push_back({e.fe_logical, e.fe_physical, e.fe_length});
            start = e.fe_logical + e.fe_length;
            if (e.fe_flags & FIEMAP_EXTENT_LAST) last = true;
        }
        if (last) break;
    }
    ::close(fd);
    uint64_t expect = 0;
    for (const Range& r : out) {
        if (r.logical != expect) {
            std::fprintf(stderr, "vpipe-bench-tool: %s has a hole at %llu\n", path.c_str(),
                         static_cast<unsigned long long>(expect));
            std::exit(1);
        }
        expect += r.length;
    }
    if (expect < *size) {
        std::fprintf(stderr, "vpipe-bench-tool: %s is not fully mapped\n", path.c_str());
        std::exit(1);
    }
    return out;
}

bool send_all(int fd, const char* p, size_t n) {
    while (n > 0) {
        ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        p += w;
        n -= static_cast<size_t>(w);
    }
    return true;
}

void serve_connection(int c, int img, const std::vector<Range>& map, uint64_t size) {
    std::string head;
    char buf[4096];
    for (;;) {
        size_t end;
        while ((end = head.find("\r\n\r\n")) == std::string::npos) {
            ssize_t n = ::recv(c, buf, sizeof buf, 0);
            if (n <= 0) {
                ::close(c);
                return;
            }
            head.append(buf, static_cast<size_t>(n));
        }
        head.erase(0, end + 4);
        const std::string resp = "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(size) +
                                 "\r\nContent-Type: application/octet-stream\r\n\r\n";
        if (!send_all(c, resp.data(), resp.size())) break;
        bool ok = true;
        for (const Range& r : map) {
            uint64_t len = std::min<uint64_t>(r.length, size - r.logical);
            off_t off = static_cast<off_t>(r.physical);
            while (len > 0) {
                ssize_t w = ::sendfile(c, img, &off, std::min<uint64_t>(len, 1u << 30));
                if (w < 0 && errno == EINTR) continue;
                if (w <= 0) {
                    ok = false;
                    break;
                }
                len -= static_cast<uint64_t>(w);
            }
            if (!ok) break;
        }
        if (!ok) break;
    }
    ::close(c);
}

int serve_image(int argc, char** argv) {
    const std::string image = arg(argc, argv, "--image"), file = arg(argc, argv, "--file");
    const int port = std::atoi(arg(argc, argv, "--port").c_str());
    uint64_t size = 0;
    const std::vector<Range> map = map_file(file, &size);
    int img = ::open(image.c_str(), O_RDONLY);
    if (img < 0) die("open " + image);
    int ls = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    if (::bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) die("bind");
    if (::listen(ls, 64) < 0) die("listen");
    std::printf("listening on %d: %s = %zu extent(s) of %s, %llu bytes\n", port, file.c_str(), map.size(),
                image.c_str(), static_cast<unsigned long long>(size));
    std::fflush(stdout);
    for (;;) {
        int c = ::accept4(ls, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) {
            if (errno == EINTR) continue;
            die("accept");
        }
        std::thread(serve_connection, c, img, std::cref(map), size).detach();
    }
}

int get(int argc, char** argv) {
    const std::string host = arg(argc, argv, "--host"), port = arg(argc, argv, "--port"),
                      path = arg(argc, argv, "--path");
    const uint64_t size = std::strtoull(arg(argc, argv, "--size").c_str(), nullptr, 0);
    const uint64_t count = std::strtoull(arg(argc, argv, "--count").c_str(), nullptr, 0);
    const uint64_t start = std::strtoull(arg(argc, argv, "--start", "0").c_str(), nullptr, 0);
    const uint64_t wrap = std::strtoull(arg(argc, argv, "--wrap", "0").c_str(), nullptr, 0);
    uint64_t off = start;
    addrinfo hints{}, *ai = nullptr;
    hints.ai_socktype = SOCK_STREAM;
    if (::getaddrinfo(host.c_str(), port.c_str(), &hints, &ai) != 0 || !ai) die("resolve " + host);
    int s = ::socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (::connect(s, ai->ai_addr, ai->ai_addrlen) < 0) die("connect");
    ::freeaddrinfo(ai);
    int one = 1;
    ::setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    std::vector<char> buf(1 << 20);
    std::string pending;
    uint64_t total = 0;
    std::vector<double> lat;
    lat.reserve(count);
    const auto t0 = std::chrono::steady_clock::now();
    for (uint64_t i = 0; i < count; ++i, off += size) {
        if (wrap && off + size > start + wrap) off = start;
        const auto op0 = std::chrono::steady_clock::now();
        const std::string req = "GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\nRange: bytes=" +
                                std::to_string(off) + "-" + std::to_string(off + size - 1) + "\r\n\r\n";
        if (!send_all(s, req.data(), req.size())) die("send");
        size_t end;
        while ((end = pending.find("\r\n\r\n")) == std::string::npos) {
            ssize_t n = ::recv(s, buf.data(), buf.size(), 0);
            if (n <= 0) die("response head");
            pending.append(buf.data(), static_cast<size_t>(n));
        }
        const std::string headers = pending.substr(0, end);
        pending.erase(0, end + 4);
        if (headers.compare(0, 12, "HTTP/1.1 206") != 0) {
            std::fprintf(stderr, "vpipe-bench-tool: unexpected response: %s\n", headers.substr(0, 80).c_str());
            return 1;
        }
        auto cl = headers.find("Content-Length: ");
        if (cl == std::string::npos) cl = headers.find("content-length: ");
        const uint64_t body = cl == std::string::npos ? 0 : std::strtoull(headers.c_str() + cl + 16, nullptr, 10);
        if (body != size) {
            std::fprintf(stderr, "vpipe-bench-tool: body of %llu bytes, asked for %llu\n",
                         static_cast<unsigned long long>(body), static_cast<unsigned long long>(size));
            return 1;
        }
        uint64_t left = body;
        const uint64_t have = std::min<uint64_t>(left, pending.size());
        pending.erase(0, have);
        left -= have;
        while (left > 0) {
            ssize_t n = ::recv(s, buf.data(), std::min<uint64_t>(left, buf.size()), 0);
            if (n <= 0) die("body");
            left -= static_cast<uint64_t>(n);
        }
        total += body;
        lat.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - op0).count());
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::sort(lat.begin(), lat.end());
    auto pct = [&](double q) { return lat.empty() ? 0.0 : lat[static_cast<size_t>(q * static_cast<double>(lat.size() - 1) + 0.5)]; };
    std::printf("ops=%llu bytes=%llu seconds=%.6f p50_us=%.1f p99_us=%.1f max_us=%.1f\n",
                static_cast<unsigned long long>(count), static_cast<unsigned long long>(total), secs, pct(0.5),
                pct(0.99), lat.empty() ? 0.0 : lat.back());
    ::close(s);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc >= 2 && std::strcmp(argv[1], "serve-image") == 0) return serve_image(argc, argv);
    if (argc >= 2 && std::strcmp(argv[1], "get") == 0) return get(argc, argv);
    std::fprintf(stderr,
                 "usage: vpipe-bench-tool serve-image --image IMG --file F --port P\n"
                 "       vpipe-bench-tool get --host H --port P --path /F --size S --count N [--start OFF] [--wrap BYTES]\n");
    return 2;
}
