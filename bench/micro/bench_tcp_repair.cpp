// The guest-local steps of a socket hand-over, on a loopback connection in a private network
// namespace: freeze (TCP_REPAIR + state read), and a full freeze -> disconnect -> restore ->
// replace cycle. Needs CAP_NET_ADMIN (root).
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>

#include <benchmark/benchmark.h>

#include "tcp/tcp_repair.h"
#include "tcp_quiesce.h"

using namespace vpipe;

namespace {

int g_client = -1, g_server = -1;

bool loopback_pair() {
    int ifd = ::socket(AF_INET, SOCK_DGRAM, 0);
    ifreq ifr{};
    std::snprintf(ifr.ifr_name, IFNAMSIZ, "lo");
    ::ioctl(ifd, SIOCGIFFLAGS, &ifr);
    ifr.ifr_flags |= IFF_UP;
    if (::ioctl(ifd, SIOCSIFFLAGS, &ifr) < 0) return false;
    ::close(ifd);
    int l = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(47011);
    if (::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof(a)) < 0 || ::listen(l, 1) < 0) return false;
    g_client = ::socket(AF_INET, SOCK_STREAM, 0);
    if (::connect(g_client, reinterpret_cast<sockaddr*>(&a), sizeof(a)) < 0) return false;
    g_server = ::accept(l, nullptr, nullptr);
    ::close(l);
    return g_server >= 0;
}

void BM_Freeze(benchmark::State& state) {
    bench::wait_all_acked({g_client, g_server});
    vpipe_tcp_state st{};
    std::vector<uint8_t> sq, rq;
    for (auto _ : state) {
        if (tcp::freeze(g_server, &st, &sq, &rq) != 0 || tcp::unfreeze(g_server) != 0) {
            state.SkipWithError("freeze failed");
            break;
        }
    }
}
BENCHMARK(BM_Freeze)->Unit(benchmark::kMicrosecond);

void BM_FreezeRestoreReplace(benchmark::State& state) {
    bench::wait_all_acked({g_client, g_server});
    vpipe_tcp_state st{};
    std::vector<uint8_t> sq, rq;
    tcp::RestoreOptions opt;
    opt.no_window_probe = true;
    for (auto _ : state) {
        UniqueFd fresh;
        if (tcp::freeze(g_server, &st, &sq, &rq) != 0 || tcp::disconnect_silently(g_server) != 0 ||
            tcp::restore(st, sq, rq, opt, &fresh) != 0 || tcp::replace_fd(g_server, fresh.get()) != 0) {
            state.SkipWithError("hand-over cycle failed");
            break;
        }
    }
    // The connection must still work after all those cycles.
    char c = 'x';
    if (::send(g_client, &c, 1, 0) != 1 || ::recv(g_server, &c, 1, 0) != 1) state.SkipWithError("connection broken");
    bench::wait_all_acked({g_client, g_server});
}
BENCHMARK(BM_FreezeRestoreReplace)->Unit(benchmark::kMicrosecond);

}  // namespace

int main(int argc, char** argv) {
    if (::unshare(CLONE_NEWNET) != 0 || !loopback_pair()) {
        std::fprintf(stderr, "bench_tcp_repair: needs CAP_NET_ADMIN for a private netns; skipped\n");
        return 0;
    }
    benchmark::Initialize(&argc, argv);
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
