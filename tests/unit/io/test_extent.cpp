#include <gtest/gtest.h>

#include <cstdint>
#include <stdexcept>
#include <vector>

#include "io/extent.h"

namespace vpipe::engine {
namespace {

const std::vector<Extent> kList = {
    {4096, 1000, false},  // stream [0, 1000)
    {0, 500, true},       // stream [1000, 1500)
    {90000, 2048, false}, // stream [1500, 3548)
    {8192, 4, false},     // stream [3548, 3552)
};

TEST(Extent, TotalLength) {
    EXPECT_EQ(total_length({}), 0u);
    EXPECT_EQ(total_length(kList), 3552u);
}

TEST(Extent, SliceWholeRangeIsTheList) {
    EXPECT_EQ(slice_extents(kList, 0, 3552), kList);
}

TEST(Extent, SliceInsideOneExtentTrimsBothEnds) {
    const std::vector<Extent> want = {{4096 + 10, 20, false}};
    EXPECT_EQ(slice_extents(kList, 10, 20), want);
}

TEST(Extent, SliceAcrossExtentsTrimsFirstAndLast) {
    const std::vector<Extent> want = {{4096 + 900, 100, false}, {0, 500, true}, {90000, 10, false}};
    EXPECT_EQ(slice_extents(kList, 900, 610), want);
}

TEST(Extent, SliceOnExtentBoundariesEmitsNoEmptyExtents) {
    const std::vector<Extent> want = {{0, 500, true}, {90000, 2048, false}};
    EXPECT_EQ(slice_extents(kList, 1000, 2548), want);
}

TEST(Extent, SliceOfZeroExtentKeepsZeroFlag) {
    const auto got = slice_extents(kList, 1100, 50);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_TRUE(got[0].zero);
    EXPECT_EQ(got[0].length, 50u);
}

TEST(Extent, SliceLastByte) {
    const std::vector<Extent> want = {{8192 + 3, 1, false}};
    EXPECT_EQ(slice_extents(kList, 3551, 1), want);
}

TEST(Extent, SliceOfLengthZeroIsEmpty) {
    EXPECT_TRUE(slice_extents(kList, 0, 0).empty());
    EXPECT_TRUE(slice_extents(kList, 3552, 0).empty());
    EXPECT_TRUE(slice_extents({}, 0, 0).empty());
}

TEST(Extent, SliceSkipsEmptyInputExtents) {
    const std::vector<Extent> list = {{0, 0, false}, {512, 100, false}, {7, 0, false}, {4096, 100, false}};
    const std::vector<Extent> want = {{512 + 50, 50, false}, {4096, 50, false}};
    EXPECT_EQ(slice_extents(list, 50, 100), want);
}

TEST(Extent, SliceOutOfRangeThrows) {
    EXPECT_THROW(slice_extents(kList, 3553, 0), std::out_of_range);
    EXPECT_THROW(slice_extents(kList, 3000, 553), std::out_of_range);
    EXPECT_THROW(slice_extents(kList, 1, UINT64_MAX), std::out_of_range);  // would overflow
    EXPECT_THROW(slice_extents(kList, UINT64_MAX, 2), std::out_of_range);
    EXPECT_THROW(slice_extents({}, 0, 1), std::out_of_range);
}

}  // namespace
}  // namespace vpipe::engine
