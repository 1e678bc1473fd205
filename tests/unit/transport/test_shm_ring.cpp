// The shm transport and the ring discipline on top of it: handshake checks, full/empty,
// wrap-around of the free-running indexes, and event suppression.
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <future>
#include <string>

#include <gtest/gtest.h>

#include "transport/shm_channel.h"
#include "util/unix_socket.h"

using namespace vpipe;
using namespace vpipe::transport;

namespace {

std::string temp_socket_path() {
    static int n = 0;
    return "/tmp/vpipe-test-" + std::to_string(::getpid()) + "-" + std::to_string(n++) + ".sock";
}

// A connected guest/host pair over a real unix socket.
struct Pair {
    std::unique_ptr<ShmGuestChannel> guest;
    std::unique_ptr<ShmHostChannel> host;
};

Pair connect_pair(uint32_t desc_pages = 16) {
    const std::string path = temp_socket_path();
    UniqueFd lfd = listen_unix(path);
    auto host_side = std::async(std::launch::async, [&] {
        UniqueFd conn(::accept4(lfd.get(), nullptr, nullptr, SOCK_CLOEXEC));
        std::unique_ptr<ShmHostChannel> h;
        EXPECT_EQ(ShmHostChannel::accept(std::move(conn), 4, &h), 0);
        return h;
    });
    Pair p;
    EXPECT_EQ(ShmGuestChannel::open(path, desc_pages, &p.guest), 0);
    p.host = host_side.get();
    ::unlink(path.c_str());
    return p;
}

// Sends a hand-made hello with the given memfd and kick fds; returns the welcome status.
int raw_handshake(int memfd, int k1, int k2, uint32_t desc_pages, uint32_t magic = VPIPE_SHM_MAGIC) {
    const std::string path = temp_socket_path();
    UniqueFd lfd = listen_unix(path);
    auto host_side = std::async(std::launch::async, [&] {
        UniqueFd conn(::accept4(lfd.get(), nullptr, nullptr, SOCK_CLOEXEC));
        std::unique_ptr<ShmHostChannel> h;
        return ShmHostChannel::accept(std::move(conn), 4, &h);
    });
    UniqueFd c = connect_unix(path);
    vpipe_shm_hello hello{magic, VPIPE_PROTOCOL_VERSION, 0, 1, desc_pages};
    const int fds[3] = {memfd, k1, k2};
    EXPECT_EQ(send_msg_fds(c.get(), &hello, sizeof(hello), fds, 3), 0);
    vpipe_shm_welcome w{};
    int rr = recv_msg_fds(c.get(), &w, sizeof(w), nullptr, 0);
    int hr = host_side.get();
    ::unlink(path.c_str());
    EXPECT_EQ(rr, 0);
    EXPECT_EQ(w.status, hr);
    return hr;
}

UniqueFd sealed_memfd(size_t bytes, unsigned seals) {
    UniqueFd fd(::memfd_create("t", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    EXPECT_EQ(::ftruncate(fd.get(), static_cast<off_t>(bytes)), 0);
    if (seals) {
        EXPECT_EQ(::fcntl(fd.get(), F_ADD_SEALS, seals), 0);
    }
    return fd;
}

void push(ShmGuestChannel& g, uint64_t id, int* notify) {
    auto& ring = g.ring();
    vpipe_request* r = RING_GET_REQUEST(&ring, ring.req_prod_pvt);
    std::memset(r, 0, sizeof(*r));
    r->id = id;
    ring.req_prod_pvt++;
    RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&ring, *notify);
}

// Consumes every published request and answers each; returns how many.
unsigned serve_all(ShmHostChannel& h) {
    auto& back = h.ring();
    unsigned n = 0;
    int more;
    do {
        RING_IDX rp = back.sring->req_prod;
        xen_rmb();
        EXPECT_FALSE(RING_REQUEST_PROD_OVERFLOW(&back, rp));
        for (RING_IDX rc = back.req_cons; rc != rp; ++rc) {
            vpipe_request req;
            RING_COPY_REQUEST(&back, rc, &req);
            back.req_cons = rc + 1;
            vpipe_response* rsp = RING_GET_RESPONSE(&back, back.rsp_prod_pvt);
            rsp->id = req.id;
            rsp->moved = req.id * 10;
            rsp->status = 0;
            back.rsp_prod_pvt++;
            ++n;
        }
        [[maybe_unused]] int notify;
        RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&back, notify);
        RING_FINAL_CHECK_FOR_REQUESTS(&back, more);
    } while (more);
    return n;
}

}  // namespace

