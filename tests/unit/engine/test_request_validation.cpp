// Every field of a ring request is checked before use: one test per way a guest can lie.
#include <arpa/inet.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include <gtest/gtest.h>

#include "request.h"

using namespace vpipe::engine;

namespace {

constexpr uint64_t kDiskSize = 1ull << 30;  // vdev 51712, writable
constexpr uint32_t kVdev = 51712, kRoVdev = 51728;

DiskLookup lookup() {
    return [](uint32_t vdev) -> std::optional<DiskLimits> {
        if (vdev == kVdev) return DiskLimits{kDiskSize, true};
        if (vdev == kRoVdev) return DiskLimits{kDiskSize, false};
        return std::nullopt;
    };
}

// A valid file->file request: 3 source segments (one hole), 2 destination segments.
struct Fixture {
    vpipe_request req{};
    vpipe_desc_header h{};
    std::vector<vpipe_segment> segs;
    bool keep_area_pages = false;  // tests that lie about area_pages set it themselves

    Fixture() {
        req.id = 7;
        req.op = VPIPE_OP_FILE_TO_FILE;
        req.length = 3 * 4096;
        req.nr_pages = 1;
        h.magic = VPIPE_DESC_MAGIC;
        h.version = VPIPE_PROTOCOL_VERSION;
        h.header_bytes = sizeof(h);
        h.src = {VPIPE_EP_FILE, kVdev, 0, 3, 0, 0, {}, {}};
        h.dst = {VPIPE_EP_FILE, kVdev, 3, 2, 0, 0, {}, {}};
        segs = {{4096 * 100, 4096, 0, 0}, {0, 4096, VPIPE_SEG_ZERO, 0}, {4096 * 7, 4096, 0, 0},
                {4096 * 500, 8192, 0, 0}, {4096 * 900, 4096, 0, 0}};
    }
    std::vector<uint8_t> desc() {
        h.nr_segments = static_cast<uint32_t>(segs.size());
        if (!keep_area_pages) h.area_pages = req.nr_pages;
        std::vector<uint8_t> d(sizeof(h) + segs.size() * sizeof(vpipe_segment));
        std::memcpy(d.data(), &h, sizeof(h));
        std::memcpy(d.data() + sizeof(h), segs.data(), segs.size() * sizeof(vpipe_segment));
        req.desc_bytes = static_cast<uint32_t>(d.size());
        d.resize(size_t{req.nr_pages} * VPIPE_PAGE_SIZE);
        return d;
    }
    int parse(ParsedRequest* out = nullptr) {
        auto d = desc();
        ParsedRequest tmp;
        return parse_request(req, d, lookup(), out ? out : &tmp);
    }
};

}  // namespace

TEST(RequestValidation, AcceptsAValidFileToFile) {
    Fixture f;
    ParsedRequest p;
    ASSERT_EQ(f.parse(&p), 0);
    EXPECT_EQ(p.id, 7u);
    ASSERT_EQ(p.src_file.extents.size(), 3u);
    EXPECT_TRUE(p.src_file.extents[1].zero);
    EXPECT_EQ(p.src_file.extents[2].disk_offset, 4096u * 7);
    ASSERT_EQ(p.dst_file.extents.size(), 2u);
    EXPECT_EQ(p.dst_file.extents[0].length, 8192u);
}

TEST(RequestValidation, Nop) {
    vpipe_request r{};
    r.op = VPIPE_OP_NOP;
    EXPECT_EQ(check_request(r), 0);
    r.length = 1;
    EXPECT_EQ(check_request(r), -EINVAL);
    r.length = 0;
    r.page[3] = 1;
    EXPECT_EQ(check_request(r), -EINVAL);
}

