// Small socket and argument helpers the lab suites' child processes share (the VM- and
// client-side programs a test re-executes itself as): key=value arguments, a listener, a
// connect that waits for the listener, a whole send, one line read.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

namespace vpipe::labtest {

inline std::map<std::string, std::string> kv(int argc, char** argv, int from) {
    std::map<std::string, std::string> m;
    for (int i = from; i < argc; ++i) {
        std::string a = argv[i];
        auto eq = a.find('=');
        if (eq != std::string::npos) m[a.substr(0, eq)] = a.substr(eq + 1);
    }
    return m;
}
inline uint64_t num(const std::map<std::string, std::string>& m, const std::string& k, uint64_t d = 0) {
    auto it = m.find(k);
    return it == m.end() ? d : std::stoull(it->second);
}

inline int listen_on(const std::string& ip, int port) {
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    inet_pton(AF_INET, ip.c_str(), &a.sin_addr);
    if (bind(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)) < 0 || listen(s, 16) < 0) {
        perror("listen");
        exit(3);
    }
    return s;
}
inline int connect_to(const std::string& ip, int port) {
    for (int i = 0; i < 200; ++i) {
        int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(static_cast<uint16_t>(port));
        inet_pton(AF_INET, ip.c_str(), &a.sin_addr);
        if (connect(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0) return s;
        close(s);
        usleep(20000);
    }
    perror("connect");
    exit(3);
}
inline bool write_all(int fd, const void* buf, size_t n) {
    auto* p = static_cast<const uint8_t*>(buf);
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) return false;
        p += w;
        n -= static_cast<size_t>(w);
    }
    return true;
}
inline std::string read_line(int fd) {
    std::string s;
    char c;
    while (recv(fd, &c, 1, 0) == 1) {
        if (c == '\n') return s;
        s += c;
    }
    return s.empty() ? "EOF" : s;
}

}  // namespace vpipe::labtest
