#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <vector>

#include "io/file_copy.h"
#include "io_test_util.h"

namespace vpipe::engine {
namespace {

using test::TempImage;
using namespace std::chrono_literals;

constexpr uint64_t kMiB = 1 << 20;

class CopyTest : public ::testing::Test {
protected:
    void SetUp() override {
        src_file_ = std::make_unique<TempImage>(32 * kMiB, 1);
        dst_file_ = std::make_unique<TempImage>(32 * kMiB, 2);
        std::string why;
        src_ = test::open_direct(src_file_->path, false, &why);
        if (!src_) GTEST_SKIP() << why;
        dst_ = test::open_direct(dst_file_->path, true, &why);
    }

    // Copies with a pool of `buffers` x 1 MiB and checks the destination byte for byte.
    void expect_copy(std::span<const Extent> src_ext, std::span<const Extent> dst_ext,
                     size_t buffers) {
        PagePool pool(buffers, kMiB);
        const uint64_t length = total_length(src_ext);
        uint64_t charged = 0;
        uint64_t charges = 0;
        uint64_t moved = 12345;
        const int r = copy_extents(io_, pool, *src_, src_ext, *dst_, dst_ext, length,
                                   [&](uint64_t bytes) {
                                       EXPECT_LE(bytes, kMiB);
                                       charged += bytes;
                                       ++charges;
                                   },
                                   &moved);
        ASSERT_EQ(r, 0);
        EXPECT_EQ(moved, length);
        EXPECT_EQ(charged, length);
        EXPECT_EQ(charges, (length + kMiB - 1) / kMiB);
        EXPECT_EQ(pool.in_use(), 0u);
        const auto data = test::expected_stream(src_file_->model, src_ext);
        test::model_write(dst_file_->model, dst_ext, data.data());
        EXPECT_TRUE(dst_file_->contents() == dst_file_->model);
    }

