// The engine-must-answer rule both guest forms apply (guest-module/core/watch.c): when the
// transport probes the engine with a NOP, when it declares it unresponsive, and what is left of
// a request it did not answer.
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "watch.h"

namespace {

constexpr uint64_t kT = 1000;   // the timeout, in the transport's clock

std::string verdict(const vpipe_watch& w, uint64_t now, uint32_t in_flight) {
    const char* why = nullptr;
    switch (vpipe_watch_check(&w, now, kT, in_flight, &why)) {
    case VPIPE_WATCH_QUIET: return "quiet";
    case VPIPE_WATCH_PROBE: return "probe";
    case VPIPE_WATCH_HUNG: return std::string("hung: ") + why;
    }
    return "?";
}

}  // namespace

TEST(EngineWatch, NothingInFlightIsNeverAHang) {
    vpipe_watch w{};
    EXPECT_EQ(verdict(w, 10 * kT, 0), "quiet");
}

TEST(EngineWatch, SilenceCountsFromTheFirstPostThenProbeThenHung) {
    vpipe_watch w{};
    vpipe_watch_posted(&w, 5000, VPIPE_OP_FILE_TO_SOCKET, 0);
    EXPECT_EQ(verdict(w, 5000 + kT / 2 - 1, 1), "quiet");
    EXPECT_EQ(verdict(w, 5000 + kT / 2, 1), "probe");
    EXPECT_EQ(verdict(w, 5000 + kT, 1), "hung: no answer at all");
    // a later post while one is outstanding does not push the silence away
    vpipe_watch_posted(&w, 5900, VPIPE_OP_FILE_TO_SOCKET, 1);
    EXPECT_EQ(verdict(w, 5000 + kT, 2), "hung: no answer at all");
}

TEST(EngineWatch, AnsweredNopsKeepALongSocketTransferAlive) {
    vpipe_watch w{};
    vpipe_watch_posted(&w, 0, VPIPE_OP_SOCKET_TO_SOCKET, 0);
    for (uint64_t t = kT / 2; t < 20 * kT; t += kT / 2) {
        EXPECT_EQ(verdict(w, t, 1), "probe") << t;
        vpipe_watch_posted(&w, t, VPIPE_OP_NOP, 1);
        vpipe_watch_answered(&w, t, VPIPE_OP_NOP);   // answered at once
    }
}

TEST(EngineWatch, AFileToFileRequestMustBeAnsweredEvenWhileNopsAre) {
    vpipe_watch w{};
    vpipe_watch_posted(&w, 0, VPIPE_OP_FILE_TO_FILE, 0);
    vpipe_watch_posted(&w, 10, VPIPE_OP_FILE_TO_FILE, 1);
    vpipe_watch_answered(&w, 600, VPIPE_OP_FILE_TO_FILE);   // one answered: the clock restarts
    vpipe_watch_answered(&w, 1500, VPIPE_OP_NOP);
    EXPECT_EQ(verdict(w, 1599, 1), "quiet");
    EXPECT_EQ(verdict(w, 1600, 1), "hung: no file -> file request answered");
    vpipe_watch_answered(&w, 1600, VPIPE_OP_FILE_TO_FILE);
    EXPECT_EQ(w.f2f_in_flight, 0u);
    EXPECT_EQ(verdict(w, 1700, 1), "quiet");
}

TEST(EngineWatch, TheClockMayWrap) {
    vpipe_watch w{};
    const uint64_t start = UINT64_MAX - 100;
    vpipe_watch_posted(&w, start, VPIPE_OP_SOCKET_TO_FILE, 0);
    EXPECT_EQ(verdict(w, start + kT / 4, 1), "quiet");
    EXPECT_EQ(verdict(w, start + kT, 1), "hung: no answer at all");
}

TEST(EngineWatch, TheTimeoutIsClampedAsVpipeKosParameter) {
    EXPECT_EQ(vpipe_watch_clamp_ms(0), 100u);
    EXPECT_EQ(vpipe_watch_clamp_ms(60000), 60000u);
    EXPECT_EQ(vpipe_watch_clamp_ms(UINT32_MAX), 3600000u);
}

TEST(EngineWatch, AnEndpointNotHandedBackIsLost) {
    vpipe_desc_header h{};
    h.src.kind = VPIPE_EP_SOCKET;
    h.dst.kind = VPIPE_EP_SOCKET;
    h.dst.result_flags = VPIPE_EPF_VALID;
    vpipe_watch_lost_header(&h);
    EXPECT_EQ(h.src.result_flags, VPIPE_EPF_TAKEN);
    EXPECT_EQ(h.dst.result_flags, VPIPE_EPF_VALID);   // handed back: dom0's final state stands
    vpipe_desc_header f{};
    f.src.kind = VPIPE_EP_FILE;
    vpipe_watch_lost_header(&f);
    EXPECT_EQ(f.src.result_flags, 0u);
}

TEST(EngineWatch, TheLastRingSlotIsTheWatchdogs) {
    alignas(4096) static uint8_t page[VPIPE_PAGE_SIZE];
    auto* sring = reinterpret_cast<vpipe_sring*>(page);
    SHARED_RING_INIT(sring);
    vpipe_ring r{};
    vpipe_ring_init(&r, sring);
    uint32_t posted = 0;
    while (vpipe_watch_room_for_request(&r)) {
        vpipe_post p{};
        p.op = VPIPE_OP_NOP;
        uint64_t id = 0;
        ASSERT_GE(vpipe_ring_post(&r, &p, nullptr, &id), 0);
        ++posted;
    }
    EXPECT_EQ(posted, VPIPE_RING_SLOTS - 1u);
    EXPECT_TRUE(vpipe_ring_has_room(&r));   // left for the NOP
}

// A request given up on: its FILE destination is marked abandoned in the live header (the
// engine re-reads it before each write batch); the rest of the header, and a socket
// destination's result_flags (dom0's word), are left as they are.
TEST(EngineWatch, AbandonMarksOnlyAFileDestination) {
    alignas(8) uint8_t page[VPIPE_PAGE_SIZE] = {};
    auto* h = reinterpret_cast<vpipe_desc_header*>(page);
    const uint32_t idx[1] = {0};
    auto mem = [](void* t, uint32_t) { return static_cast<uint8_t*>(t); };
    h->src.kind = VPIPE_EP_FILE;
    h->dst.kind = VPIPE_EP_FILE;
    vpipe_watch_abandon(mem, page, idx);
    EXPECT_EQ(h->dst.result_flags, VPIPE_EPF_ABANDONED);
    EXPECT_EQ(h->src.result_flags, 0u);
    uint64_t word = 0;
    std::memcpy(&word, page + VPIPE_ABANDON_OFFSET, sizeof(word));
    uint32_t low = 0;
    std::memcpy(&low, &word, sizeof(low));
    EXPECT_EQ(low, VPIPE_EPF_ABANDONED) << "the engine reads the mark from the word at VPIPE_ABANDON_OFFSET";

    h->dst.kind = VPIPE_EP_SOCKET;
    h->dst.result_flags = VPIPE_EPF_TAKEN;
    vpipe_watch_abandon(mem, page, idx);
    EXPECT_EQ(h->dst.result_flags, VPIPE_EPF_TAKEN);
}
