// Size classes (size_classes.h): rounding, kind boundaries, segment sizes, large-segment reuse.
#include "allocator/size_classes.h"

#include <gtest/gtest.h>

#include <cstdint>

namespace cudapool {
namespace {

TEST(RoundRequest, SmallAndMediumRoundUpTo512Bytes) {
  EXPECT_EQ(round_request(1), 512u);
  EXPECT_EQ(round_request(511), 512u);
  EXPECT_EQ(round_request(512), 512u);
  EXPECT_EQ(round_request(513), 1024u);
  EXPECT_EQ(round_request(1000), 1024u);
  EXPECT_EQ(round_request(kMiB - 1), kMiB);
  EXPECT_EQ(round_request(kMiB), kMiB);
  EXPECT_EQ(round_request(kMiB + 1), kMiB + 512);
  EXPECT_EQ(round_request(3 * kMiB + 100), 3 * kMiB + 512);
  EXPECT_EQ(round_request(10 * kMiB - 1), 10 * kMiB);
  EXPECT_EQ(round_request(10 * kMiB), 10 * kMiB);
}

TEST(RoundRequest, LargeRoundsUpTo2MiB) {
  EXPECT_EQ(round_request(10 * kMiB + 1), 12 * kMiB);
  EXPECT_EQ(round_request(11 * kMiB), 12 * kMiB);
  EXPECT_EQ(round_request(12 * kMiB), 12 * kMiB);
  EXPECT_EQ(round_request(12 * kMiB + 1), 14 * kMiB);
  EXPECT_EQ(round_request(kGiB + 1), kGiB + 2 * kMiB);
}

TEST(RoundRequest, ZeroAndOversizedRequestsCannotBeServed) {
  EXPECT_EQ(round_request(0), 0u);
  EXPECT_EQ(round_request(kMaxRequest + 1), 0u);
  EXPECT_EQ(round_request(SIZE_MAX), 0u);
  EXPECT_EQ(round_request(SIZE_MAX - 1), 0u);
}

TEST(RoundRequest, LargestServableRequestRoundsWithoutOverflow) {
  std::size_t r = round_request(kMaxRequest);
  EXPECT_GE(r, kMaxRequest);
  EXPECT_EQ(r % kLargeGranularity, 0u);
}

TEST(RoundRequest, ResultIsAlwaysAlignedAndCoversTheRequest) {
  for (std::size_t size = 1; size < 24 * kMiB; size = size * 3 / 2 + 7) {
    std::size_t r = round_request(size);
    SCOPED_TRACE(size);
    EXPECT_GE(r, size);
    EXPECT_EQ(r % kAlignment, 0u);
    EXPECT_LT(r - size, size > kMediumMax ? kLargeGranularity : kAlignment);
  }
}

TEST(KindOf, BoundariesAtOneAndTenMiB) {
  EXPECT_EQ(kind_of(512), PoolKind::kSmall);
  EXPECT_EQ(kind_of(kMiB), PoolKind::kSmall);
  EXPECT_EQ(kind_of(round_request(kMiB + 1)), PoolKind::kMedium);
  EXPECT_EQ(kind_of(10 * kMiB), PoolKind::kMedium);
  EXPECT_EQ(kind_of(round_request(10 * kMiB + 1)), PoolKind::kLarge);
  EXPECT_EQ(kind_of(12 * kMiB), PoolKind::kLarge);
}

TEST(SegmentSizeFor, SmallAndMediumShareFixedSegmentsLargeGetTheirOwn) {
  EXPECT_EQ(segment_size_for(PoolKind::kSmall, 512), 2 * kMiB);
  EXPECT_EQ(segment_size_for(PoolKind::kSmall, kMiB), 2 * kMiB);
  EXPECT_EQ(segment_size_for(PoolKind::kMedium, kMiB + 512), 20 * kMiB);
  EXPECT_EQ(segment_size_for(PoolKind::kMedium, 10 * kMiB), 20 * kMiB);
  EXPECT_EQ(segment_size_for(PoolKind::kLarge, 12 * kMiB), 12 * kMiB);
  EXPECT_EQ(segment_size_for(PoolKind::kLarge, 100 * kMiB), 100 * kMiB);
}

TEST(LargestAcceptableFit, SlackIsTheLargerOf2MiBAndAnEighth) {
  EXPECT_EQ(largest_acceptable_fit(12 * kMiB), 14 * kMiB);    // 1/8 = 1.5 MiB < 2 MiB
  EXPECT_EQ(largest_acceptable_fit(16 * kMiB), 18 * kMiB);    // 1/8 = 2 MiB
  EXPECT_EQ(largest_acceptable_fit(32 * kMiB), 36 * kMiB);    // 1/8 = 4 MiB
  EXPECT_EQ(largest_acceptable_fit(800 * kMiB), 900 * kMiB);  // 1/8 = 100 MiB
}

}  // namespace
}  // namespace cudapool
