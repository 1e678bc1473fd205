// A connected TCP pair on the loopback: `a` the application's socket, `b` its peer's. Unit tests
// of libvpipe's socket paths (no lab).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

namespace vpipe::test {

struct TcpPair {
    int a = -1, b = -1;
    TcpPair() {
        int l = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in s{};
        s.sin_family = AF_INET;
        s.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t sl = sizeof(s);
        ::bind(l, reinterpret_cast<sockaddr*>(&s), sizeof(s));
        ::listen(l, 1);
        ::getsockname(l, reinterpret_cast<sockaddr*>(&s), &sl);
        a = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ::connect(a, reinterpret_cast<sockaddr*>(&s), sizeof(s));
        b = ::accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
        ::close(l);
    }
    ~TcpPair() {
        ::close(a);
        ::close(b);
    }
    TcpPair(const TcpPair&) = delete;
    TcpPair& operator=(const TcpPair&) = delete;
};

}  // namespace vpipe::test
