// The guest's preparing watermark as dom0 reads it (prepared_watermark.h): from the live word,
// clamped to the request, never lowered, the failure bit and a stalled guest end the wait, and
// so do the engine's cancel and stop descriptors.
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <thread>

#include <gtest/gtest.h>
#include <vpipe/abi/ring.h>

#include "prepared_watermark.h"

using namespace vpipe::engine;
using namespace std::chrono_literals;

namespace {

struct LiveWord {
    std::atomic<uint64_t> value{0};
    std::atomic<int> reads{0};
    int fail_with = 0;
    uint64_t asked_offset = 0;
    DescWordReader reader() {
        return [this](uint64_t off, uint64_t* v) {
            ++reads;
            asked_offset = off;
            if (fail_with) return fail_with;
            *v = value.load();
            return 0;
        };
    }
};

TEST(PreparedWatermark, WaitsForTheGuestAndReadsTheLiveWord) {
    LiveWord w;
    PreparedWatermark wm(w.reader(), 10 << 20);
    std::thread guest([&] {
        std::this_thread::sleep_for(20ms);  // makes the waiting case likely; the result holds either way
        w.value = 1 << 20;
    });
    uint64_t ready = 0;
    ASSERT_EQ(wm.wait_beyond(0, -1, -1, 5s, &ready), 0);
    guest.join();
    EXPECT_EQ(ready, 1u << 20);
    EXPECT_EQ(w.asked_offset, VPIPE_PREPARED_OFFSET);
    EXPECT_EQ(wm.waits(), 1u);
    // below what is known already: no read of the shared word at all
    const int reads = w.reads;
    ASSERT_EQ(wm.wait_beyond(512 << 10, -1, -1, 5s, &ready), 0);
    EXPECT_EQ(ready, 1u << 20);
    EXPECT_EQ(w.reads, reads);
}

TEST(PreparedWatermark, ClampsToTheLengthAndNeverGoesBack) {
    LiveWord w;
    PreparedWatermark wm(w.reader(), 4096);
    w.value = ~0ull >> 1;  // everything, and then some: still the request's length
    uint64_t ready = 0;
    ASSERT_EQ(wm.wait_beyond(0, -1, -1, 5s, &ready), 0);
    EXPECT_EQ(ready, 4096u);
    LiveWord v;
    PreparedWatermark wm2(v.reader(), 1 << 20);
    v.value = 8192;
    ASSERT_EQ(wm2.wait_beyond(0, -1, -1, 5s, &ready), 0);
    EXPECT_EQ(ready, 8192u);
    v.value = 100;  // a guest lowering it changes nothing dom0 already relies on
    ASSERT_EQ(wm2.wait_beyond(4096, -1, -1, 5s, &ready), 0);
    EXPECT_EQ(ready, 8192u);
}

TEST(PreparedWatermark, TheGuestsFailureEndsTheWait) {
    LiveWord w;
    PreparedWatermark wm(w.reader(), 1 << 20);
    w.value = 4096 | VPIPE_PREPARED_FAILED;
    uint64_t ready = 0;
    EXPECT_EQ(wm.wait_beyond(4096, -1, -1, 5s, &ready), -ECANCELED);
}

TEST(PreparedWatermark, AStalledGuestTimesOut) {
    LiveWord w;
    PreparedWatermark wm(w.reader(), 1 << 20);
    uint64_t ready = 0;
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(wm.wait_beyond(0, -1, -1, 100ms, &ready), -ETIMEDOUT);
    const auto took = std::chrono::steady_clock::now() - t0;
    EXPECT_GE(took, 100ms);
    EXPECT_LT(took, 2s);
}

TEST(PreparedWatermark, CancelAndStopEndTheWait) {
    for (int which = 0; which < 2; ++which) {
        LiveWord w;
        PreparedWatermark wm(w.reader(), 1 << 20);
        const int cancel = ::eventfd(0, EFD_CLOEXEC), stop = ::eventfd(0, EFD_CLOEXEC);
        ASSERT_GE(cancel, 0);
        ASSERT_GE(stop, 0);
        std::thread t([&] {
            std::this_thread::sleep_for(20ms);  // makes the waiting case likely; the result holds either way
            const uint64_t one = 1;
            EXPECT_EQ(::write(which == 0 ? cancel : stop, &one, sizeof(one)), 8);
        });
        uint64_t ready = 0;
        EXPECT_EQ(wm.wait_beyond(0, cancel, stop, 5s, &ready), -ECANCELED) << which;
        t.join();
        ::close(cancel);
        ::close(stop);
    }
}

TEST(PreparedWatermark, AnUnreadableWordIsAnError) {
    LiveWord w;
    w.fail_with = -EINVAL;
    PreparedWatermark wm(w.reader(), 1 << 20);
    uint64_t ready = 0;
    EXPECT_EQ(wm.wait_beyond(0, -1, -1, 5s, &ready), -EIO);
    PreparedWatermark none({}, 1 << 20);
    EXPECT_EQ(none.wait_beyond(0, -1, -1, 5s, &ready), -EIO);
}

}  // namespace