TEST(RequestValidation, HeaderFields) {
    { Fixture f; f.req.flags = 2; EXPECT_EQ(f.parse(), -EINVAL); }  // unknown flag
    { Fixture f; f.req.flags = VPIPE_REQF_INDIRECT; EXPECT_EQ(f.parse(), -EINVAL); }  // 1 page: direct only
    { Fixture f; f.req.reserved0 = 1; EXPECT_EQ(f.parse(), -EINVAL); }
    { Fixture f; f.req.op = VPIPE_OP_MAX_; EXPECT_EQ(f.parse(), -EINVAL); }
    { Fixture f; f.req.op = 200; EXPECT_EQ(f.parse(), -EINVAL); }
    { Fixture f; f.req.length = 0; EXPECT_EQ(f.parse(), -EINVAL); }
    { Fixture f; f.req.length = VPIPE_MAX_REQUEST_LENGTH + 1; EXPECT_EQ(f.parse(), -EINVAL); }
    { Fixture f; f.req.nr_pages = 0; EXPECT_EQ(check_request(f.req), -EINVAL); }
    { Fixture f; f.req.nr_pages = VPIPE_DESC_MAX_PAGES + 1; f.req.desc_bytes = 300; EXPECT_EQ(check_request(f.req), -EINVAL); }
    { Fixture f; f.req.page[5] = 9; EXPECT_EQ(f.parse(), -EINVAL); }  // unused page slot
}

TEST(RequestValidation, DescriptorBytes) {
    Fixture f;
    auto d = f.desc();
    ParsedRequest p;
    f.req.desc_bytes = sizeof(vpipe_desc_header) - 1;
    EXPECT_EQ(parse_request(f.req, d, lookup(), &p), -EINVAL);
    f.req.desc_bytes = VPIPE_PAGE_SIZE + 1;  // more than its one page
    EXPECT_EQ(parse_request(f.req, d, lookup(), &p), -EINVAL);
    // Segments claimed beyond desc_bytes.
    Fixture g;
    g.desc();
    auto d2 = g.desc();
    g.req.desc_bytes -= sizeof(vpipe_segment);
    EXPECT_EQ(parse_request(g.req, d2, lookup(), &p), -EINVAL);
}

TEST(RequestValidation, DescriptorHeader) {
    { Fixture f; f.h.magic ^= 1; EXPECT_EQ(f.parse(), -EINVAL); }
    { Fixture f; f.h.version = 1; EXPECT_EQ(f.parse(), -EINVAL); }  // an older guest
    { Fixture f; f.h.header_bytes = 256; EXPECT_EQ(f.parse(), -EINVAL); }
    { Fixture f; f.keep_area_pages = true; f.h.area_pages = 2; EXPECT_EQ(f.parse(), -EINVAL); }
    { Fixture f; f.keep_area_pages = true; f.h.area_pages = 0; EXPECT_EQ(f.parse(), -EINVAL); }
    { Fixture f; f.h.src.kind = VPIPE_EP_SOCKET; EXPECT_EQ(f.parse(), -EINVAL); }
    { Fixture f; f.h.dst.kind = 9; EXPECT_EQ(f.parse(), -EINVAL); }
    { Fixture f; f.h.src.prepared = 1; EXPECT_EQ(f.parse(), -EINVAL); }
    { Fixture f; f.h.src.result_flags = VPIPE_EPF_VALID; EXPECT_EQ(f.parse(), -EINVAL); }
    { Fixture f; f.h.dst.tail_len = 1; EXPECT_EQ(f.parse(), -EINVAL); }  // tails are for sockets
}

TEST(RequestValidation, SegmentIndexesCannotOverflow) {
    { Fixture f; f.h.dst.first_segment = 0xFFFFFFFFu; EXPECT_EQ(f.parse(), -EINVAL); }
    { Fixture f; f.h.dst.nr_segments = 0xFFFFFFFFu; EXPECT_EQ(f.parse(), -EINVAL); }
    { Fixture f; f.h.src.nr_segments = 0; EXPECT_EQ(f.parse(), -EINVAL); }
    { Fixture f; f.h.dst.first_segment = 2; EXPECT_EQ(f.parse(), -EINVAL); }  // overlaps src
}

TEST(RequestValidation, DisksAreTheVmsOwn) {
    { Fixture f; f.h.src.vdev = 1234; EXPECT_EQ(f.parse(), -EPERM); }
    { Fixture f; f.h.dst.vdev = kRoVdev; EXPECT_EQ(f.parse(), -EROFS); }
    { Fixture f; f.h.src.vdev = kRoVdev; EXPECT_EQ(f.parse(), 0); }  // reading is fine
}

