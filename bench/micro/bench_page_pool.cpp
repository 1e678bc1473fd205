// Page pool get/put: the engine takes one buffer per I/O window.
#include <benchmark/benchmark.h>

#include "io/page_pool.h"

using vpipe::engine::PagePool;

static void BM_PagePoolGetPut(benchmark::State& state) {
    PagePool pool(64, 1 << 20);
    for (auto _ : state) {
        auto b = pool.try_get();
        benchmark::DoNotOptimize(b->data());
    }
}
BENCHMARK(BM_PagePoolGetPut);

static void BM_PagePoolContended(benchmark::State& state) {
    static PagePool pool(8, 1 << 20);
    for (auto _ : state) {
        auto b = pool.get(std::chrono::milliseconds(100));
        benchmark::DoNotOptimize(b);
    }
}
BENCHMARK(BM_PagePoolContended)->Threads(1)->Threads(2)->Threads(8);

BENCHMARK_MAIN();