    std::unique_ptr<TempImage> src_file_;
    std::unique_ptr<TempImage> dst_file_;
    std::unique_ptr<DiskImage> src_;
    std::unique_ptr<DiskImage> dst_;
    BlockIo io_{32};
};

TEST_F(CopyTest, FragmentedToFragmentedPipelined) {
    const uint64_t length = 10 * kMiB + 1234;
    auto src_ext = test::scattered(src_->size(), length, 65536, 100, 3);
    src_ext.insert(src_ext.begin() + 5, Extent{0, 8192, true});  // a hole reads as zeros
    src_ext.back().length -= 8192;
    const auto dst_ext = test::scattered(dst_->size(), length, 32768, 4000, 4);
    expect_copy(src_ext, dst_ext, 2);
}

TEST_F(CopyTest, FragmentedToFragmentedOneBuffer) {
    const uint64_t length = 7 * kMiB + 99;
    const auto src_ext = test::scattered(src_->size(), length, 16384, 0, 5);
    const auto dst_ext = test::scattered(dst_->size(), length, 131072, 511, 6);
    expect_copy(src_ext, dst_ext, 1);
}

TEST_F(CopyTest, WithinOneImage) {
    // The source and destination are disjoint ranges of the same image.
    const uint64_t length = 3 * kMiB + 5;
    const std::vector<Extent> src_ext = {{kMiB + 10, length, false}};
    const std::vector<Extent> dst_ext = {{20 * kMiB, length, false}};
    PagePool pool(2, kMiB);
    uint64_t moved = 0;
    ASSERT_EQ(copy_extents(io_, pool, *dst_, src_ext, *dst_, dst_ext, length, nullptr, &moved), 0);
    EXPECT_EQ(moved, length);
    const auto data = test::expected_stream(dst_file_->model, src_ext);
    test::model_write(dst_file_->model, dst_ext, data.data());
    EXPECT_TRUE(dst_file_->contents() == dst_file_->model);
}

// The write gate (the guest's VPIPE_EPF_ABANDONED, the request's channel) is asked before every
// window's write: once it says stop, not a byte more reaches the destination, and what was
// written before is reported (flushed) as moved. Pipelined (2 buffers) and window by window.
TEST_F(CopyTest, WriteGateStopsBeforeTheNextWindow) {
    for (size_t buffers : {1u, 2u}) {
        SCOPED_TRACE(buffers);
        SetUp();
        const uint64_t length = 5 * kMiB;
        const std::vector<Extent> src_ext = {{0, length, false}};
        const std::vector<Extent> dst_ext = {{8 * kMiB, length, false}};
        PagePool pool(buffers, kMiB);
        int asked = 0;
        uint64_t moved = 0;
        const int r = copy_extents(io_, pool, *src_, src_ext, *dst_, dst_ext, length, nullptr, &moved,
                                   kCopyBufferWait, [&] { return ++asked > 2 ? -ECANCELED : 0; });
        EXPECT_EQ(r, -ECANCELED);
        EXPECT_EQ(asked, 3);
        EXPECT_EQ(moved, 2 * kMiB);
        EXPECT_EQ(pool.in_use(), 0u);
        // exactly the first two windows landed
        const std::vector<Extent> first = {{0, 2 * kMiB, false}};
        const auto data = test::expected_stream(src_file_->model, first);
        test::model_write(dst_file_->model, std::vector<Extent>{{8 * kMiB, 2 * kMiB, false}}, data.data());
        EXPECT_TRUE(dst_file_->contents() == dst_file_->model);
    }
}

TEST_F(CopyTest, EmptyPoolIsNoSpace) {
    PagePool pool(1, kMiB);
    auto held = pool.try_get();
    const std::vector<Extent> ext = {{0, 4096, false}};
    uint64_t moved = 7;
    bool charged = false;
    const auto start = std::chrono::steady_clock::now();
    EXPECT_EQ(copy_extents(io_, pool, *src_, ext, *dst_, ext, 4096,
                           [&](uint64_t) { charged = true; }, &moved, 20ms),
              -ENOSPC);
    EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
    EXPECT_EQ(moved, 0u);
    EXPECT_FALSE(charged);
    EXPECT_TRUE(dst_file_->contents() == dst_file_->model);
}

TEST_F(CopyTest, LengthMismatchIsInvalid) {
    PagePool pool(2, kMiB);
    const std::vector<Extent> a = {{0, 4096, false}};
    const std::vector<Extent> b = {{0, 4096, false}, {8192, 1, false}};
    uint64_t moved = 7;
    EXPECT_EQ(copy_extents(io_, pool, *src_, a, *dst_, b, 4096, nullptr, &moved), -EINVAL);
    EXPECT_EQ(moved, 0u);
    EXPECT_EQ(copy_extents(io_, pool, *src_, a, *dst_, a, 4097, nullptr, &moved), -EINVAL);
}

TEST_F(CopyTest, ReadOnlyDestination) {
    PagePool pool(2, kMiB);
    const std::vector<Extent> ext = {{0, 4096, false}};
    uint64_t moved = 7;
    EXPECT_EQ(copy_extents(io_, pool, *dst_, ext, *src_, ext, 4096, nullptr, &moved), -EROFS);
    EXPECT_EQ(moved, 0u);
}

// An error in window 2 (of 1 MiB windows) leaves exactly the first two windows moved.
TEST_F(CopyTest, ErrorMidwayReportsWindowsBefore) {
    const uint64_t length = 4 * kMiB;
    const std::vector<Extent> good = {{0, length, false}};
    const std::vector<Extent> bad_third = {
        {0, 2 * kMiB + 100, false}, {dst_->size() - 10, 20, false}, {4 * kMiB, 2 * kMiB - 120, false}};
    for (size_t buffers : {1u, 2u}) {
        PagePool pool(buffers, kMiB);
        uint64_t moved = 0;
        uint64_t charged = 0;
        const ChargeFn charge = [&](uint64_t bytes) { charged += bytes; };
        EXPECT_EQ(copy_extents(io_, pool, *src_, good, *dst_, bad_third, length, charge, &moved), -ERANGE);
        EXPECT_EQ(moved, 2 * kMiB) << buffers << " buffers";
        EXPECT_EQ(charged, 2 * kMiB);
        moved = 0;
        charged = 0;
        EXPECT_EQ(copy_extents(io_, pool, *src_, bad_third, *dst_, good, length, charge, &moved), -ERANGE);
        EXPECT_EQ(moved, 2 * kMiB) << buffers << " buffers";
        EXPECT_EQ(charged, 2 * kMiB);
    }
}

}  // namespace
}  // namespace vpipe::engine
