#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "io/page_pool.h"

namespace vpipe::engine {
namespace {

using namespace std::chrono_literals;

TEST(PagePool, RejectsBadSizes) {
    EXPECT_THROW(PagePool(0, 4096), std::invalid_argument);
    EXPECT_THROW(PagePool(1, 0), std::invalid_argument);
    EXPECT_THROW(PagePool(1, 1000), std::invalid_argument);
    EXPECT_THROW(PagePool(4, 4096 + 512), std::invalid_argument);
}

TEST(PagePool, BuffersAreDistinctAlignedAndWritable) {
    PagePool pool(4, 8192);
    EXPECT_EQ(pool.capacity(), 4u);
    EXPECT_EQ(pool.buffer_bytes(), 8192u);
    std::vector<PagePool::Buffer> held;
    std::set<uint8_t*> seen;
    for (int i = 0; i < 4; ++i) {
        auto b = pool.try_get();
        ASSERT_TRUE(b.has_value());
        EXPECT_EQ(b->size(), 8192u);
        EXPECT_EQ(reinterpret_cast<uintptr_t>(b->data()) % 4096, 0u);
        std::memset(b->data(), i, b->size());
        seen.insert(b->data());
        held.push_back(std::move(*b));
    }
    EXPECT_EQ(seen.size(), 4u);
    for (int i = 0; i < 4; ++i) {
        EXPECT_EQ(held[i].data()[0], i);
        EXPECT_EQ(held[i].data()[8191], i);
    }
}

TEST(PagePool, ExhaustionAndTimeout) {
    PagePool pool(2, 4096);
    auto a = pool.try_get();
    auto b = pool.get(10ms);
    ASSERT_TRUE(a && b);
    EXPECT_EQ(pool.in_use(), 2u);
    EXPECT_FALSE(pool.try_get().has_value());
    const auto start = std::chrono::steady_clock::now();
    EXPECT_FALSE(pool.get(50ms).has_value());
    EXPECT_GE(std::chrono::steady_clock::now() - start, 50ms);
    EXPECT_EQ(pool.in_use(), 2u);
}

TEST(PagePool, DestroyedBufferReturnsToPool) {
    PagePool pool(1, 4096);
    {
        auto a = pool.try_get();
        ASSERT_TRUE(a);
        EXPECT_EQ(pool.in_use(), 1u);
    }
    EXPECT_EQ(pool.in_use(), 0u);
    EXPECT_TRUE(pool.try_get().has_value());
    EXPECT_EQ(pool.in_use(), 0u);  // the temporary was returned again
}

TEST(PagePool, MovingABufferReturnsItOnce) {
    PagePool pool(2, 4096);
    auto a = pool.try_get();
    ASSERT_TRUE(a);
    PagePool::Buffer moved = std::move(*a);
    a.reset();  // the moved-from handle returns nothing
    EXPECT_EQ(pool.in_use(), 1u);
    auto b = pool.try_get();
    ASSERT_TRUE(b);
    EXPECT_NE(b->data(), moved.data());
    moved = std::move(*b);  // assignment returns the buffer `moved` held
    EXPECT_EQ(pool.in_use(), 1u);
    b.reset();
    EXPECT_EQ(pool.in_use(), 1u);
}

TEST(PagePool, GetWaitsForAReturn) {
    PagePool pool(1, 4096);
    auto held = pool.try_get();
    ASSERT_TRUE(held);
    std::thread returner([&] {
        std::this_thread::sleep_for(30ms);  // makes get() really wait; it must succeed either way
        held.reset();
    });
    const auto start = std::chrono::steady_clock::now();
    auto got = pool.get(5000ms);
    const auto waited = std::chrono::steady_clock::now() - start;
    returner.join();
    EXPECT_TRUE(got.has_value());
    EXPECT_GE(waited, 20ms);
    EXPECT_LT(waited, 4000ms);
}

TEST(PagePool, HighWater) {
    PagePool pool(8, 4096);
    EXPECT_EQ(pool.high_water(), 0u);
    {
        std::vector<PagePool::Buffer> held;
        for (int i = 0; i < 5; ++i) held.push_back(std::move(*pool.try_get()));
    }
    EXPECT_EQ(pool.in_use(), 0u);
    EXPECT_EQ(pool.high_water(), 5u);
    auto one = pool.try_get();
    EXPECT_EQ(pool.high_water(), 5u);
}

TEST(PagePool, ThreadsNeverShareABuffer) {
    constexpr int kThreads = 8;
    constexpr int kRounds = 5000;
    PagePool pool(4, 4096);
    std::atomic<int> corrupted{0};
    std::atomic<int> timeouts{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            for (int r = 0; r < kRounds; ++r) {
                auto b = pool.get(5000ms);
                if (!b) {
                    ++timeouts;
                    continue;
                }
                std::memset(b->data(), t, b->size());
                std::this_thread::yield();
                for (size_t i = 0; i < b->size(); i += 512)
                    if (b->data()[i] != t) ++corrupted;
            }
        });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(corrupted.load(), 0);
    EXPECT_EQ(timeouts.load(), 0);
    EXPECT_EQ(pool.in_use(), 0u);
    EXPECT_GE(pool.high_water(), 1u);
    EXPECT_LE(pool.high_water(), 4u);
}

}  // namespace
}  // namespace vpipe::engine