TEST(ShmRing, RingGeometryIsTheSpec) {
    EXPECT_EQ(VPIPE_RING_SIZE, 32u);  // (4096 - 64) / 64 rounded down to a power of two
    EXPECT_EQ(VPIPE_DESC_MAX_SEGMENTS, 2543u);
}

TEST(ShmRing, HandshakeMapsTheSameMemory) {
    Pair p = connect_pair(8);
    ASSERT_TRUE(p.guest && p.host);
    EXPECT_EQ(p.host->desc_pages(), 8u);
    EXPECT_EQ(p.guest->max_inflight(), 4u);
    std::memset(p.guest->desc_page(7), 0xab, VPIPE_PAGE_SIZE);
    std::vector<uint8_t> copy(VPIPE_PAGE_SIZE);
    ASSERT_EQ(p.host->copy_desc_page(7, copy.data()), 0);
    EXPECT_EQ(copy[0], 0xab);
    EXPECT_EQ(copy[VPIPE_PAGE_SIZE - 1], 0xab);
    EXPECT_EQ(p.host->copy_desc_page(8, copy.data()), -EINVAL);
    EXPECT_EQ(p.host->copy_desc_page(UINT32_MAX, copy.data()), -EINVAL);
}

TEST(ShmRing, FullAndEmpty) {
    Pair p = connect_pair();
    auto& ring = p.guest->ring();
    EXPECT_EQ(RING_FREE_REQUESTS(&ring), VPIPE_RING_SIZE);
    int notify;
    for (uint64_t i = 0; i < VPIPE_RING_SIZE; ++i) {
        ASSERT_FALSE(RING_FULL(&ring));
        push(*p.guest, i + 1, &notify);
    }
    EXPECT_TRUE(RING_FULL(&ring));
    EXPECT_EQ(serve_all(*p.host), VPIPE_RING_SIZE);
    // Still full from the guest's view until it consumes the responses.
    EXPECT_TRUE(RING_FULL(&ring));
    int more;
    RING_IDX rp = ring.sring->rsp_prod;
    EXPECT_EQ(rp - ring.rsp_cons, VPIPE_RING_SIZE);
    ring.rsp_cons = rp;
    RING_FINAL_CHECK_FOR_RESPONSES(&ring, more);
    EXPECT_FALSE(more);
    EXPECT_EQ(RING_FREE_REQUESTS(&ring), VPIPE_RING_SIZE);
}

TEST(ShmRing, IndexesWrapAround) {
    Pair p = connect_pair();
    auto& f = p.guest->ring();
    auto& b = p.host->ring();
    // Start both ends just below 2^32 so the free-running indexes overflow mid-test.
    const RING_IDX start = 0xFFFFFFF0u;
    f.sring->req_prod = f.sring->rsp_prod = start;
    f.sring->req_event = f.sring->rsp_event = start + 1;
    f.req_prod_pvt = f.rsp_cons = start;
    b.req_cons = b.rsp_prod_pvt = start;
    uint64_t next_id = 1, expect_id = 1;
    for (int round = 0; round < 200; ++round) {
        const unsigned batch = 1 + round % VPIPE_RING_SIZE;
        int notify;
        for (unsigned i = 0; i < batch; ++i) push(*p.guest, next_id++, &notify);
        ASSERT_EQ(serve_all(*p.host), batch);
        RING_IDX rp = f.sring->rsp_prod;
        xen_rmb();
        for (RING_IDX i = f.rsp_cons; i != rp; ++i) {
            const vpipe_response* r = RING_GET_RESPONSE(&f, i);
            ASSERT_EQ(r->id, expect_id);
            ASSERT_EQ(r->moved, expect_id * 10);
            ++expect_id;
        }
        f.rsp_cons = rp;
    }
    EXPECT_EQ(expect_id, next_id);
    EXPECT_LT(f.req_prod_pvt, start);  // it did wrap
}