TEST(RequestValidation, SegmentsStayInsideTheDisk) {
    { Fixture f; f.segs[0].disk_offset = kDiskSize; EXPECT_EQ(f.parse(), -ERANGE); }
    { Fixture f; f.segs[0].disk_offset = kDiskSize - 4095; EXPECT_EQ(f.parse(), -ERANGE); }
    { Fixture f; f.segs[0].disk_offset = kDiskSize - 4096; EXPECT_EQ(f.parse(), 0); }
    // disk_offset + length wraps around 2^64
    { Fixture f; f.segs[3].disk_offset = UINT64_MAX - 100; EXPECT_EQ(f.parse(), -ERANGE); }
}

TEST(RequestValidation, SegmentFields) {
    { Fixture f; f.segs[0].length = 0; EXPECT_EQ(f.parse(), -EINVAL); }
    { Fixture f; f.segs[0].reserved0 = 1; EXPECT_EQ(f.parse(), -EINVAL); }
    { Fixture f; f.segs[0].flags = 0x8; EXPECT_EQ(f.parse(), -EINVAL); }
    { Fixture f; f.segs[1].disk_offset = 4096; EXPECT_EQ(f.parse(), -EINVAL); }  // hole with offset
    { Fixture f; f.segs[3].flags = VPIPE_SEG_ZERO; f.segs[3].disk_offset = 0; EXPECT_EQ(f.parse(), -EINVAL); }
}

TEST(RequestValidation, LengthsMustAddUp) {
    { Fixture f; f.req.length += 1; EXPECT_EQ(f.parse(), -EINVAL); }
    { Fixture f; f.segs[4].length = 4095; EXPECT_EQ(f.parse(), -EINVAL); }
}

TEST(RequestValidation, DestinationAlignmentRule) {
    // Ends of a destination may be unaligned ...
    {
        Fixture f;
        f.segs[3].disk_offset += 100;
        f.segs[3].length -= 100;
        f.segs[4].length -= 1;
        f.req.length -= 101;
        f.segs[2].length -= 101;
        EXPECT_EQ(f.parse(), 0);
    }
    // ... an inner boundary may not.
    {
        Fixture f;
        f.segs[3].length -= 1;
        f.segs[4].length += 1;
        EXPECT_EQ(f.parse(), -EINVAL);
    }
    // Sources may be unaligned anywhere.
    {
        Fixture f;
        f.segs[0].disk_offset += 1;
        f.segs[2].disk_offset += 3;
        EXPECT_EQ(f.parse(), 0);
    }
}

// ---- socket endpoints -------------------------------------------------------------------

namespace {

const VmIdentity kVm = VmIdentity::from_ip_string("10.199.0.11");

vpipe_tcp_state good_tcp(uint16_t lport = 5000) {
    vpipe_tcp_state t{};
    t.family = VPIPE_AF_INET;
    t.options = VPIPE_TCPOPT_SACK | VPIPE_TCPOPT_TIMESTAMP | VPIPE_TCPOPT_WSCALE;
    t.snd_wscale = 7;
    t.rcv_wscale = 7;
    t.local_port = htons(lport);
    t.remote_port = htons(40000);
    const uint8_t vm[4] = {10, 199, 0, 11}, cl[4] = {10, 199, 0, 1};
    std::memcpy(t.local_addr, vm, 4);
    std::memcpy(t.remote_addr, cl, 4);
    t.snd_seq = 1000;
    t.rcv_seq = 2000;
    t.mss = 1448;
    t.snd_wnd = t.max_window = t.rcv_wnd = 65535;
    return t;
}

// file -> socket with the 3 source segments of Fixture and the socket's carry room after them
struct SockFixture : Fixture {
    SockFixture() {
        req.op = VPIPE_OP_FILE_TO_SOCKET;
        req.nr_pages = 10;
        segs.resize(3);
        h.dst = {VPIPE_EP_SOCKET, 0, 0, 0, 0, 0, {}, good_tcp()};
        h.dst.tcp.carry_offset = 8192;
    }
    int parse_sock(ParsedRequest* out = nullptr, const VmIdentity& id = kVm) {
        auto d = desc();
        ParsedRequest tmp;
        return parse_request(req, d, lookup(), out ? out : &tmp, id);
    }
};

}  // namespace

