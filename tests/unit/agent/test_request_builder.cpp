// The guest's request builder must produce requests the engine accepts, covering the stream
// exactly once, within the per-request limits.
#include <cstring>
#include <random>

#include <gtest/gtest.h>

#include "request.h"  // the engine's validator: what the builder writes must pass it
#include "request_builder.h"

using namespace vpipe::agent;

namespace {

constexpr uint32_t kVdev = 51712;
constexpr uint64_t kDisk = 64ull << 30;

vpipe::engine::DiskLookup lookup() {
    return [](uint32_t vdev) -> std::optional<vpipe::engine::DiskLimits> {
        if (vdev == kVdev || vdev == kVdev + 16) return vpipe::engine::DiskLimits{kDisk, true};
        return std::nullopt;
    };
}

// Random block-granular layout of `length` bytes starting `head` bytes into a block.
FileExtents random_layout(uint64_t length, uint64_t head, unsigned seed, bool holes) {
    std::mt19937_64 rng(seed);
    FileExtents fe;
    fe.vdev = kVdev;
    uint64_t pos = 0;
    bool first = true;
    while (pos < length) {
        uint64_t blocks = 1 + rng() % 64;
        uint64_t len = blocks * 4096 - (first ? head : 0);
        len = std::min(len, length - pos);
        Segment s{(1 + rng() % 1000000) * 4096 + (first ? head : 0), len, holes && rng() % 5 == 0};
        if (s.zero) s.disk_offset = 0;
        fe.segments.push_back(s);
        pos += len;
        first = false;
    }
    return fe;
}

void check_round_trip(const FileExtents& src, const FileExtents& dst, uint64_t length,
                      uint64_t chunk, size_t max_segs) {
    auto chunks = build_file_to_file(src, dst, length, chunk, max_segs);
    std::vector<Segment> got_src, got_dst;
    uint64_t pos = 0;
    for (const auto& c : chunks) {
        ASSERT_EQ(c.stream_offset, pos);
        ASSERT_LE(c.length, chunk);
        ASSERT_LE(c.desc.size(), VPIPE_DESC_MAX_BYTES);
        vpipe_request req{};
        req.op = VPIPE_OP_FILE_TO_FILE;
        req.length = c.length;
        req.nr_pages = static_cast<uint8_t>((c.desc.size() + 4095) / 4096);
        req.desc_bytes = static_cast<uint32_t>(c.desc.size());
        vpipe_desc_header h;
        std::memcpy(&h, c.desc.data(), sizeof(h));
        ASSERT_LE(h.nr_segments, max_segs);
        std::vector<uint8_t> buf(c.desc);
        buf.resize(size_t{req.nr_pages} * 4096);
        vpipe::engine::ParsedRequest p;
        ASSERT_EQ(vpipe::engine::parse_request(req, buf, lookup(), &p), 0) << "chunk at " << pos;
        for (auto& e : p.src_file.extents) got_src.push_back({e.disk_offset, e.length, e.zero});
        for (auto& e : p.dst_file.extents) got_dst.push_back({e.disk_offset, e.length, e.zero});
        pos += c.length;
    }
    EXPECT_EQ(pos, length);
    EXPECT_EQ(coalesce(got_src).size(), coalesce(src.segments).size());
    auto a = coalesce(got_src), b = coalesce(src.segments);
    for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
        EXPECT_EQ(a[i].disk_offset, b[i].disk_offset);
        EXPECT_EQ(a[i].length, b[i].length);
        EXPECT_EQ(a[i].zero, b[i].zero);
    }
    auto c2 = coalesce(got_dst), d = coalesce(dst.segments);
    ASSERT_EQ(c2.size(), d.size());
    for (size_t i = 0; i < c2.size(); ++i) {
        EXPECT_EQ(c2[i].disk_offset, d[i].disk_offset);
        EXPECT_EQ(c2[i].length, d[i].length);
    }
}

}  // namespace

TEST(RequestBuilder, CoalesceJoinsOnlyContiguousRuns) {
    std::vector<Segment> in = {{4096, 4096, false}, {8192, 4096, false}, {0, 10, true},
                               {0, 20, true},       {16384, 1, false},   {20000, 5, false}};
    auto out = coalesce(in);
    ASSERT_EQ(out.size(), 4u);
    EXPECT_EQ(out[0].length, 8192u);
    EXPECT_EQ(out[1].length, 30u);
    EXPECT_TRUE(out[1].zero);
}

TEST(RequestBuilder, SingleExtentSplitsByChunkSize) {
    FileExtents s{kVdev, {{1 << 20, 10 << 20, false}}}, d{kVdev, {{100 << 20, 10 << 20, false}}};
    auto chunks = build_file_to_file(s, d, 10 << 20, 4 << 20);
    ASSERT_EQ(chunks.size(), 3u);
    EXPECT_EQ(chunks[2].length, 2u << 20);
    check_round_trip(s, d, 10 << 20, 4 << 20, VPIPE_DESC_MAX_SEGMENTS);
}

TEST(RequestBuilder, FragmentedFilesRespectTheSegmentLimit) {
    const uint64_t len = 300ull << 20;
    auto s = random_layout(len, 0, 1, true);
    auto d = random_layout(len, 0, 2, false);
    check_round_trip(s, d, len, 64ull << 20, 16);
    check_round_trip(s, d, len, 64ull << 20, VPIPE_DESC_MAX_SEGMENTS);
}

TEST(RequestBuilder, UnalignedOffsetsStillPassTheAlignmentRule) {
    const uint64_t len = (40ull << 20) + 123;
    auto s = random_layout(len, 777, 3, true);
    auto d = random_layout(len, 1000, 4, false);
    d.vdev = kVdev + 16;
    check_round_trip(s, d, len, 1 << 20, 32);
}

TEST(RequestBuilder, ExtentsMustCoverTheLength) {
    FileExtents s{kVdev, {{4096, 4096, false}}}, d{kVdev, {{8192, 4095, false}}};
    EXPECT_THROW(build_file_to_file(s, d, 4096, 1 << 20), std::invalid_argument);
}