TEST(ShmRing, EventSuppressionKicksOnlyASleepingConsumer) {
    Pair p = connect_pair();
    int notify = 0;
    push(*p.guest, 1, &notify);
    EXPECT_TRUE(notify);  // consumer asked for an event at req_event = 1
    push(*p.guest, 2, &notify);
    EXPECT_FALSE(notify);  // it has not caught up: no second kick
    serve_all(*p.host);    // catches up and re-arms req_event
    push(*p.guest, 3, &notify);
    EXPECT_TRUE(notify);
}

TEST(ShmRing, BackendDetectsABogusProducerIndex) {
    Pair p = connect_pair();
    auto& b = p.host->ring();
    p.guest->ring().sring->req_prod = b.req_cons + VPIPE_RING_SIZE + 1;
    EXPECT_TRUE(RING_REQUEST_PROD_OVERFLOW(&b, b.sring->req_prod));
    p.guest->ring().sring->req_prod = b.req_cons + VPIPE_RING_SIZE;
    EXPECT_FALSE(RING_REQUEST_PROD_OVERFLOW(&b, b.sring->req_prod));
}

TEST(ShmHandshake, RefusesAnUnsealedMemfd) {
    const size_t bytes = 2 * VPIPE_PAGE_SIZE;
    UniqueFd m = sealed_memfd(bytes, 0);
    UniqueFd k1(::eventfd(0, EFD_CLOEXEC)), k2(::eventfd(0, EFD_CLOEXEC));
    EXPECT_EQ(raw_handshake(m.get(), k1.get(), k2.get(), 1), -EPERM);
}

TEST(ShmHandshake, RefusesAWrongSize) {
    UniqueFd m = sealed_memfd(3 * VPIPE_PAGE_SIZE, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
    UniqueFd k1(::eventfd(0, EFD_CLOEXEC)), k2(::eventfd(0, EFD_CLOEXEC));
    EXPECT_EQ(raw_handshake(m.get(), k1.get(), k2.get(), 1), -EINVAL);
}

TEST(ShmHandshake, RefusesKicksThatAreNotEventfds) {
    UniqueFd m = sealed_memfd(2 * VPIPE_PAGE_SIZE, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
    int pipefd[2];
    ASSERT_EQ(::pipe2(pipefd, O_CLOEXEC), 0);
    UniqueFd r(pipefd[0]), w(pipefd[1]);
    UniqueFd k2(::eventfd(0, EFD_CLOEXEC));
    EXPECT_EQ(raw_handshake(m.get(), w.get(), k2.get(), 1), -EINVAL);
}

TEST(ShmHandshake, RefusesBadMagicAndPageCounts) {
    UniqueFd m = sealed_memfd(2 * VPIPE_PAGE_SIZE, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
    UniqueFd k1(::eventfd(0, EFD_CLOEXEC)), k2(::eventfd(0, EFD_CLOEXEC));
    EXPECT_EQ(raw_handshake(m.get(), k1.get(), k2.get(), 1, 0x12345678), -EPROTO);
    EXPECT_EQ(raw_handshake(m.get(), k1.get(), k2.get(), 0), -EINVAL);
    EXPECT_EQ(raw_handshake(m.get(), k1.get(), k2.get(), VPIPE_SHM_MAX_DESC_PAGES + 1), -EINVAL);
}

TEST(ShmHandshake, AcceptsACorrectHello) {
    UniqueFd m = sealed_memfd(2 * VPIPE_PAGE_SIZE, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
    UniqueFd k1(::eventfd(0, EFD_CLOEXEC)), k2(::eventfd(0, EFD_CLOEXEC));
    EXPECT_EQ(raw_handshake(m.get(), k1.get(), k2.get(), 1), 0);
}

TEST(ShmGuest, NoEngineIsAClearError) {
    std::unique_ptr<ShmGuestChannel> g;
    EXPECT_EQ(ShmGuestChannel::open("/nonexistent/vpipe.sock", 4, &g), -ENOENT);
    EXPECT_EQ(ShmGuestChannel::open("/tmp/x.sock", 0, &g), -EINVAL);
}
