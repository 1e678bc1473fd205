// The steps of a socket hand-over, each with p50/p99 per operation, on a loopback connection in
// a private network namespace (with a bridge for the steering step, netns_setup.h):
//   BM_HandoverFreeze         freeze(): TCP_REPAIR on + state and queues read (unfreeze untimed)
//   BM_HandoverShadowRestore  restore() of a captured state into a new socket, as dom0 opens a
//                             shadow (IP_TRANSPARENT, no window probe; the freeze and silent
//                             disconnect before it and the replace after it untimed)
//   BM_HandoverGiveBack       freeze() + close_silently() of the shadow, as dom0 does when the
//                             connection goes back to the VM (the re-creation after it untimed)
//   BM_HandoverWhole          guest side freeze -> disconnect_silently -> restore ->
//                             copy_socket_options -> replace_fd, plus steering add_flow +
//                             remove_flow of the flow (its VM address taken in the bridge's
//                             subnet: a loopback connection is not routed via a bridge)
// The connection is checked to still carry data both ways after each benchmark.
// Needs CAP_NET_ADMIN (root).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <vector>

#include <benchmark/benchmark.h>

#include "latency.h"
#include "netns_setup.h"
#include "steering/steering.h"
#include "tcp/tcp_repair.h"
#include "tcp_quiesce.h"

using namespace vpipe;

namespace {

int g_client = -1, g_server = -1;
std::unique_ptr<steering::Steering> g_steer;

bool loopback_pair() {
    UniqueFd l(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(47012);
    if (::bind(l.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) < 0 || ::listen(l.get(), 1) < 0) return false;
    g_client = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (::connect(g_client, reinterpret_cast<sockaddr*>(&a), sizeof(a)) < 0) return false;
    g_server = ::accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC);
    return g_server >= 0;
}

// one byte each way over the (possibly re-created) connection, then quiet again
void check_connection(benchmark::State& state) {
    char c = 'x';
    if (::send(g_client, &c, 1, 0) != 1 || ::recv(g_server, &c, 1, 0) != 1 || ::send(g_server, &c, 1, 0) != 1 ||
        ::recv(g_client, &c, 1, 0) != 1)
        state.SkipWithError("connection broken");
    bench::wait_all_acked({g_client, g_server});
}

void BM_HandoverFreeze(benchmark::State& state) {
    bench::Latency lat(state);
    vpipe_tcp_state st{};
    std::vector<uint8_t> sq, rq;
    for (auto _ : state) {
        lat.start();
        int r = tcp::freeze(g_server, &st, &sq, &rq);
        lat.stop();
        if (r != 0 || tcp::unfreeze(g_server) != 0) {
            state.SkipWithError("freeze failed");
            return;
        }
    }
    lat.publish();
    check_connection(state);
}
BENCHMARK(BM_HandoverFreeze)->UseManualTime()->Unit(benchmark::kMicrosecond);

void BM_HandoverShadowRestore(benchmark::State& state) {
    bench::Latency lat(state);
    vpipe_tcp_state st{};
    std::vector<uint8_t> sq, rq;
    tcp::RestoreOptions ro;
    ro.transparent = true;
    ro.no_window_probe = true;
    for (auto _ : state) {
        if (tcp::freeze(g_server, &st, &sq, &rq) != 0 || tcp::disconnect_silently(g_server) != 0) {
            state.SkipWithError("freeze/disconnect failed");
            return;
        }
        UniqueFd shadow;
        lat.start();
        int r = tcp::restore(st, sq, rq, ro, &shadow);
        lat.stop();
        if (r != 0 || tcp::replace_fd(g_server, shadow.get()) != 0) {
            state.SkipWithError("restore failed");
            return;
        }
    }
    lat.publish();
    check_connection(state);
}
BENCHMARK(BM_HandoverShadowRestore)->UseManualTime()->Unit(benchmark::kMicrosecond);

void BM_HandoverGiveBack(benchmark::State& state) {
    bench::Latency lat(state);
    vpipe_tcp_state st{};
    std::vector<uint8_t> sq, rq;
    tcp::RestoreOptions ro;
    ro.no_window_probe = true;
    for (auto _ : state) {
        lat.start();
        int r = tcp::freeze(g_server, &st, &sq, &rq);
        if (r == 0) r = tcp::close_silently(g_server);
        lat.stop();
        UniqueFd again;
        if (r != 0 || tcp::restore(st, sq, rq, ro, &again) != 0) {
            state.SkipWithError("give-back failed");
            return;
        }
        g_server = again.release();
    }
    lat.publish();
    check_connection(state);
}
BENCHMARK(BM_HandoverGiveBack)->UseManualTime()->Unit(benchmark::kMicrosecond);

void BM_HandoverWhole(benchmark::State& state) {
    bench::Latency lat(state);
    vpipe_tcp_state st{};
    std::vector<uint8_t> sq, rq;
    tcp::RestoreOptions ro;
    ro.no_window_probe = true;
    const steering::FlowKey vm = bench::vm_flow(0);
    for (auto _ : state) {
        UniqueFd fresh;
        lat.start();
        int r = tcp::freeze(g_server, &st, &sq, &rq);
        if (r == 0) r = tcp::disconnect_silently(g_server);
        if (r == 0) r = tcp::restore(st, sq, rq, ro, &fresh);
        if (r == 0) r = tcp::copy_socket_options(g_server, fresh.get());
        if (r == 0) r = tcp::replace_fd(g_server, fresh.get());
        fresh.reset();
        steering::FlowKey k = steering::FlowKey::from_tcp_state(st);
        k.local_addr = vm.local_addr;
        if (r == 0) r = g_steer->add_flow(k);
        if (r == 0) r = g_steer->remove_flow(k);
        lat.stop();
        if (r != 0) {
            state.SkipWithError(("hand-over failed: " + g_steer->last_error()).c_str());
            return;
        }
    }
    lat.publish();
    check_connection(state);
}
BENCHMARK(BM_HandoverWhole)->UseManualTime()->Unit(benchmark::kMicrosecond);

}  // namespace

int main(int argc, char** argv) {
    if (!bench::private_net_with_bridge() || !loopback_pair()) {
        std::fprintf(stderr, "bench_handover: needs CAP_NET_ADMIN for a private netns; skipped\n");
        return 0;
    }
    g_steer = steering::Steering::create("vpipe_bench");
    if (!g_steer) {
        std::fprintf(stderr, "bench_handover: Steering::create failed\n");
        return 1;
    }
    benchmark::Initialize(&argc, argv);
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    g_steer.reset();
    ::close(g_client);
    ::close(g_server);
    return 0;
}
