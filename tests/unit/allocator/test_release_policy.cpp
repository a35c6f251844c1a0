// decide_release (release_policy.h): the rules of DESIGN §5 as a pure function.
#include "allocator/release_policy.h"

#include <gtest/gtest.h>

namespace cudapool {
namespace {

// Every rule off; each test turns on the ones it checks.
Policy rules_off() {
  Policy p;
  p.high_watermark = 1000 * kGiB;
  p.low_watermark = 100 * kMiB;
  p.idle_release_ms = 0;
  p.min_device_free = 0;
  return p;
}

PolicyInput idle_bytes(std::uint64_t idle, std::uint64_t in_use = 64 * kMiB) {
  PolicyInput in;
  in.in_use = in_use;
  in.held = in_use + idle;
  in.now_ms = 1000000;
  in.last_activity_ms = in.now_ms;
  return in;
}

TEST(DecideRelease, NothingFiresWithEveryRuleOff) {
  ReleaseDecision d = decide_release(rules_off(), idle_bytes(500 * kGiB));
  EXPECT_FALSE(d.release);
}

TEST(DecideRelease, WatermarkFiresOnlyAboveHigh) {
  Policy p = rules_off();
  p.high_watermark = 1 * kGiB;
  p.low_watermark = 256 * kMiB;

  EXPECT_FALSE(decide_release(p, idle_bytes(kGiB - 512)).release);
  EXPECT_FALSE(decide_release(p, idle_bytes(kGiB)).release);  // equal: not above

  ReleaseDecision d = decide_release(p, idle_bytes(kGiB + 512));
  EXPECT_TRUE(d.release);
  EXPECT_EQ(d.keep_idle, 256 * kMiB);
  EXPECT_EQ(d.reason, ReleaseReason::kWatermark);
}

TEST(DecideRelease, IdleTimerFiresOnceThePeriodHasPassed) {
  Policy p = rules_off();
  p.idle_release_ms = 5000;
  p.low_watermark = 32 * kMiB;
  PolicyInput in = idle_bytes(100 * kMiB);
  in.last_activity_ms = 10000;

  in.now_ms = 10000 + 4999;
  EXPECT_FALSE(decide_release(p, in).release);

  in.now_ms = 10000 + 5000;
  ReleaseDecision at = decide_release(p, in);
  EXPECT_TRUE(at.release);
  EXPECT_EQ(at.keep_idle, 32 * kMiB);
  EXPECT_EQ(at.reason, ReleaseReason::kIdleTimer);

  in.now_ms = 10000 + 60000;
  ReleaseDecision after = decide_release(p, in);
  EXPECT_TRUE(after.release);
  EXPECT_EQ(after.keep_idle, 32 * kMiB);
  EXPECT_EQ(after.reason, ReleaseReason::kIdleTimer);
}

TEST(DecideRelease, IdleTimerZeroMeansOff) {
  Policy p = rules_off();
  p.idle_release_ms = 0;
  PolicyInput in = idle_bytes(10 * kGiB);
  in.last_activity_ms = 0;
  in.now_ms = 1000000000;
  EXPECT_FALSE(decide_release(p, in).release);
}

TEST(DecideRelease, IdleTimerIgnoresActivityStampedInTheFuture) {
  Policy p = rules_off();
  p.idle_release_ms = 1000;
  PolicyInput in = idle_bytes(10 * kGiB);
  in.last_activity_ms = 50000;
  in.now_ms = 1000;  // earlier than the stamp: no unsigned wrap-around into "long ago"
  EXPECT_FALSE(decide_release(p, in).release);
}

TEST(DecideRelease, PressureReleasesTheShortfall) {
  Policy p = rules_off();
  p.min_device_free = 1 * kGiB;
  PolicyInput in = idle_bytes(600 * kMiB);
  in.device_free_known = true;

  in.device_free = kGiB - 200 * kMiB;
  ReleaseDecision d = decide_release(p, in);
  EXPECT_TRUE(d.release);
  EXPECT_EQ(d.keep_idle, 400 * kMiB);  // 600 idle - 200 short
  EXPECT_EQ(d.reason, ReleaseReason::kDevicePressure);

  in.device_free = 0;  // short by more than everything idle: release it all
  d = decide_release(p, in);
  EXPECT_TRUE(d.release);
  EXPECT_EQ(d.keep_idle, 0u);
}

TEST(DecideRelease, PressureDoesNotFireAtOrAboveTheMinimum) {
  Policy p = rules_off();
  p.min_device_free = 1 * kGiB;
  PolicyInput in = idle_bytes(600 * kMiB);
  in.device_free_known = true;
  in.device_free = kGiB;
  EXPECT_FALSE(decide_release(p, in).release);
  in.device_free = 5 * kGiB;
  EXPECT_FALSE(decide_release(p, in).release);
}

TEST(DecideRelease, PressureZeroMeansOff) {
  Policy p = rules_off();
  p.min_device_free = 0;
  PolicyInput in = idle_bytes(600 * kMiB);
  in.device_free_known = true;
  in.device_free = 0;
  EXPECT_FALSE(decide_release(p, in).release);
}

TEST(DecideRelease, PressureNeedsAKnownDeviceFree) {
  Policy p = rules_off();
  p.min_device_free = 1 * kGiB;
  PolicyInput in = idle_bytes(600 * kMiB);
  in.device_free_known = false;
  in.device_free = 0;
  EXPECT_FALSE(decide_release(p, in).release);
}

TEST(DecideRelease, CombinedRulesKeepTheLeast) {
  Policy p = rules_off();
  p.high_watermark = 512 * kMiB;
  p.low_watermark = 256 * kMiB;
  p.idle_release_ms = 1000;
  p.min_device_free = 2 * kGiB;
  PolicyInput in = idle_bytes(1 * kGiB);
  in.device_free_known = true;

  // Pressure short by 100 MiB keeps 924 MiB; the watermark keeps 256 MiB: the watermark wins.
  in.device_free = 2 * kGiB - 100 * kMiB;
  ReleaseDecision d = decide_release(p, in);
  EXPECT_TRUE(d.release);
  EXPECT_EQ(d.keep_idle, 256 * kMiB);
  EXPECT_EQ(d.reason, ReleaseReason::kWatermark);

  // Pressure short by 900 MiB keeps 124 MiB: pressure wins.
  in.device_free = 2 * kGiB - 900 * kMiB;
  d = decide_release(p, in);
  EXPECT_EQ(d.keep_idle, 124 * kMiB);
  EXPECT_EQ(d.reason, ReleaseReason::kDevicePressure);

  // Below high, timer expired: the timer keeps low; pressure (short 10 MiB) keeps more.
  in = idle_bytes(400 * kMiB);
  in.device_free_known = true;
  in.device_free = 2 * kGiB - 10 * kMiB;
  in.last_activity_ms = in.now_ms - 1000;
  d = decide_release(p, in);
  EXPECT_TRUE(d.release);
  EXPECT_EQ(d.keep_idle, 256 * kMiB);
  EXPECT_EQ(d.reason, ReleaseReason::kIdleTimer);
}

TEST(DecideRelease, NeverAsksToReleaseWhenIdleIsAlreadyAtOrBelowKeep) {
  Policy p = rules_off();
  p.high_watermark = 64 * kMiB;
  p.low_watermark = 256 * kMiB;  // above high: a watermark release would keep more than idle
  p.idle_release_ms = 1000;
  p.min_device_free = kGiB;
  PolicyInput in = idle_bytes(100 * kMiB);
  in.last_activity_ms = in.now_ms - 5000;
  in.device_free_known = true;
  in.device_free = kGiB;  // no shortfall
  EXPECT_FALSE(decide_release(p, in).release);

  in = idle_bytes(0);  // nothing idle: even a huge shortfall releases nothing
  in.device_free_known = true;
  in.device_free = 0;
  in.last_activity_ms = 0;
  EXPECT_FALSE(decide_release(p, in).release);

  in = idle_bytes(256 * kMiB);  // timer expired, idle == low
  in.last_activity_ms = 0;
  p.min_device_free = 0;
  EXPECT_FALSE(decide_release(p, in).release);
}

}  // namespace
}  // namespace cudapool
