// Releaser::tick (releaser.h) driven with explicit times: watermark, idle timer, device pressure,
// and the hysteresis that keeps it from retrying a release that cannot make progress.
#include "allocator/releaser.h"

#include <gtest/gtest.h>

#include <latch>
#include <memory>
#include <thread>
#include <vector>

#include "allocator/simulated_backend.h"
#include "fake_backend.h"
#include "pool_harness.h"

namespace cudapool {
namespace {

using test::policy_with;
using test::SimPool;

std::uint64_t by_reason(const PoolStats& s, ReleaseReason r) {
  return s.releases_by_reason[static_cast<int>(r)];
}

// Every rule off except what a test turns on.
Policy quiet_policy(ReuseMode reuse = ReuseMode::kImmediate) {
  Policy p = policy_with(reuse);
  p.high_watermark = 1000 * kGiB;
  p.low_watermark = 2 * kMiB;
  p.idle_release_ms = 0;
  p.min_device_free = 0;
  return p;
}

// `count` blocks of 1 MiB: two per 2 MiB small segment.
std::vector<void*> alloc_mib_blocks(SimPool& t, int count) {
  std::vector<void*> blocks;
  for (int i = 0; i < count; ++i)
    blocks.push_back(t.alloc(kMiB));
  return blocks;
}

void free_range(SimPool& t, const std::vector<void*>& blocks, std::size_t from, std::size_t to) {
  for (std::size_t i = from; i < to; ++i)
    ASSERT_EQ(t.free(blocks[i]), Status::kOk);
}

// Times relative to the steady clock that add_pool() stamps pools with.
class ReleaserTest : public ::testing::Test {
 protected:
  std::uint64_t base_ = Releaser::now_ms() + 1000;
  Releaser releaser_;
};

TEST_F(ReleaserTest, WatermarkCrossingReleasesDownToLow) {
  Policy p = quiet_policy();
  p.high_watermark = 8 * kMiB;
  p.low_watermark = 2 * kMiB;
  SimPool t(p);
  releaser_.add_pool(&t.pool);
  std::vector<void*> blocks = alloc_mib_blocks(t, 20);  // 10 segments
  free_range(t, blocks, 0, 20);

  releaser_.tick(base_);
  PoolStats s = t.pool.stats();
  EXPECT_EQ(s.held, 2 * kMiB);
  EXPECT_EQ(s.driver_frees, 9u);
  EXPECT_EQ(by_reason(s, ReleaseReason::kWatermark), 1u);

  releaser_.tick(base_ + 100);
  EXPECT_EQ(t.pool.stats().held, 2 * kMiB);
  EXPECT_EQ(t.backend.counters().releases, 9u);
}

TEST_F(ReleaserTest, WatermarkDoesNotFireAtHighOnlyAboveIt) {
  Policy p = quiet_policy();
  p.high_watermark = 8 * kMiB;
  p.low_watermark = 2 * kMiB;
  SimPool t(p);
  releaser_.add_pool(&t.pool);
  std::vector<void*> blocks = alloc_mib_blocks(t, 10);  // 5 segments

  free_range(t, blocks, 0, 8);  // idle == high
  releaser_.tick(base_);
  EXPECT_EQ(t.pool.stats().held, 10 * kMiB);
  EXPECT_EQ(t.backend.counters().releases, 0u);

  free_range(t, blocks, 8, 9);  // idle 9 MiB: release whole segments, oldest first, to <= 2 MiB
  releaser_.tick(base_ + 100);
  PoolStats s = t.pool.stats();
  EXPECT_EQ(s.held, 2 * kMiB);
  EXPECT_EQ(s.idle(), kMiB);
  EXPECT_EQ(s.driver_frees, 4u);
  EXPECT_EQ(t.free(blocks[9]), Status::kOk);
}

TEST_F(ReleaserTest, IdleTimerReleasesOncePerQuietPeriod) {
  Policy p = quiet_policy();
  p.idle_release_ms = 1000;
  p.low_watermark = 2 * kMiB;
  SimPool t(p);
  releaser_.add_pool(&t.pool);
  std::vector<void*> blocks = alloc_mib_blocks(t, 10);  // 5 segments
  free_range(t, blocks, 0, 6);                          // segments 0-2 wholly free: 6 MiB idle

  releaser_.tick(base_);  // sees the allocations: the quiet period starts now
  releaser_.tick(base_ + 999);
  EXPECT_EQ(t.pool.stats().held, 10 * kMiB);

  releaser_.tick(base_ + 1000);
  PoolStats s = t.pool.stats();
  EXPECT_EQ(s.held, 6 * kMiB);  // idle 6 -> 2 MiB
  EXPECT_EQ(by_reason(s, ReleaseReason::kIdleTimer), 1u);

  // More idle memory, but no allocation: same quiet period, no second release.
  free_range(t, blocks, 6, 8);  // segment 3 wholly free: idle 4 MiB
  releaser_.tick(base_ + 2000);
  releaser_.tick(base_ + 5000);
  EXPECT_EQ(t.pool.stats().held, 6 * kMiB);
  EXPECT_EQ(by_reason(t.pool.stats(), ReleaseReason::kIdleTimer), 1u);

  // New activity re-arms the timer.
  void* again = t.alloc(kMiB);
  ASSERT_EQ(t.free(again), Status::kOk);
  releaser_.tick(base_ + 6000);
  releaser_.tick(base_ + 6999);
  EXPECT_EQ(t.pool.stats().held, 6 * kMiB);
  releaser_.tick(base_ + 7000);
  s = t.pool.stats();
  EXPECT_EQ(s.held, 4 * kMiB);
  EXPECT_EQ(s.idle(), 2 * kMiB);
  EXPECT_EQ(by_reason(s, ReleaseReason::kIdleTimer), 2u);
}

TEST_F(ReleaserTest, IdleTimerZeroNeverFires) {
  SimPool t(quiet_policy());
  releaser_.add_pool(&t.pool);
  std::vector<void*> blocks = alloc_mib_blocks(t, 10);
  free_range(t, blocks, 0, 10);
  releaser_.tick(base_);
  releaser_.tick(base_ + 3600 * 1000);
  EXPECT_EQ(t.pool.stats().held, 10 * kMiB);
  EXPECT_EQ(t.backend.counters().releases, 0u);
}

TEST_F(ReleaserTest, DevicePressureReleasesTheShortfall) {
  Policy p = quiet_policy();
  p.min_device_free = 100 * kMiB;
  SimPool t(p, kGiB);
  releaser_.add_pool(&t.pool);
  std::vector<void*> blocks = alloc_mib_blocks(t, 20);  // 10 segments
  free_range(t, blocks, 0, 20);

  t.backend.set_other_usage(kGiB - 20 * kMiB - 100 * kMiB);  // free == min: no pressure
  releaser_.tick(base_);
  EXPECT_EQ(t.pool.stats().held, 20 * kMiB);

  t.backend.set_other_usage(kGiB - 20 * kMiB - 95 * kMiB);  // 5 MiB short
  releaser_.tick(base_ + 100);
  PoolStats s = t.pool.stats();
  EXPECT_EQ(s.held, 14 * kMiB);  // three 2 MiB segments cover 5 MiB
  EXPECT_EQ(by_reason(s, ReleaseReason::kDevicePressure), 1u);
  std::uint64_t free = 0, total = 0;
  ASSERT_EQ(t.pool.device_memory(&free, &total), Status::kOk);
  EXPECT_GE(free, 100 * kMiB);

  releaser_.tick(base_ + 200);
  EXPECT_EQ(t.pool.stats().held, 14 * kMiB);
}

TEST_F(ReleaserTest, PressureOffWhenMinDeviceFreeIsZero) {
  SimPool t(quiet_policy(), kGiB);
  releaser_.add_pool(&t.pool);
  std::vector<void*> blocks = alloc_mib_blocks(t, 4);
  free_range(t, blocks, 0, 4);
  t.backend.set_other_usage(kGiB - 4 * kMiB);  // device full
  releaser_.tick(base_);
  EXPECT_EQ(t.pool.stats().held, 4 * kMiB);
}

// Idle memory that sits in partly used segments cannot be returned: the watermark rule tries once
// (one fence), then waits until idle grows, instead of fencing on every tick. Between ticks the
// application keeps allocating and freeing (so there is always something pending), as a server in
// steady state does.
TEST_F(ReleaserTest, WatermarkIsNotRetriedWhileIdleSitsInPartlyUsedSegments) {
  Policy p = quiet_policy(ReuseMode::kFence);
  p.high_watermark = 4 * kMiB;
  p.low_watermark = 1 * kMiB;
  SimPool t(p);
  releaser_.add_pool(&t.pool);
  std::vector<std::vector<void*>> segs(6);
  for (auto& seg : segs)
    for (int i = 0; i < 4; ++i)
      seg.push_back(t.alloc(512 * kKiB));
  ASSERT_EQ(t.pool.stats().segments, 6u);
  for (auto& seg : segs)
    for (int i = 1; i < 4; ++i)
      ASSERT_EQ(t.free(seg[i]), Status::kOk);
  ASSERT_EQ(t.pool.stats().idle(), 9 * kMiB);

  auto churn = [&] {  // leaves idle unchanged and one more block pending
    void* q = t.alloc(64 * kKiB);
    ASSERT_EQ(t.free(q), Status::kOk);
  };
  releaser_.tick(base_);
  EXPECT_EQ(t.backend.counters().syncs, 1u);  // tried once
  for (int i = 1; i <= 5; ++i) {
    churn();
    releaser_.tick(base_ + 100 * i);
  }
  EXPECT_EQ(t.backend.counters().syncs, 1u);
  EXPECT_EQ(t.backend.counters().releases, 0u);
  EXPECT_EQ(t.pool.stats().held, 12 * kMiB);
  EXPECT_EQ(t.pool.stats().idle(), 9 * kMiB);

  // The wake threshold was raised too: a free that adds half a MiB does not wake the thread.
  bool wake = false;
  ASSERT_EQ(t.pool.free(segs[5][0], &wake), Status::kOk);  // segment 5 now wholly idle
  EXPECT_FALSE(wake);

  // Idle grew past what the last attempt left: one more attempt, which frees segment 5.
  releaser_.tick(base_ + 1000);
  EXPECT_EQ(t.backend.counters().syncs, 2u);
  EXPECT_EQ(t.backend.counters().releases, 1u);
  EXPECT_EQ(t.pool.stats().held, 10 * kMiB);
  for (int i = 1; i <= 5; ++i) {
    churn();
    releaser_.tick(base_ + 1000 + 100 * i);
  }
  EXPECT_EQ(t.backend.counters().syncs, 2u);
  EXPECT_EQ(t.backend.counters().releases, 1u);
}

// A device's pool may be added (first use of that device) while the release thread is inside a
// tick, blocked in a driver call for another pool. The tick must keep that other pool's state:
// here, what the watermark attempt left, which stops it from fencing again on the next ticks.
// The watermark gave up on 9 MiB idle spread over partly used segments. Later the layout changes
// (one segment becomes wholly free) while idle stays the same: the watermark does not retry, but
// the idle timer's attempt after a quiet period returns that segment.
TEST_F(ReleaserTest, IdleTimerFiresWhileTheWatermarkHoldsBack) {
  Policy p = quiet_policy();
  p.high_watermark = 4 * kMiB;
  p.low_watermark = 1 * kMiB;
  p.idle_release_ms = 1000;
  SimPool t(p);
  releaser_.add_pool(&t.pool);
  std::vector<std::vector<void*>> segs(6);
  for (auto& seg : segs)
    for (int i = 0; i < 4; ++i)
      seg.push_back(t.alloc(512 * kKiB));
  for (auto& seg : segs)  // one live block per segment: nothing can be returned
    for (int i = 1; i < 4; ++i)
      ASSERT_EQ(t.free(seg[i]), Status::kOk);
  releaser_.tick(base_);
  ASSERT_EQ(t.pool.stats().driver_frees, 0u);

  ASSERT_EQ(t.free(segs[0][0]), Status::kOk);  // segment 0 is wholly free ...
  ASSERT_NE(t.alloc(512 * kKiB), nullptr);     // ... and stays so: best fit goes elsewhere
  ASSERT_EQ(t.pool.stats().idle(), 9 * kMiB);
  releaser_.tick(base_ + 100);  // activity seen; the watermark does not retry at the same idle
  EXPECT_EQ(t.pool.stats().driver_frees, 0u);

  releaser_.tick(base_ + 100 + 1000);
  PoolStats s = t.pool.stats();
  EXPECT_EQ(s.driver_frees, 1u);
  EXPECT_EQ(s.held, 10 * kMiB);
  EXPECT_EQ(by_reason(s, ReleaseReason::kIdleTimer), 1u);
}

TEST_F(ReleaserTest, PoolAddedDuringATickKeepsTheOtherPoolsState) {
  test::FakeBackend backend;
  SyncGate gate;
  Policy p = quiet_policy(ReuseMode::kFence);
  p.high_watermark = 4 * kMiB;
  p.low_watermark = 1 * kMiB;
  DevicePool pool(0, backend, gate, p);
  releaser_.add_pool(&pool);
  std::vector<std::vector<void*>> segs(6);
  for (auto& seg : segs)
    for (int i = 0; i < 4; ++i)
      seg.push_back(test::alloc_or_fail(pool, 512 * kKiB));
  for (auto& seg : segs)  // each segment keeps one block in use: nothing can be returned
    for (int i = 1; i < 4; ++i)
      ASSERT_EQ(test::free_block(pool, seg[i]), Status::kOk);
  ASSERT_EQ(pool.stats().idle(), 9 * kMiB);

  std::latch entered(1), proceed(1);
  backend.set_on_synchronize([&] {
    entered.count_down();
    proceed.wait();
  });
  std::thread ticker([&] { releaser_.tick(base_); });
  entered.wait();  // the tick is inside the watermark attempt's fence
  std::vector<std::unique_ptr<SimPool>> others;
  for (int i = 0; i < 8; ++i) {
    others.push_back(std::make_unique<SimPool>(quiet_policy()));
    releaser_.add_pool(&others.back()->pool);
  }
  proceed.count_down();
  ticker.join();
  backend.set_on_synchronize(nullptr);
  int syncs = backend.count("synchronize");

  for (int i = 1; i <= 3; ++i) {  // steady state: something is always pending
    ASSERT_EQ(test::free_block(pool, test::alloc_or_fail(pool, 64 * kKiB)), Status::kOk);
    releaser_.tick(base_ + 100 * i);
  }
  EXPECT_EQ(backend.count("synchronize"), syncs);
  EXPECT_EQ(backend.count("release"), 0);
}

TEST_F(ReleaserTest, ImmediateModeDoesNotCallTheDriverForUnreleasableIdle) {
  Policy p = quiet_policy(ReuseMode::kImmediate);
  p.high_watermark = 4 * kMiB;
  p.low_watermark = 1 * kMiB;
  SimPool t(p);
  releaser_.add_pool(&t.pool);
  std::vector<void*> blocks = alloc_mib_blocks(t, 12);  // 6 segments
  for (std::size_t i = 0; i < blocks.size(); i += 2)
    ASSERT_EQ(t.free(blocks[i]), Status::kOk);
  ASSERT_EQ(t.pool.stats().idle(), 6 * kMiB);
  for (int i = 0; i < 5; ++i)
    releaser_.tick(base_ + 100 * i);
  EXPECT_EQ(t.backend.counters().syncs, 0u);
  EXPECT_EQ(t.backend.counters().releases, 0u);
  EXPECT_EQ(t.pool.stats().held, 12 * kMiB);
}

TEST_F(ReleaserTest, EveryPoolIsHandled) {
  Policy p = quiet_policy();
  p.high_watermark = 4 * kMiB;
  p.low_watermark = 0;
  SimPool a(p), b(p);
  releaser_.add_pool(&a.pool);
  releaser_.add_pool(&b.pool);
  std::vector<void*> blocks_a = alloc_mib_blocks(a, 10);
  std::vector<void*> blocks_b = alloc_mib_blocks(b, 10);
  free_range(a, blocks_a, 0, 10);
  free_range(b, blocks_b, 0, 10);
  releaser_.tick(base_);
  EXPECT_EQ(a.pool.stats().held, 0u);
  EXPECT_EQ(b.pool.stats().held, 0u);
}

TEST_F(ReleaserTest, StoppedReleaserReleasesNothing) {
  Policy p = quiet_policy();
  p.high_watermark = 4 * kMiB;
  SimPool t(p);
  releaser_.add_pool(&t.pool);
  std::vector<void*> blocks = alloc_mib_blocks(t, 10);
  free_range(t, blocks, 0, 10);
  releaser_.stop();
  releaser_.tick(base_);
  EXPECT_EQ(t.pool.stats().held, 10 * kMiB);
  EXPECT_EQ(t.backend.counters().releases, 0u);
}

}  // namespace
}  // namespace cudapool
