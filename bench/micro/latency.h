// Per-operation latency of a micro-benchmark: each iteration times its one operation with
// steady_clock (reported as manual time, so the untimed set-up/tear-down around it does not
// count), and the distribution is published as counters p50_us / p99_us next to the mean
// (Google Benchmark's real_time column, microseconds).
#pragma once

#include <algorithm>
#include <chrono>
#include <vector>

#include <benchmark/benchmark.h>

namespace vpipe::bench {

class Latency {
public:
    using Clock = std::chrono::steady_clock;
    explicit Latency(benchmark::State& state) : state_(state) { us_.reserve(1 << 16); }

    void start() { t0_ = Clock::now(); }
    // ends the iteration's timed part
    void stop() {
        const double s = std::chrono::duration<double>(Clock::now() - t0_).count();
        state_.SetIterationTime(s);
        us_.push_back(s * 1e6);
    }
    // call once after the loop
    void publish() {
        if (us_.empty()) return;
        std::sort(us_.begin(), us_.end());
        state_.counters["p50_us"] = at(0.50);
        state_.counters["p99_us"] = at(0.99);
    }

private:
    double at(double q) const {  // nearest rank
        size_t i = static_cast<size_t>(q * static_cast<double>(us_.size()));
        return us_[std::min(i, us_.size() - 1)];
    }
    benchmark::State& state_;
    std::vector<double> us_;
    Clock::time_point t0_{};
};

}  // namespace vpipe::bench
