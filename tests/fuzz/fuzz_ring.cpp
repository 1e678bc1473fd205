// fuzz_ring: the engine's ring consumer (take_requests, dom0-engine/src/host_channel.cpp)
// against a hostile guest that owns req_prod and the request slots: it may move req_prod
// anywhere, backwards included, between the engine's passes, while the engine answers some
// of what it took. The engine must never take a slot the guest did not publish, never promise
// more responses than the ring holds, and refuse (kOverflow) without moving when the indexes
// are impossible -- like vchan's io.c, it trusts only the indexes it owns.
//
// Input: 4 bytes of starting index (wrap-around included), then operations.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "host_channel.h"
#include "request.h"

using namespace vpipe::engine;

namespace {
[[noreturn]] void bug(const char*) { __builtin_trap(); }

struct Reader {
    const uint8_t* p;
    size_t n;
    bool empty() const { return n == 0; }
    uint8_t u8() {
        if (!n) return 0;
        --n;
        return *p++;
    }
    uint32_t u32() {
        uint32_t v = 0;
        for (int i = 0; i < 4; ++i) v |= uint32_t{u8()} << (8 * i);
        return v;
    }
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    alignas(4096) static uint8_t page[VPIPE_PAGE_SIZE];
    std::memset(page, 0, sizeof(page));
    auto* sring = reinterpret_cast<vpipe_sring*>(page);
    SHARED_RING_INIT(sring);
    vpipe_back_ring_t back;
    BACK_RING_INIT(&back, sring, VPIPE_PAGE_SIZE);
    Reader in{data, size};
    const RING_IDX start = in.u32();
    sring->req_prod = sring->rsp_prod = start;
    sring->req_event = sring->rsp_event = start + 1;
    back.req_cons = back.rsp_prod_pvt = start;
    const RING_IDX ring_size = RING_SIZE(&back);

    std::vector<vpipe_request> got;
    while (!in.empty()) {
        switch (in.u8() % 5) {
        case 0:   // the guest moves req_prod by a small step, either way
            sring->req_prod += static_cast<int8_t>(in.u8());
            break;
        case 1:   // the guest writes any req_prod
            sring->req_prod = in.u32();
            break;
        case 2: { // the guest writes a slot
            const uint8_t slot = in.u8();
            auto* r = reinterpret_cast<uint8_t*>(&sring->ring[slot % ring_size].req);
            for (size_t i = 0; i < sizeof(vpipe_request) && !in.empty(); ++i) r[i] = in.u8();
            break;
        }
        case 3: { // the engine takes what is published
            const RING_IDX rp = sring->req_prod;
            const RING_IDX cons0 = back.req_cons;
            got.clear();
            const RingTake t = take_requests(back, &got);
            const RING_IDX taken = back.req_cons - cons0;
            if (t == RingTake::kOverflow) {
                if (taken != 0 || !got.empty()) bug("moved on an overflow");
                break;
            }
            // Accepted indexes: rp within a ring of what was answered, and not behind us.
            if (static_cast<RING_IDX>(rp - back.rsp_prod_pvt) > ring_size) bug("producer past the ring accepted");
            if (static_cast<RING_IDX>(rp - cons0) > ring_size) bug("producer behind the consumer accepted");
            if (taken > static_cast<RING_IDX>(rp - cons0)) bug("took unpublished slots");
            if (got.size() != taken) bug("copies != consumed");
            if (static_cast<RING_IDX>(back.req_cons - back.rsp_prod_pvt) > ring_size) bug("promised too many responses");
            if (t == RingTake::kDrained && back.req_cons != rp) bug("drained but not at req_prod");
            if (t == RingTake::kStalled &&
                static_cast<RING_IDX>(back.req_cons - back.rsp_prod_pvt) != ring_size) bug("stalled with free slots");
            for (const auto& r : got) (void)check_request(r);   // what VmService::handle does next
            break;
        }
        case 4: { // the engine answers up to n of the requests it took
            unsigned n = in.u8() % (ring_size + 1);
            while (n-- && back.rsp_prod_pvt != back.req_cons) {
                vpipe_response* rsp = RING_GET_RESPONSE(&back, back.rsp_prod_pvt);
                std::memset(rsp, 0, sizeof(*rsp));
                back.rsp_prod_pvt++;
            }
            [[maybe_unused]] int notify;
            RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&back, notify);
            int more;
            RING_FINAL_CHECK_FOR_REQUESTS(&back, more);
            (void)more;
            break;
        }
        }
    }
    return 0;
}
