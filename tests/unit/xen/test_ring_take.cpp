// take_requests(): how every transport's backend reads the guest's ring. The guest owns req_prod
// and the entries; the backend copies each request once and refuses impossible indexes.
#include <cstdlib>
#include <cstring>
#include <memory>

#include <gtest/gtest.h>

#include "host_channel.h"

using namespace vpipe;
using namespace vpipe::engine;

namespace {

struct Ring {
    Ring() {
        page = static_cast<vpipe_sring*>(std::aligned_alloc(VPIPE_PAGE_SIZE, VPIPE_PAGE_SIZE));
        std::memset(page, 0, VPIPE_PAGE_SIZE);
        SHARED_RING_INIT(page);
        FRONT_RING_INIT(&front, page, VPIPE_PAGE_SIZE);
        BACK_RING_INIT(&back, page, VPIPE_PAGE_SIZE);
    }
    ~Ring() { std::free(page); }
    void post(uint64_t id) {
        vpipe_request* r = RING_GET_REQUEST(&front, front.req_prod_pvt);
        std::memset(r, 0, sizeof *r);
        r->id = id;
        front.req_prod_pvt++;
        [[maybe_unused]] int notify;
        RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&front, notify);
    }
    void answer() {
        RING_GET_RESPONSE(&back, back.rsp_prod_pvt)->id = 0;
        back.rsp_prod_pvt++;
        [[maybe_unused]] int notify;
        RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&back, notify);
    }
    vpipe_sring* page;
    vpipe_front_ring_t front{};
    vpipe_back_ring_t back{};
};

}  // namespace

TEST(RingTake, CopiesEachPublishedRequestOnce) {
    Ring r;
    for (uint64_t i = 1; i <= 3; ++i) r.post(i);
    std::vector<vpipe_request> got;
    EXPECT_EQ(take_requests(r.back, &got), RingTake::kDrained);
    ASSERT_EQ(got.size(), 3u);
    EXPECT_EQ(got[0].id, 1u);
    EXPECT_EQ(got[2].id, 3u);
    // Changing the shared slot afterwards changes nothing we hold.
    RING_GET_REQUEST(&r.front, 0)->id = 99;
    EXPECT_EQ(got[0].id, 1u);
    got.clear();
    EXPECT_EQ(take_requests(r.back, &got), RingTake::kDrained);
    EXPECT_TRUE(got.empty());
}

TEST(RingTake, ProducerPastTheRingIsRefused) {
    Ring r;
    ASSERT_EQ(RING_SIZE(&r.back), 32u);
    r.page->req_prod = 33;  // claims 33 requests in a 32-slot ring
    std::vector<vpipe_request> got;
    EXPECT_EQ(take_requests(r.back, &got), RingTake::kOverflow);
    EXPECT_TRUE(got.empty());
    EXPECT_EQ(r.back.req_cons, 0u);  // nothing consumed
    r.page->req_prod = 0u - 1u;      // "behind" the consumer: as bad, through wrap-around
    EXPECT_EQ(take_requests(r.back, &got), RingTake::kOverflow);
    r.page->req_prod = 32;           // exactly full is fine
    EXPECT_EQ(take_requests(r.back, &got), RingTake::kDrained);
    EXPECT_EQ(got.size(), 32u);
}

TEST(RingTake, MoreOutstandingRequestsThanResponseSlotsIsAnOverflow) {
    Ring r;
    for (uint64_t i = 0; i < 32; ++i) r.post(i);
    std::vector<vpipe_request> got;
    EXPECT_EQ(take_requests(r.back, &got), RingTake::kDrained);
    ASSERT_EQ(got.size(), 32u);
    // A 33rd request while none is answered would overwrite a slot whose response is promised:
    // req_prod - rsp_prod_pvt > ring size (RING_REQUEST_PROD_OVERFLOW).
    r.page->req_prod += 1;
    got.clear();
    EXPECT_EQ(take_requests(r.back, &got), RingTake::kOverflow);
    EXPECT_TRUE(got.empty());
}

TEST(RingTake, StallsUntilAResponseFreesASlot) {
    Ring r;
    for (uint64_t i = 0; i < 32; ++i) r.post(i);
    std::vector<vpipe_request> got;
    ASSERT_EQ(take_requests(r.back, &got), RingTake::kDrained);
    // Answer one, the guest consumes it and posts one more: a legal 33rd request.
    r.answer();
    r.front.rsp_cons++;
    r.post(32);
    got.clear();
    EXPECT_EQ(take_requests(r.back, &got), RingTake::kDrained);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].id, 32u);
}

TEST(RingTake, ProducerMovedBackwardsIsRefused) {
    Ring r;
    for (uint64_t i = 0; i < 10; ++i) r.post(i);
    std::vector<vpipe_request> got;
    ASSERT_EQ(take_requests(r.back, &got), RingTake::kDrained);
    ASSERT_EQ(r.back.req_cons, 10u);
    // Behind the consumer but within a ring of rsp_prod_pvt: RING_REQUEST_PROD_OVERFLOW alone
    // lets this through, and the engine would take slots the guest never published.
    r.page->req_prod = 5;
    got.clear();
    EXPECT_EQ(take_requests(r.back, &got), RingTake::kOverflow);
    EXPECT_TRUE(got.empty());
    EXPECT_EQ(r.back.req_cons, 10u);
}