TEST(SocketValidation, AcceptsFileToSocket) {
    SockFixture f;
    ParsedRequest p;
    ASSERT_EQ(f.parse_sock(&p), 0);
    EXPECT_EQ(p.src_file.extents.size(), 3u);
    EXPECT_EQ(p.dst_sock.tcp.mss, 1448u);
    EXPECT_EQ(p.dst_sock.room, 10 * 4096u - 8192u);
    EXPECT_EQ(p.area.size(), 10u);
}

TEST(SocketValidation, AddressesMustBeTheVmsOwn) {
    SockFixture f;
    EXPECT_EQ(f.parse_sock(nullptr, VmIdentity{}), -EPERM);  // VM without a network identity
    f.h.dst.tcp.local_addr[3] = 12;                          // vm2's address
    EXPECT_EQ(f.parse_sock(), -EPERM);
    SockFixture g;
    const uint8_t lo[4] = {127, 0, 0, 1};
    std::memcpy(g.h.dst.tcp.remote_addr, lo, 4);
    EXPECT_EQ(g.parse_sock(), -EPERM);
    SockFixture m;
    m.h.dst.tcp.remote_addr[0] = 224;  // multicast peer
    EXPECT_EQ(m.parse_sock(), -EPERM);
    SockFixture z;
    z.h.dst.tcp.remote_addr[0] = 0;  // 0.199.0.1: "this network", i.e. the host itself
    EXPECT_EQ(z.parse_sock(), -EPERM);
    SockFixture v6;
    v6.h.dst.tcp.family = VPIPE_AF_INET6;
    EXPECT_EQ(v6.parse_sock(), -EPERM);
    SockFixture self;
    std::memcpy(self.h.dst.tcp.remote_addr, self.h.dst.tcp.local_addr, 4);
    EXPECT_EQ(self.parse_sock(), -EPERM);
}

TEST(SocketValidation, FamilyPortsAndOptions) {
    auto bad = [](auto mutate) {
        SockFixture f;
        mutate(f.h.dst.tcp);
        return f.parse_sock();
    };
    EXPECT_EQ(bad([](vpipe_tcp_state& t) { t.family = 5; }), -EINVAL);
    EXPECT_EQ(bad([](vpipe_tcp_state& t) { t.local_port = 0; }), -EINVAL);
    EXPECT_EQ(bad([](vpipe_tcp_state& t) { t.remote_port = 0; }), -EINVAL);
    EXPECT_EQ(bad([](vpipe_tcp_state& t) { t.options |= 0x80; }), -EINVAL);
    EXPECT_EQ(bad([](vpipe_tcp_state& t) { t.snd_wscale = 15; }), -EINVAL);
    EXPECT_EQ(bad([](vpipe_tcp_state& t) { t.options = 0; }), -EINVAL);  // scales without WSCALE
    EXPECT_EQ(bad([](vpipe_tcp_state& t) { t.mss = 0; }), -EINVAL);
    EXPECT_EQ(bad([](vpipe_tcp_state& t) { t.mss = 70000; }), -EINVAL);
}

