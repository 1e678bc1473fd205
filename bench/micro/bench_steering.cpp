// Steering of one offloaded flow in dom0: the cost of adding and of removing one element of the
// nftables flow map (Steering::add_flow: one libnftables transaction; remove_flow), with
// p50/p99 per operation (remove_flow is two transactions: the element, then a clean-up of a
// possible hold of the flow). Runs in a private network namespace with a bridge (netns_setup.h);
// Arg = flows already steered (the map is a hash set: the cost should not depend on it).
#include <cstdio>
#include <memory>

#include <benchmark/benchmark.h>

#include "latency.h"
#include "netns_setup.h"
#include "steering/steering.h"

using namespace vpipe;

namespace {

std::unique_ptr<steering::Steering> g_steer;

// Steers `n` background flows (client ports 1..n) if not already there; false on failure.
bool background(int n, benchmark::State& state) {
    static int have = 0;
    for (; have < n; have++) {
        int r = g_steer->add_flow(bench::vm_flow(static_cast<uint16_t>(have + 1), 6000));
        if (r != 0) {
            state.SkipWithError(("background add_flow failed: " + g_steer->last_error()).c_str());
            return false;
        }
    }
    return true;
}

void BM_SteeringAdd(benchmark::State& state) {
    if (!background(static_cast<int>(state.range(0)), state)) return;
    bench::Latency lat(state);
    uint16_t port = 20000;
    for (auto _ : state) {
        const steering::FlowKey k = bench::vm_flow(port);
        port = port == 60000 ? 20000 : port + 1;
        lat.start();
        int r = g_steer->add_flow(k);
        lat.stop();
        if (r != 0 || g_steer->remove_flow(k) != 0) {
            state.SkipWithError(("add/remove failed: " + g_steer->last_error()).c_str());
            return;
        }
    }
    lat.publish();
}
BENCHMARK(BM_SteeringAdd)->Arg(0)->Arg(1000)->UseManualTime()->Unit(benchmark::kMicrosecond);

void BM_SteeringRemove(benchmark::State& state) {
    if (!background(static_cast<int>(state.range(0)), state)) return;
    bench::Latency lat(state);
    uint16_t port = 20000;
    for (auto _ : state) {
        const steering::FlowKey k = bench::vm_flow(port);
        port = port == 60000 ? 20000 : port + 1;
        if (g_steer->add_flow(k) != 0) {
            state.SkipWithError(("add_flow failed: " + g_steer->last_error()).c_str());
            return;
        }
        lat.start();
        int r = g_steer->remove_flow(k);
        lat.stop();
        if (r != 0) {
            state.SkipWithError(("remove_flow failed: " + g_steer->last_error()).c_str());
            return;
        }
    }
    lat.publish();
}
BENCHMARK(BM_SteeringRemove)->Arg(0)->Arg(1000)->UseManualTime()->Unit(benchmark::kMicrosecond);

}  // namespace

int main(int argc, char** argv) {
    if (!bench::private_net_with_bridge()) {
        std::fprintf(stderr, "bench_steering: needs CAP_NET_ADMIN for a private netns; skipped\n");
        return 0;
    }
    g_steer = steering::Steering::create("vpipe_bench");
    if (!g_steer) {
        std::fprintf(stderr, "bench_steering: Steering::create failed\n");
        return 1;
    }
    benchmark::Initialize(&argc, argv);
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    g_steer.reset();  // table + ip rules (the namespace goes with the process anyway)
    return 0;
}