TEST(SocketValidation, ReservedFieldsAndCarriedQueues) {
    auto bad = [](auto mutate) {
        SockFixture f;
        mutate(f.h.dst);
        return f.parse_sock();
    };
    EXPECT_EQ(bad([](vpipe_endpoint& e) { e.result_flags = 1; }), -EINVAL);
    EXPECT_EQ(bad([](vpipe_endpoint& e) { e.prepared = 1; }), -EINVAL);
    EXPECT_EQ(bad([](vpipe_endpoint& e) { e.tcp.reserved0 = 1; }), -EINVAL);
    EXPECT_EQ(bad([](vpipe_endpoint& e) { e.vdev = kVdev; }), -EINVAL);
    EXPECT_EQ(bad([](vpipe_endpoint& e) { e.nr_segments = 1; }), -EINVAL);
    // queues travel with the connection (version 2): accepted when they fit the room
    EXPECT_EQ(bad([](vpipe_endpoint& e) { e.tcp.sndq_len = 100; e.tcp.sndq_unsent = 40; }), 0);
    EXPECT_EQ(bad([](vpipe_endpoint& e) { e.tcp.rcvq_len = 7; }), 0);
    EXPECT_EQ(bad([](vpipe_endpoint& e) { e.tail_len = 2; }), 0);
    EXPECT_EQ(bad([](vpipe_endpoint& e) { e.tcp.sndq_len = 10; e.tcp.sndq_unsent = 11; }), -EINVAL);
    // room: 10 pages - 8192 = 32768 bytes
    EXPECT_EQ(bad([](vpipe_endpoint& e) { e.tcp.sndq_len = 20000; e.tcp.rcvq_len = 12768; }), 0);
    EXPECT_EQ(bad([](vpipe_endpoint& e) { e.tcp.sndq_len = 20000; e.tcp.rcvq_len = 12769; }), -EINVAL);
    EXPECT_EQ(bad([](vpipe_endpoint& e) { e.tcp.sndq_len = 30000; e.tail_len = 2769; }), -EINVAL);
    EXPECT_EQ(bad([](vpipe_endpoint& e) { e.tcp.rcvq_len = 0xFFFFFFF0u; e.tcp.sndq_len = 0x20; }), -EINVAL);
}

TEST(SocketValidation, CarryRoomInsideThePages) {
    auto with = [](uint32_t off, uint8_t pages) {
        SockFixture f;
        f.req.nr_pages = pages;
        f.h.dst.tcp.carry_offset = off;
        return f.parse_sock();
    };
    EXPECT_EQ(with(4096, 2), 0);
    EXPECT_EQ(with(4100, 2), -EINVAL);   // room below VPIPE_CARRY_MIN
    EXPECT_EQ(with(4097, 3), -EINVAL);   // not 8-aligned
    EXPECT_EQ(with(16, 2), -EINVAL);     // overlaps the stream in use
    EXPECT_EQ(with(8192, 2), -EINVAL);   // outside the pages
    EXPECT_EQ(with(1u << 31, 10), -EINVAL);
}

TEST(SocketValidation, SegmentsBelongToTheFileEndpoint) {
    SockFixture f;
    f.segs.resize(5);  // 2 stray segments
    f.segs[3] = {4096, 4096, 0, 0};
    f.segs[4] = {8192, 4096, 0, 0};
    EXPECT_EQ(f.parse_sock(), -EINVAL);
    SockFixture g;
    g.h.src.kind = VPIPE_EP_SOCKET;  // wrong kind for the op
    EXPECT_EQ(g.parse_sock(), -EINVAL);
}

TEST(SocketValidation, SocketToSocketRoomsAndDistinctFlows) {
    Fixture f;
    f.req.op = VPIPE_OP_SOCKET_TO_SOCKET;
    f.req.nr_pages = 10;
    f.segs.clear();
    f.h.src = {VPIPE_EP_SOCKET, 0, 0, 0, 0, 0, {}, good_tcp(5000)};
    f.h.dst = {VPIPE_EP_SOCKET, 0, 0, 0, 0, 0, {}, good_tcp(5001)};
    f.h.src.tcp.carry_offset = 272;
    f.h.dst.tcp.carry_offset = 20480;
    auto d = f.desc();
    ParsedRequest p;
    ASSERT_EQ(parse_request(f.req, d, lookup(), &p, kVm), 0);
    EXPECT_EQ(p.src_sock.room, 20480u - 272u);
    EXPECT_EQ(p.dst_sock.room, 40960u - 20480u);
    // a tail on the source
    f.h.src.tail_len = 1;
    d = f.desc();
    EXPECT_EQ(parse_request(f.req, d, lookup(), &p, kVm), -EINVAL);
    f.h.src.tail_len = 0;
    // rooms in the wrong order / overlapping
    f.h.dst.tcp.carry_offset = 2048;
    d = f.desc();
    EXPECT_EQ(parse_request(f.req, d, lookup(), &p, kVm), -EINVAL);
    // the same connection at both ends
    f.h.dst = f.h.src;
    f.h.dst.tcp.carry_offset = 20480;
    d = f.desc();
    EXPECT_EQ(parse_request(f.req, d, lookup(), &p, kVm), -EINVAL);
}

TEST(SocketValidation, SocketToFile) {
    Fixture f;
    f.req.op = VPIPE_OP_SOCKET_TO_FILE;
    f.req.nr_pages = 10;
    f.req.length = 3 * 4096;
    f.segs = {{4096 * 500, 8192, 0, 0}, {4096 * 900, 4096, 0, 0}};
    f.h.src = {VPIPE_EP_SOCKET, 0, 0, 0, 0, 0, {}, good_tcp()};
    f.h.src.tcp.carry_offset = 4096;
    f.h.dst = {VPIPE_EP_FILE, kVdev, 0, 2, 0, 0, {}, {}};
    auto d = f.desc();
    ParsedRequest p;
    ASSERT_EQ(parse_request(f.req, d, lookup(), &p, kVm), 0);
    EXPECT_EQ(p.dst_file.extents.size(), 2u);
    EXPECT_FALSE(p.preparing);
    // readied while dom0 works: the destination's watermark is live, so any value is accepted
    // as copied -- but only with the flag, only on the destination, only for socket -> file
    f.h.dst.prepared = 8192;
    d = f.desc();
    EXPECT_EQ(parse_request(f.req, d, lookup(), &p, kVm), -EINVAL);
    f.req.flags = VPIPE_REQF_PREPARING;
    ASSERT_EQ(parse_request(f.req, d, lookup(), &p, kVm), 0);
    EXPECT_TRUE(p.preparing);
    f.h.src.prepared = 1;
    d = f.desc();
    EXPECT_EQ(parse_request(f.req, d, lookup(), &p, kVm), -EINVAL);
    f.h.src.prepared = 0;
    f.h.dst.vdev = kRoVdev;
    d = f.desc();
    EXPECT_EQ(parse_request(f.req, d, lookup(), &p, kVm), -EROFS);
    f.req.flags = 0;
    f.h.dst.prepared = 0;
    d = f.desc();
    EXPECT_EQ(parse_request(f.req, d, lookup(), &p, kVm), -EROFS);
}

TEST(RequestValidation, PreparingIsForSocketToFileOnly) {
    Fixture f;  // file -> file
    f.req.flags = VPIPE_REQF_PREPARING;
    EXPECT_EQ(f.parse(), -EINVAL);
    vpipe_request r{};
    r.op = VPIPE_OP_NOP;
    r.flags = VPIPE_REQF_PREPARING;
    EXPECT_EQ(check_request(r), -EINVAL);
    r.op = VPIPE_OP_SOCKET_TO_SOCKET;
    r.length = 1;
    r.nr_pages = 1;
    r.desc_bytes = sizeof(vpipe_desc_header);
    EXPECT_EQ(check_request(r), -EINVAL);
    r.op = VPIPE_OP_SOCKET_TO_FILE;
    EXPECT_EQ(check_request(r), 0);
    r.flags = 0x04;  // unknown
    EXPECT_EQ(check_request(r), -EINVAL);
}

// ---- the whole intake: indirect pages, the stream across pages, carried bytes ------------

namespace {

// A guest area of `pages` pages, handed to load_request through a page copier (references are
// the page numbers + 100, so a mix-up of index and reference shows).
struct Area {
    std::vector<std::vector<uint8_t>> pages;
    explicit Area(size_t n) : pages(n, std::vector<uint8_t>(VPIPE_PAGE_SIZE, 0)) {}
    void put(uint64_t off, const void* src, size_t n) {
        const auto* p = static_cast<const uint8_t*>(src);
        for (size_t i = 0; i < n; ++i) pages[(off + i) / VPIPE_PAGE_SIZE][(off + i) % VPIPE_PAGE_SIZE] = p[i];
    }
    PageCopier copier() {
        return [this](uint32_t ref, void* dst) {
            if (ref < 100 || ref - 100 >= pages.size()) return -EINVAL;
            std::memcpy(dst, pages[ref - 100].data(), VPIPE_PAGE_SIZE);
            return 0;
        };
    }
};

}  // namespace

TEST(RequestIntake, IndirectAreaWithCarriedQueuesAndTail) {
    // file -> socket whose area has 40 data pages (more than page[] holds) + 1 indirect page
    const uint32_t data_pages = 40;
    Area a(data_pages + 1);
    vpipe_desc_header h{};
    h.magic = VPIPE_DESC_MAGIC;
    h.version = VPIPE_PROTOCOL_VERSION;
    h.header_bytes = sizeof(h);
    h.nr_segments = 1;
    h.area_pages = data_pages;
    h.src = {VPIPE_EP_FILE, kVdev, 0, 1, 0, 0, {}, {}};
    h.dst = {VPIPE_EP_SOCKET, 0, 0, 0, 0, 3, {}, good_tcp()};
    h.dst.tcp.sndq_len = 5000;    // spans pages
    h.dst.tcp.sndq_unsent = 200;
    h.dst.tcp.rcvq_len = 10;
    h.dst.tcp.carry_offset = 4096;
    const vpipe_segment seg{4096 * 10, 8192, 0, 0};
    a.put(0, &h, sizeof(h));
    a.put(sizeof(h), &seg, sizeof(seg));
    std::vector<uint8_t> sndq(5000), rcvq(10, 'r');
    for (size_t i = 0; i < sndq.size(); ++i) sndq[i] = static_cast<uint8_t>(i * 7);
    a.put(4096, sndq.data(), sndq.size());
    a.put(4096 + 5000, rcvq.data(), rcvq.size());
    a.put(4096 + 5010, "TLR", 3);
    // the indirect page (area page 40) lists data pages 0..39 by reference
    std::vector<uint32_t> refs(VPIPE_REFS_PER_PAGE, 0);
    for (uint32_t i = 0; i < data_pages; ++i) refs[i] = 100 + i;
    a.put(uint64_t{data_pages} * VPIPE_PAGE_SIZE, refs.data(), refs.size() * 4);

    vpipe_request req{};
    req.id = 9;
    req.op = VPIPE_OP_FILE_TO_SOCKET;
    req.length = 8192;
    req.flags = VPIPE_REQF_INDIRECT;
    req.nr_pages = 1;
    req.page[0] = 100 + data_pages;
    req.desc_bytes = sizeof(h) + sizeof(seg);
    ParsedRequest p;
    ASSERT_EQ(load_request(req, a.copier(), lookup(), kVm, &p), 0);
    ASSERT_EQ(p.area.size(), data_pages);
    EXPECT_EQ(p.area[39], 139u);
    EXPECT_EQ(p.dst_sock.room, data_pages * 4096u - 4096u);
    EXPECT_EQ(p.dst_sock.sndq, sndq);
    EXPECT_EQ(p.dst_sock.rcvq, rcvq);
    EXPECT_EQ(std::string(p.dst_sock.tail.begin(), p.dst_sock.tail.end()), "TLR");

    // a stray reference after the area's last page
    refs[data_pages] = 7;
    a.put(uint64_t{data_pages} * VPIPE_PAGE_SIZE, refs.data(), refs.size() * 4);
    EXPECT_EQ(load_request(req, a.copier(), lookup(), kVm, &p), -EINVAL);
    refs[data_pages] = 0;
    a.put(uint64_t{data_pages} * VPIPE_PAGE_SIZE, refs.data(), refs.size() * 4);
    // a reference the guest does not have (page 1: the carried send queue)
    refs[1] = 5000;
    a.put(uint64_t{data_pages} * VPIPE_PAGE_SIZE, refs.data(), refs.size() * 4);
    bool bad = false;
    EXPECT_EQ(load_request(req, a.copier(), lookup(), kVm, &p, &bad), -EINVAL);
    EXPECT_TRUE(bad);
    refs[1] = 101;
    a.put(uint64_t{data_pages} * VPIPE_PAGE_SIZE, refs.data(), refs.size() * 4);
    // more indirect pages than the area needs (one encoding per size)
    req.nr_pages = 2;
    req.page[1] = 100;
    EXPECT_EQ(load_request(req, a.copier(), lookup(), kVm, &p), -EINVAL);
}
