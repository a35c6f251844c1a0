// DevicePool (device_pool.h): placement, splitting and coalescing, fences, release, limit,
// out-of-memory, invalid frees, counters, and a multi-threaded stress run.
#include "allocator/device_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <future>
#include <latch>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "alloc_counter.h"
#include "allocator/simulated_backend.h"
#include "fake_backend.h"
#include "pool_harness.h"

namespace cudapool {
namespace {

using test::addr_of;
using test::alloc_or_fail;
using test::expect_consistent;
using test::FakeBackend;
using test::free_block;
using test::IntervalSet;
using test::policy_with;
using test::ptr_at;
using test::RecordingObserver;
using test::SimPool;

constexpr ReuseMode kFence = ReuseMode::kFence;
constexpr ReuseMode kImmediate = ReuseMode::kImmediate;

std::uint64_t by_reason(const PoolStats& s, ReleaseReason r) {
  return s.releases_by_reason[static_cast<int>(r)];
}

// ---- placement -------------------------------------------------------------------------------

TEST(DevicePool, SmallRequestsShareOneSegment) {
  SimPool t(policy_with(kFence));
  void* a = t.alloc(1000);
  void* b = t.alloc(3000);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(addr_of(b), addr_of(a) + 1024);  // split: b follows a's rounded size
  PoolStats s = t.pool.stats();
  EXPECT_EQ(s.driver_mallocs, 1u);
  EXPECT_EQ(s.held, 2 * kMiB);
  EXPECT_EQ(s.in_use, 1024u + 3072u);
  EXPECT_EQ(s.live_blocks, 2u);
  EXPECT_EQ(s.app_mallocs, 2u);
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(t.backend.counters().held, 2 * kMiB);
}

TEST(DevicePool, MediumRequestsShareTwentyMiBSegments) {
  SimPool t(policy_with(kFence));
  void* a = t.alloc(2 * kMiB);
  void* b = t.alloc(3 * kMiB + 1);
  EXPECT_EQ(addr_of(b), addr_of(a) + 2 * kMiB);
  EXPECT_EQ(t.pool.stats().driver_mallocs, 1u);
  EXPECT_EQ(t.backend.counters().held, 20 * kMiB);
  EXPECT_EQ(t.pool.stats().in_use, 5 * kMiB + 512);
}

TEST(DevicePool, LargeRequestsGetAWholeSegmentEach) {
  SimPool t(policy_with(kFence));
  void* a = t.alloc(10 * kMiB + 1);
  void* b = t.alloc(40 * kMiB);
  PoolStats s = t.pool.stats();
  EXPECT_EQ(s.driver_mallocs, 2u);
  EXPECT_EQ(s.held, 12 * kMiB + 40 * kMiB);
  EXPECT_EQ(s.in_use, s.held);
  EXPECT_EQ(t.backend.counters().held, s.held);
  // Each is the base of its own driver allocation: IPC handles map exactly these bytes.
  EXPECT_EQ(t.pool.check_ipc_base(a), Status::kOk);
  EXPECT_EQ(t.pool.check_ipc_base(b), Status::kOk);
}

TEST(DevicePool, CheckIpcBaseRefusesSubBlocks) {
  SimPool t(policy_with(kFence));
  void* first = t.alloc(64 * kKiB);
  void* second = t.alloc(64 * kKiB);
  void* medium = t.alloc(2 * kMiB);
  void* medium2 = t.alloc(2 * kMiB);
  EXPECT_EQ(t.pool.check_ipc_base(first), Status::kOk);
  EXPECT_EQ(t.pool.check_ipc_base(second), Status::kInvalidValue);
  EXPECT_EQ(t.pool.check_ipc_base(medium), Status::kOk);
  EXPECT_EQ(t.pool.check_ipc_base(medium2), Status::kInvalidValue);
  EXPECT_EQ(t.pool.check_ipc_base(ptr_at(addr_of(first) + 512)), Status::kInvalidValue);
  EXPECT_EQ(t.pool.check_ipc_base(ptr_at(0x1000)), Status::kNotOwned);
}

TEST(DevicePool, LargeIdleSegmentIsReusedOnlyWithinTheAcceptableFit) {
  SimPool t(policy_with(kImmediate));
  void* p = t.alloc(18 * kMiB);
  ASSERT_EQ(t.free(p), Status::kOk);

  // 16 MiB may use up to 16 + 2 MiB: the 18 MiB segment is reused whole.
  void* q = t.alloc(16 * kMiB);
  EXPECT_EQ(q, p);
  EXPECT_EQ(t.pool.stats().driver_mallocs, 1u);
  EXPECT_EQ(t.pool.stats().in_use, 18 * kMiB);
  EXPECT_EQ(t.pool.check_ipc_base(q), Status::kOk);
  ASSERT_EQ(t.free(q), Status::kOk);

  // 14 MiB may use up to 16 MiB: the idle 18 MiB segment would waste too much.
  void* r = t.alloc(14 * kMiB);
  EXPECT_NE(r, p);
  EXPECT_EQ(t.pool.stats().driver_mallocs, 2u);
  EXPECT_EQ(t.pool.stats().in_use, 14 * kMiB);

  // 20 MiB does not fit in 18 MiB.
  void* big = t.alloc(20 * kMiB);
  EXPECT_NE(big, p);
  EXPECT_EQ(t.pool.stats().driver_mallocs, 3u);
  expect_consistent(t.pool, t.backend);
}

TEST(DevicePool, SmallRequestsNeverLandInMediumOrLargeSegments) {
  SimPool t(policy_with(kImmediate));
  void* medium = t.alloc(4 * kMiB);
  void* large = t.alloc(16 * kMiB);
  ASSERT_EQ(t.free(medium), Status::kOk);
  ASSERT_EQ(t.free(large), Status::kOk);
  ASSERT_EQ(t.pool.stats().driver_mallocs, 2u);

  void* small = t.alloc(4096);
  EXPECT_EQ(t.pool.stats().driver_mallocs, 3u);
  EXPECT_EQ(t.backend.counters().held, 20 * kMiB + 16 * kMiB + 2 * kMiB);
  auto outside = [&](void* seg, std::size_t size) {
    return addr_of(small) < addr_of(seg) || addr_of(small) >= addr_of(seg) + size;
  };
  EXPECT_TRUE(outside(medium, 20 * kMiB));
  EXPECT_TRUE(outside(large, 16 * kMiB));

  // A medium request uses the idle medium segment; a large one never does.
  void* medium_again = t.alloc(3 * kMiB);
  EXPECT_EQ(medium_again, medium);
  EXPECT_EQ(t.pool.stats().driver_mallocs, 3u);
  ASSERT_EQ(t.free(medium_again), Status::kOk);
  void* large2 = t.alloc(12 * kMiB);
  EXPECT_NE(large2, medium);
  EXPECT_EQ(t.pool.stats().driver_mallocs, 4u);
}

TEST(DevicePool, FreedNeighboursCoalesce) {
  SimPool t(policy_with(kImmediate));
  std::vector<void*> blocks;
  for (int i = 0; i < 8; ++i)
    blocks.push_back(t.alloc(256 * kKiB));  // fills one 2 MiB segment
  ASSERT_EQ(t.pool.stats().driver_mallocs, 1u);

  // Free 0 and 2, then 1: 1 merges with the free block before it and the one after it.
  ASSERT_EQ(t.free(blocks[0]), Status::kOk);
  ASSERT_EQ(t.free(blocks[2]), Status::kOk);
  ASSERT_EQ(t.free(blocks[1]), Status::kOk);
  void* joined = t.alloc(768 * kKiB);
  EXPECT_EQ(joined, blocks[0]);
  EXPECT_EQ(t.pool.stats().driver_mallocs, 1u);

  // Free 5 then 4 (merge with the next block), then 3 and 6.
  ASSERT_EQ(t.free(blocks[5]), Status::kOk);
  ASSERT_EQ(t.free(blocks[4]), Status::kOk);
  ASSERT_EQ(t.free(blocks[3]), Status::kOk);
  ASSERT_EQ(t.free(blocks[6]), Status::kOk);
  void* joined2 = t.alloc(kMiB);
  EXPECT_EQ(joined2, blocks[3]);
  EXPECT_EQ(t.pool.stats().driver_mallocs, 1u);
  expect_consistent(t.pool, t.backend);
}

TEST(DevicePool, BestFitPicksTheSmallestFreeBlockThatFits) {
  SimPool t(policy_with(kImmediate));
  // Free blocks of 256, 64 and 128 KiB, in that address order, kept apart by live separators,
  // followed by the segment's large free tail. (Separators of different sizes: a thread's cache
  // carves spare blocks for a size that recurs, out of address order.)
  void* k256 = t.alloc(256 * kKiB);
  t.alloc(512);
  void* k64 = t.alloc(64 * kKiB);
  t.alloc(1024);
  void* k128 = t.alloc(128 * kKiB);
  t.alloc(1536);
  ASSERT_EQ(t.free(k256), Status::kOk);
  ASSERT_EQ(t.free(k64), Status::kOk);
  ASSERT_EQ(t.free(k128), Status::kOk);
  // The frees wait in the thread's cache, for requests of their own sizes; the pool's fit shows
  // once they are back.
  t.pool.drain_caches();

  // Smallest request first, so that no earlier remainder is a better fit than the block aimed at.
  EXPECT_EQ(t.alloc(60 * kKiB), k64);  // first fit would take the 256 KiB block
  EXPECT_EQ(t.alloc(100 * kKiB), k128);
  EXPECT_EQ(t.alloc(200 * kKiB), k256);
  EXPECT_EQ(t.pool.stats().driver_mallocs, 1u);
}

TEST(DevicePool, PointersAreAlignedAndLiveBlocksNeverOverlap) {
  for (ReuseMode mode : {kFence, kImmediate}) {
    SCOPED_TRACE(mode == kFence ? "fence" : "immediate");
    SimPool t(policy_with(mode));
    std::mt19937_64 rng(99);
    IntervalSet intervals;
    std::vector<std::pair<void*, std::size_t>> live;
    for (int step = 0; step < 4000; ++step) {
      bool do_free = !live.empty() && (live.size() > 200 || rng() % 2 == 0);
      if (do_free) {
        std::size_t i = rng() % live.size();
        ASSERT_EQ(t.free(live[i].first), Status::kOk);
        intervals.remove(live[i].first);
        live[i] = live.back();
        live.pop_back();
      } else {
        std::size_t size;
        switch (rng() % 8) {
          case 0:
            size = 1 + rng() % (24 * kMiB);  // any kind
            break;
          case 1:
          case 2:
            size = 1 + rng() % (10 * kMiB);  // small or medium
            break;
          default:
            size = 1 + rng() % (64 * kKiB);  // small
            break;
        }
        void* p = t.alloc(size);
        ASSERT_NE(p, nullptr);
        intervals.add(p, round_request(size));
        live.emplace_back(p, size);
      }
      if (step % 500 == 0) t.pool.fence();
      if (step % 1500 == 0) t.pool.release_idle(64 * kMiB, ReleaseReason::kTrim);
      if (HasFailure()) return;
    }
    for (auto& [p, size] : live)
      ASSERT_EQ(t.free(p), Status::kOk);
    EXPECT_EQ(t.pool.stats().in_use, 0u);
    EXPECT_EQ(t.pool.stats().live_blocks, 0u);
    expect_consistent(t.pool, t.backend);
  }
}

// ---- counters -----------------------------------------------------------------------------------

TEST(DevicePool, CountersFollowEveryOperation) {
  SimPool t(policy_with(kFence));
  void* a = t.alloc(kMiB);  // grows segment 1
  void* b = t.alloc(kMiB);  // hit in segment 1
  void* c = t.alloc(kMiB);  // grows segment 2
  PoolStats s = t.pool.stats();
  EXPECT_EQ(s.held, 4 * kMiB);
  EXPECT_EQ(s.in_use, 3 * kMiB);
  EXPECT_EQ(s.idle(), kMiB);
  EXPECT_EQ(s.pending, 0u);
  EXPECT_EQ(s.segments, 2u);
  EXPECT_EQ(s.live_blocks, 3u);
  EXPECT_EQ(s.app_mallocs, 3u);
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.driver_mallocs, 2u);
  EXPECT_EQ(s.peak_held, 4 * kMiB);
  EXPECT_EQ(s.peak_in_use, 3 * kMiB);

  ASSERT_EQ(t.free(a), Status::kOk);
  ASSERT_EQ(t.free(c), Status::kOk);
  s = t.pool.stats();
  EXPECT_EQ(s.in_use, kMiB);
  EXPECT_EQ(s.pending, 2 * kMiB);
  EXPECT_EQ(s.idle(), 3 * kMiB);
  EXPECT_EQ(s.app_frees, 2u);
  EXPECT_EQ(s.live_blocks, 1u);
  EXPECT_EQ(s.peak_in_use, 3 * kMiB);

  EXPECT_TRUE(t.pool.fence());
  s = t.pool.stats();
  EXPECT_EQ(s.fences, 1u);
  EXPECT_EQ(s.pending, 0u);
  EXPECT_EQ(t.backend.counters().syncs, 1u);

  EXPECT_EQ(t.pool.release_idle(0, ReleaseReason::kTrim), 2 * kMiB);  // segment 2 only
  s = t.pool.stats();
  EXPECT_EQ(s.held, 2 * kMiB);
  EXPECT_EQ(s.segments, 1u);
  EXPECT_EQ(s.driver_frees, 1u);
  EXPECT_EQ(s.releases, 1u);
  EXPECT_EQ(s.released_bytes, 2 * kMiB);
  EXPECT_EQ(by_reason(s, ReleaseReason::kTrim), 1u);
  EXPECT_EQ(s.fences, 1u);  // nothing was pending: no second fence
  EXPECT_EQ(s.peak_held, 4 * kMiB);
  expect_consistent(t.pool, t.backend);

  t.pool.reset_peaks();
  s = t.pool.stats();
  EXPECT_EQ(s.peak_held, 2 * kMiB);
  EXPECT_EQ(s.peak_in_use, kMiB);
  EXPECT_EQ(t.free(b), Status::kOk);
  EXPECT_EQ(t.pool.stats().invalid_frees, 0u);
  EXPECT_EQ(t.pool.stats().alloc_failures, 0u);
}

TEST(DevicePool, FreeWakesTheReleaserAboveItsThreshold) {
  Policy p = policy_with(kImmediate);
  p.high_watermark = 4 * kMiB;
  SimPool t(p);
  std::vector<void*> blocks;
  for (int i = 0; i < 6; ++i)
    blocks.push_back(t.alloc(kMiB));
  bool wake = false;
  for (int i = 0; i < 4; ++i) {
    ASSERT_EQ(t.pool.free(blocks[i], &wake), Status::kOk);
    EXPECT_FALSE(wake) << "idle " << i + 1 << " MiB is not above 4 MiB";
  }
  ASSERT_EQ(t.pool.free(blocks[4], &wake), Status::kOk);
  EXPECT_TRUE(wake);

  t.pool.set_wake_threshold(8 * kMiB);
  wake = false;
  ASSERT_EQ(t.pool.free(blocks[5], &wake), Status::kOk);
  EXPECT_FALSE(wake);
}

TEST(DevicePool, ObserverHearsReleases) {
  RecordingObserver observer;
  SimPool t(policy_with(kImmediate), 16 * kGiB, &observer);
  void* a = t.alloc(kMiB);
  void* b = t.alloc(16 * kMiB);
  ASSERT_EQ(t.free(a), Status::kOk);
  ASSERT_EQ(t.free(b), Status::kOk);
  EXPECT_EQ(t.pool.release_idle(0, ReleaseReason::kTrim), 18 * kMiB);
  ASSERT_EQ(observer.releases.size(), 1u);
  EXPECT_EQ(observer.releases[0].reason, ReleaseReason::kTrim);
  EXPECT_EQ(observer.releases[0].bytes, 18 * kMiB);
  EXPECT_EQ(observer.releases[0].segments, 2u);
  EXPECT_TRUE(observer.errors.empty());
}

// ---- invalid frees
// -------------------------------------------------------------------------------

TEST(DevicePool, DoubleFreeIsRefusedAndNeighboursStayIntact) {
  SimPool t(policy_with(kImmediate));
  void* a = t.alloc(4096);
  void* b = t.alloc(4096);
  void* c = t.alloc(4096);
  ASSERT_EQ(t.free(b), Status::kOk);
  EXPECT_EQ(t.free(b), Status::kInvalidValue);
  PoolStats s = t.pool.stats();
  EXPECT_EQ(s.invalid_frees, 1u);
  EXPECT_EQ(s.app_frees, 1u);
  EXPECT_EQ(s.in_use, 8192u);
  EXPECT_EQ(s.live_blocks, 2u);

  // a and c are still allocated: the next 4 KiB request gets b's bytes, not theirs.
  void* again = t.alloc(4096);
  EXPECT_EQ(again, b);
  EXPECT_EQ(t.free(a), Status::kOk);
  EXPECT_EQ(t.free(a), Status::kInvalidValue);
  EXPECT_EQ(t.free(c), Status::kOk);
  EXPECT_EQ(t.free(c), Status::kInvalidValue);
  EXPECT_EQ(t.free(again), Status::kOk);
  s = t.pool.stats();
  EXPECT_EQ(s.invalid_frees, 3u);
  EXPECT_EQ(s.app_frees, 4u);
  EXPECT_EQ(s.in_use, 0u);
}

TEST(DevicePool, DoubleFreeOfAPendingBlockIsRefused) {
  SimPool t(policy_with(kFence));
  void* a = t.alloc(4096);
  void* b = t.alloc(4096);
  ASSERT_EQ(t.free(a), Status::kOk);
  EXPECT_EQ(t.free(a), Status::kInvalidValue);  // pending
  EXPECT_EQ(t.pool.stats().pending, 4096u);
  EXPECT_TRUE(t.pool.fence());
  EXPECT_EQ(t.free(a), Status::kInvalidValue);  // free and coalesced
  EXPECT_EQ(t.pool.stats().invalid_frees, 2u);
  EXPECT_EQ(t.pool.stats().in_use, 4096u);
  EXPECT_EQ(t.free(b), Status::kOk);
}

TEST(DevicePool, InteriorFreeIsRefused) {
  SimPool t(policy_with(kImmediate));
  void* a = t.alloc(64 * kKiB);
  EXPECT_EQ(t.free(ptr_at(addr_of(a) + 512)), Status::kInvalidValue);
  EXPECT_EQ(t.free(ptr_at(addr_of(a) + 64 * kKiB - 512)), Status::kInvalidValue);
  EXPECT_EQ(t.free(ptr_at(addr_of(a) + 64 * kKiB)), Status::kInvalidValue);     // free tail's start
  EXPECT_EQ(t.free(ptr_at(addr_of(a) + 2 * kMiB - 1)), Status::kInvalidValue);  // last byte
  PoolStats s = t.pool.stats();
  EXPECT_EQ(s.invalid_frees, 4u);
  EXPECT_EQ(s.app_frees, 0u);
  EXPECT_EQ(s.in_use, 64 * kKiB);
  EXPECT_EQ(t.free(a), Status::kOk);
}

TEST(DevicePool, ForeignPointerIsNotOwned) {
  SimPool t(policy_with(kImmediate));
  void* a = t.alloc(4096);
  EXPECT_EQ(t.free(ptr_at(0x1000)), Status::kNotOwned);
  EXPECT_EQ(t.free(ptr_at(addr_of(a) + 2 * kMiB)), Status::kNotOwned);  // just past the segment
  EXPECT_EQ(t.free(ptr_at(addr_of(a) - 512)), Status::kNotOwned);       // just before it
  EXPECT_EQ(t.pool.check_ipc_base(ptr_at(addr_of(a) + 2 * kMiB)), Status::kNotOwned);
  EXPECT_EQ(t.pool.stats().invalid_frees, 0u);
  EXPECT_EQ(t.pool.stats().in_use, 4096u);
}

TEST(DevicePool, NullPointerIsNotOwned) {
  SimPool t(policy_with(kImmediate));
  t.alloc(4096);
  EXPECT_EQ(t.free(nullptr), Status::kNotOwned);
  EXPECT_EQ(t.pool.check_ipc_base(nullptr), Status::kNotOwned);
  EXPECT_EQ(t.pool.stats().invalid_frees, 0u);
}

TEST(DevicePool, PointerOfAReleasedSegmentIsNotOwned) {
  SimPool t(policy_with(kImmediate));
  void* a = t.alloc(4096);
  ASSERT_EQ(t.free(a), Status::kOk);
  ASSERT_EQ(t.pool.release_idle(0, ReleaseReason::kTrim), 2 * kMiB);
  EXPECT_EQ(t.free(a), Status::kNotOwned);
  EXPECT_EQ(t.pool.stats().invalid_frees, 0u);
}

// ---- fences
// ----------------------------------------------------------------------------------------

TEST(DevicePool, FenceModeDoesNotReuseABlockBeforeAFence) {
  SimPool t(policy_with(kFence));
  std::vector<void*> blocks;
  for (int i = 0; i < 4; ++i)
    blocks.push_back(t.alloc(512 * kKiB));  // one full segment
  ASSERT_EQ(t.free(blocks[1]), Status::kOk);
  EXPECT_EQ(t.pool.stats().pending, 512 * kKiB);

  void* next = t.alloc(512 * kKiB);
  EXPECT_NE(next, blocks[1]);
  EXPECT_EQ(t.pool.stats().driver_mallocs, 2u);  // grew instead
  EXPECT_EQ(t.backend.counters().syncs, 0u);     // less than a segment pending: no fence

  EXPECT_TRUE(t.pool.fence());
  EXPECT_EQ(t.pool.stats().pending, 0u);
  EXPECT_EQ(t.alloc(512 * kKiB), blocks[1]);
  EXPECT_EQ(t.pool.stats().driver_mallocs, 2u);
}

TEST(DevicePool, FenceWithNothingPendingDoesNotSynchronize) {
  SimPool t(policy_with(kFence));
  t.alloc(4096);
  EXPECT_TRUE(t.pool.fence());
  EXPECT_EQ(t.backend.counters().syncs, 0u);
  EXPECT_EQ(t.pool.stats().fences, 0u);
}

TEST(DevicePool, ImmediateModeReusesAtOnce) {
  SimPool t(policy_with(kImmediate));
  void* a = t.alloc(4096);
  t.alloc(4096);
  ASSERT_EQ(t.free(a), Status::kOk);
  EXPECT_EQ(t.pool.stats().pending, 0u);
  EXPECT_EQ(t.alloc(4096), a);
  EXPECT_EQ(t.backend.counters().syncs, 0u);
  EXPECT_EQ(t.pool.stats().driver_mallocs, 1u);
}

TEST(DevicePool, FailedFenceKeepsBlocksPending) {
  RecordingObserver observer;
  SimPool t(policy_with(kFence), 16 * kGiB, &observer);
  void* a = t.alloc(4096);
  t.alloc(4096);
  ASSERT_EQ(t.free(a), Status::kOk);
  t.backend.fail_syncs(true);
  EXPECT_FALSE(t.pool.fence());
  EXPECT_EQ(t.pool.stats().pending, 4096u);
  EXPECT_EQ(t.pool.stats().fences, 0u);
  ASSERT_EQ(observer.errors.size(), 1u);
  EXPECT_EQ(observer.errors[0].operation, "synchronize");
  EXPECT_NE(t.alloc(4096), a);
  t.backend.fail_syncs(false);
  EXPECT_TRUE(t.pool.fence());
  EXPECT_EQ(t.pool.stats().pending, 0u);
  t.pool.drain_caches();  // the spare blocks the thread's cache carved for this size
  EXPECT_EQ(t.alloc(4096), a);
}

// A block freed while a fence's synchronize() is running may still be in use by work issued
// after that synchronize began: the fence must not make it free.
TEST(DevicePool, FenceDoesNotFreeBlocksFreedWhileItSynchronizes) {
  FakeBackend backend;
  SyncGate gate;
  DevicePool pool(0, backend, gate, policy_with(kFence));
  void* a = alloc_or_fail(pool, 4096);
  void* b = alloc_or_fail(pool, 4096);
  alloc_or_fail(pool, 4096);  // keeps b away from the segment's free tail
  ASSERT_EQ(free_block(pool, a), Status::kOk);

  std::latch entered(1), proceed(1);
  backend.set_on_synchronize([&] {
    entered.count_down();
    proceed.wait();
  });
  bool fenced = false;
  std::thread fencer([&] { fenced = pool.fence(); });
  entered.wait();
  ASSERT_EQ(free_block(pool, b), Status::kOk);  // during the synchronize
  proceed.count_down();
  fencer.join();
  backend.set_on_synchronize(nullptr);

  EXPECT_TRUE(fenced);
  PoolStats s = pool.stats();
  EXPECT_EQ(s.fences, 1u);
  EXPECT_EQ(s.pending, 4096u);  // b still waits
  pool.drain_caches();          // the spare blocks the thread's cache carved for this size
  EXPECT_EQ(alloc_or_fail(pool, 4096), a);
  void* c = alloc_or_fail(pool, 4096);
  EXPECT_NE(c, b);

  EXPECT_TRUE(pool.fence());
  EXPECT_EQ(pool.stats().pending, 0u);
  pool.drain_caches();
  EXPECT_EQ(alloc_or_fail(pool, 4096), b);
}

TEST(DevicePool, CaptureBlocksFencesAndReleases) {
  FakeBackend backend;
  SyncGate gate;
  DevicePool pool(0, backend, gate, policy_with(kFence));
  void* large = alloc_or_fail(pool, 12 * kMiB);
  void* small = alloc_or_fail(pool, 4096);
  ASSERT_EQ(free_block(pool, large), Status::kOk);
  ASSERT_EQ(free_block(pool, small), Status::kOk);

  gate.begin_capture();
  EXPECT_FALSE(pool.fence());
  EXPECT_EQ(pool.release_idle(0, ReleaseReason::kTrim), 0u);
  EXPECT_EQ(backend.count("synchronize"), 0);
  EXPECT_EQ(backend.count("release"), 0);
  PoolStats s = pool.stats();
  EXPECT_EQ(s.held, 14 * kMiB);
  EXPECT_EQ(s.pending, 12 * kMiB + 4096);
  EXPECT_EQ(s.fences, 0u);
  gate.end_capture();

  EXPECT_TRUE(pool.fence());
  EXPECT_EQ(pool.release_idle(0, ReleaseReason::kTrim), 14 * kMiB);
  EXPECT_EQ(backend.held(), 0u);
}

TEST(DevicePool, ImmediateModeStillDefersFreesDuringACapture) {
  SimPool t(policy_with(kImmediate));
  void* a = t.alloc(4096);
  t.alloc(4096);
  t.gate.begin_capture();
  ASSERT_EQ(t.free(a), Status::kOk);
  EXPECT_EQ(t.pool.stats().pending, 4096u);
  EXPECT_NE(t.alloc(4096), a);
  t.gate.end_capture();
  EXPECT_TRUE(t.pool.fence());
  EXPECT_EQ(t.pool.stats().pending, 0u);
  t.pool.drain_caches();  // the spare blocks the thread's cache carved for this size
  EXPECT_EQ(t.alloc(4096), a);
}

// Below kFenceBatch pending, a small miss grows the pool: one driver call is cheaper than
// synchronising the whole device for a few blocks.
TEST(DevicePool, SlowPathGrowsWhileLittleIsPending) {
  SimPool t(policy_with(kFence));
  std::vector<void*> blocks;
  for (int i = 0; i < 4; ++i)
    blocks.push_back(t.alloc(512 * kKiB));
  for (void* p : blocks)
    ASSERT_EQ(t.free(p), Status::kOk);
  ASSERT_EQ(t.pool.stats().pending, 2 * kMiB);

  void* p = t.alloc(512 * kKiB);
  EXPECT_NE(p, blocks[0]);
  PoolStats s = t.pool.stats();
  EXPECT_EQ(s.driver_mallocs, 2u);
  EXPECT_EQ(s.fences, 0u);
  EXPECT_EQ(s.pending, 2 * kMiB);
  EXPECT_EQ(t.backend.counters().syncs, 0u);
}

// Once kFenceBatch is pending, a miss fences and reuses instead of growing.
TEST(DevicePool, SlowPathFencesOnceABatchIsPending) {
  SimPool t(policy_with(kFence));
  constexpr std::size_t kBlocks = kFenceBatch / (512 * kKiB);
  std::vector<void*> blocks;
  for (std::size_t i = 0; i < kBlocks; ++i)
    blocks.push_back(t.alloc(512 * kKiB));
  for (void* p : blocks)
    ASSERT_EQ(t.free(p), Status::kOk);
  ASSERT_EQ(t.pool.stats().pending, kFenceBatch);
  const std::uint64_t segments = kFenceBatch / kSmallSegment;

  void* p = t.alloc(512 * kKiB);
  EXPECT_NE(std::find(blocks.begin(), blocks.end(), p), blocks.end()) << "not a reused block";
  PoolStats s = t.pool.stats();
  EXPECT_EQ(s.driver_mallocs, segments);  // fenced instead of growing
  EXPECT_EQ(s.fences, 1u);
  EXPECT_EQ(s.pending, 0u);
  EXPECT_EQ(s.hits, kBlocks - segments + 1);
  EXPECT_EQ(t.backend.counters().syncs, 1u);
}

// ---- release_idle
// --------------------------------------------------------------------------------

TEST(DevicePool, ReleaseIdleReturnsWhollyFreeSegmentsOldestFirst) {
  FakeBackend backend(FakeBackend::Addresses::kDescending);  // oldest has the highest address
  SyncGate gate;
  DevicePool pool(0, backend, gate, policy_with(kImmediate));
  void* seg[4][2];
  for (auto& s : seg)
    for (void*& p : s)
      p = alloc_or_fail(pool, kMiB);
  ASSERT_EQ(pool.stats().segments, 4u);
  for (int i : {0, 2, 3})
    for (void* p : seg[i])
      ASSERT_EQ(free_block(pool, p), Status::kOk);
  ASSERT_EQ(free_block(pool, seg[1][0]), Status::kOk);  // segment 1 stays partly used
  ASSERT_EQ(pool.stats().idle(), 7 * kMiB);

  EXPECT_EQ(pool.release_idle(3 * kMiB, ReleaseReason::kTrim), 4 * kMiB);
  std::vector<std::uintptr_t> expected = {addr_of(seg[0][0]), addr_of(seg[2][0])};
  EXPECT_EQ(backend.released(), expected);
  PoolStats s = pool.stats();
  EXPECT_EQ(s.held, 4 * kMiB);
  EXPECT_EQ(s.idle(), 3 * kMiB);

  EXPECT_EQ(pool.release_idle(0, ReleaseReason::kTrim), 2 * kMiB);
  expected.push_back(addr_of(seg[3][0]));
  EXPECT_EQ(backend.released(), expected);
  EXPECT_EQ(free_block(pool, seg[1][1]), Status::kOk);  // the in-use block was never touched
  EXPECT_EQ(backend.held(), 2 * kMiB);
}

TEST(DevicePool, ReleaseIdleFencesPendingBlocksFirstAndKeepsBusySegments) {
  FakeBackend backend;
  SyncGate gate;
  DevicePool pool(0, backend, gate, policy_with(kFence));
  void* a = alloc_or_fail(pool, kMiB);
  void* b = alloc_or_fail(pool, kMiB);
  void* c = alloc_or_fail(pool, kMiB);
  void* d = alloc_or_fail(pool, kMiB);
  ASSERT_EQ(free_block(pool, a), Status::kOk);
  ASSERT_EQ(free_block(pool, b), Status::kOk);
  ASSERT_EQ(free_block(pool, d), Status::kOk);  // c's segment: one pending, one in use

  EXPECT_EQ(pool.release_idle(0, ReleaseReason::kTrim), 2 * kMiB);
  std::vector<test::FakeBackend::Call> calls = backend.calls();
  ASSERT_EQ(calls.size(), 2u + 1u + 1u);
  EXPECT_EQ(calls[2].op, "synchronize");
  EXPECT_EQ(calls[3].op, "release");
  EXPECT_EQ(calls[3].addr, addr_of(a));
  PoolStats s = pool.stats();
  EXPECT_EQ(s.pending, 0u);
  EXPECT_EQ(s.held, 2 * kMiB);
  EXPECT_EQ(s.in_use, kMiB);
  EXPECT_EQ(s.fences, 1u);
  EXPECT_EQ(free_block(pool, c), Status::kOk);
}

TEST(DevicePool, ReleaseIdleStopsAtKeepIdle) {
  SimPool t(policy_with(kImmediate));
  std::vector<void*> blocks;
  for (int i = 0; i < 10; ++i)
    blocks.push_back(t.alloc(kMiB));
  for (void* p : blocks)
    ASSERT_EQ(t.free(p), Status::kOk);
  ASSERT_EQ(t.pool.stats().held, 10 * kMiB);

  EXPECT_EQ(t.pool.release_idle(5 * kMiB, ReleaseReason::kTrim), 6 * kMiB);  // 10 -> 4 MiB
  EXPECT_EQ(t.pool.stats().held, 4 * kMiB);
  EXPECT_EQ(t.pool.release_idle(4 * kMiB, ReleaseReason::kTrim), 0u);  // already there
  EXPECT_EQ(t.pool.release_idle(100 * kMiB, ReleaseReason::kTrim), 0u);
  EXPECT_EQ(t.backend.counters().releases, 3u);
  EXPECT_EQ(t.pool.stats().releases, 1u);
  expect_consistent(t.pool, t.backend);
}

TEST(DevicePool, FailedReleaseKeepsTheSegmentUsable) {
  RecordingObserver observer;
  SimPool t(policy_with(kImmediate), 16 * kGiB, &observer);
  void* a = t.alloc(kMiB);
  void* b = t.alloc(kMiB);
  ASSERT_EQ(t.free(a), Status::kOk);
  ASSERT_EQ(t.free(b), Status::kOk);

  t.backend.fail_next_releases(1);
  EXPECT_EQ(t.pool.release_idle(0, ReleaseReason::kTrim), 0u);
  PoolStats s = t.pool.stats();
  EXPECT_EQ(s.held, 2 * kMiB);
  EXPECT_EQ(s.segments, 1u);
  EXPECT_EQ(s.driver_frees, 0u);
  EXPECT_EQ(s.releases, 0u);
  EXPECT_EQ(s.released_bytes, 0u);
  ASSERT_EQ(observer.errors.size(), 1u);
  EXPECT_EQ(observer.errors[0].operation, "release");
  EXPECT_TRUE(observer.releases.empty());
  expect_consistent(t.pool, t.backend);

  // Still ours and still usable, whole.
  EXPECT_EQ(t.alloc(2 * kKiB), a);
  EXPECT_EQ(t.alloc(kMiB), ptr_at(addr_of(a) + 2 * kKiB));
  EXPECT_EQ(t.pool.stats().driver_mallocs, 1u);
  EXPECT_EQ(t.free(a), Status::kOk);
  EXPECT_EQ(t.free(ptr_at(addr_of(a) + 2 * kKiB)), Status::kOk);
  EXPECT_EQ(t.pool.release_idle(0, ReleaseReason::kTrim), 2 * kMiB);
  expect_consistent(t.pool, t.backend);
}

TEST(DevicePool, DropAllForgetsEverythingWithoutReleasing) {
  SimPool t(policy_with(kFence));
  t.alloc(4096);
  void* pending = t.alloc(4 * kMiB);
  t.alloc(16 * kMiB);
  ASSERT_EQ(t.free(pending), Status::kOk);
  std::uint64_t driver_held = t.backend.counters().held;

  t.pool.drop_all();
  PoolStats s = t.pool.stats();
  EXPECT_EQ(s.held, 0u);
  EXPECT_EQ(s.in_use, 0u);
  EXPECT_EQ(s.pending, 0u);
  EXPECT_EQ(s.segments, 0u);
  EXPECT_EQ(s.live_blocks, 0u);
  EXPECT_EQ(t.backend.counters().releases, 0u);
  EXPECT_EQ(t.backend.counters().syncs, 0u);
  EXPECT_EQ(t.backend.counters().held, driver_held);  // the reset frees it, not the pool
  EXPECT_EQ(t.pool.release_idle(0, ReleaseReason::kTrim), 0u);
  EXPECT_EQ(t.backend.counters().releases, 0u);

  // The pool works again from scratch.
  void* fresh = t.alloc(4096);
  EXPECT_EQ(t.pool.stats().held, 2 * kMiB);
  EXPECT_EQ(t.pool.check_ipc_base(fresh), Status::kOk);
  EXPECT_EQ(t.free(fresh), Status::kOk);
}

// After a device reset a stale pointer of the old pool belongs to no segment: cudaFree must
// forward it (kNotOwned) and must not touch the new pool's bookkeeping.
TEST(DevicePool, DropAllForgetsLiveBlocks) {
  SimPool t(policy_with(kFence));
  void* old = t.alloc(4096);
  t.pool.drop_all();
  EXPECT_EQ(t.free(old), Status::kNotOwned);
  PoolStats s = t.pool.stats();
  EXPECT_EQ(s.in_use, 0u);
  EXPECT_EQ(s.pending, 0u);
  EXPECT_EQ(s.app_frees, 0u);
  EXPECT_EQ(s.invalid_frees, 0u);
}

// ---- limit and out of memory
// ---------------------------------------------------------------------

TEST(DevicePool, LimitReleasesIdleBeforeGrowingThenFails) {
  Policy p = policy_with(kImmediate);
  p.limit = 4 * kMiB;
  SimPool t(p);
  t.alloc(kMiB);
  t.alloc(kMiB);                     // one full small segment: held 2 MiB
  void* medium = t.alloc(2 * kMiB);  // a 20 MiB segment would break the limit: an exact one
  EXPECT_EQ(t.pool.stats().held, 4 * kMiB);
  EXPECT_EQ(t.pool.stats().limit_hits, 0u);
  ASSERT_EQ(t.free(medium), Status::kOk);  // idle, wholly free

  // Growing a small segment would exceed the limit: the idle medium segment goes first.
  void* s1 = t.alloc(kMiB);
  ASSERT_NE(s1, nullptr);
  PoolStats s = t.pool.stats();
  EXPECT_EQ(s.limit_hits, 1u);
  EXPECT_EQ(s.held, 4 * kMiB);
  EXPECT_EQ(s.driver_frees, 1u);
  EXPECT_EQ(by_reason(s, ReleaseReason::kLimit), 1u);
  t.alloc(kMiB);  // fills the new segment

  // Nothing idle left to release: fail.
  void* none = nullptr;
  EXPECT_EQ(t.pool.allocate(512, &none), Status::kOutOfMemory);
  EXPECT_EQ(t.pool.allocate(12 * kMiB, &none), Status::kOutOfMemory);
  s = t.pool.stats();
  EXPECT_EQ(s.limit_hits, 3u);
  EXPECT_EQ(s.alloc_failures, 2u);
  EXPECT_EQ(s.held, 4 * kMiB);
  EXPECT_EQ(s.in_use, 4 * kMiB);
  EXPECT_LE(s.peak_held, 4 * kMiB);
  expect_consistent(t.pool, t.backend);
}

// While a segment is being returned (a cudaFree can take long: it waits for the device), the
// process still holds it. A growth that runs meanwhile must count it against the limit, not
// overshoot the limit at the driver.
TEST(DevicePool, LimitCountsSegmentsStillBeingReleased) {
  FakeBackend backend;
  SyncGate gate;
  Policy p = policy_with(kImmediate);
  p.limit = 4 * kMiB;
  DevicePool pool(0, backend, gate, p);
  void* a0 = alloc_or_fail(pool, kMiB);
  void* a1 = alloc_or_fail(pool, kMiB);
  alloc_or_fail(pool, kMiB);
  alloc_or_fail(pool, kMiB);  // two full segments: held == limit
  ASSERT_EQ(free_block(pool, a0), Status::kOk);
  ASSERT_EQ(free_block(pool, a1), Status::kOk);  // the first segment is wholly idle

  std::latch entered(1), proceed(1);
  backend.set_on_release([&] {
    entered.count_down();
    proceed.wait();
  });
  std::thread releaser([&] { pool.release_idle(0, ReleaseReason::kTrim); });
  entered.wait();  // the release is under way: the driver still holds the segment
  auto grown = std::async(std::launch::async, [&] {
    void* p = nullptr;
    return pool.allocate(kMiB, &p);
  });
  // A correct pool does not grow yet: its own release_idle() queues behind the release under way,
  // and it grows once the segment is gone. Give a wrong one the time to grow now.
  grown.wait_for(std::chrono::milliseconds(200));
  proceed.count_down();
  releaser.join();
  EXPECT_EQ(grown.get(), Status::kOk);
  backend.set_on_release(nullptr);

  EXPECT_LE(backend.max_held(), 4 * kMiB);
  EXPECT_EQ(backend.held(), 4 * kMiB);
  EXPECT_EQ(pool.stats().held, 4 * kMiB);
}

TEST(DevicePool, OutOfMemoryReleasesIdleAndRetries) {
  SimPool t(policy_with(kFence), kGiB);
  void* p = t.alloc(600 * kMiB);
  ASSERT_EQ(t.free(p), Status::kOk);  // pending: the retry must fence it before releasing

  void* q = t.alloc(700 * kMiB);
  ASSERT_NE(q, nullptr);
  PoolStats s = t.pool.stats();
  EXPECT_EQ(s.oom_retries, 1u);
  EXPECT_EQ(s.alloc_failures, 0u);
  EXPECT_EQ(s.held, 700 * kMiB);
  EXPECT_EQ(s.in_use, 700 * kMiB);
  EXPECT_EQ(s.driver_frees, 1u);
  EXPECT_EQ(by_reason(s, ReleaseReason::kOutOfMemory), 1u);
  EXPECT_EQ(t.backend.counters().allocation_failures, 1u);
  EXPECT_EQ(t.pool.check_ipc_base(q), Status::kOk);
  expect_consistent(t.pool, t.backend);
}

TEST(DevicePool, RequestLargerThanTheDeviceFailsCleanly) {
  SimPool t(policy_with(kImmediate), kGiB);
  void* live = t.alloc(4096);
  void* idle = t.alloc(100 * kMiB);
  ASSERT_EQ(t.free(idle), Status::kOk);

  void* p = reinterpret_cast<void*>(0x1);
  EXPECT_EQ(t.pool.allocate(2 * kGiB, &p), Status::kOutOfMemory);
  PoolStats s = t.pool.stats();
  EXPECT_EQ(s.alloc_failures, 1u);
  EXPECT_EQ(s.oom_retries, 1u);
  EXPECT_EQ(s.app_mallocs, 2u);
  EXPECT_EQ(s.live_blocks, 1u);
  EXPECT_EQ(s.in_use, 4096u);
  EXPECT_EQ(s.pending, 0u);
  expect_consistent(t.pool, t.backend);

  // Still serves what fits.
  void* more = t.alloc(8192);
  EXPECT_NE(more, nullptr);
  EXPECT_EQ(t.free(live), Status::kOk);
  EXPECT_EQ(t.free(more), Status::kOk);
}

TEST(DevicePool, UnservableSizeFailsWithoutCallingTheDriver) {
  SimPool t(policy_with(kImmediate));
  void* p = nullptr;
  EXPECT_EQ(t.pool.allocate(SIZE_MAX, &p), Status::kOutOfMemory);
  EXPECT_EQ(t.pool.allocate(kMaxRequest + 1, &p), Status::kOutOfMemory);
  EXPECT_EQ(t.pool.stats().alloc_failures, 2u);
  EXPECT_EQ(t.backend.counters().allocations + t.backend.counters().allocation_failures, 0u);
}

TEST(DevicePool, InjectedAllocationFailureIsRetried) {
  SimPool t(policy_with(kImmediate));
  t.backend.fail_next_allocations(1);
  void* p = t.alloc(4096);
  ASSERT_NE(p, nullptr);
  PoolStats s = t.pool.stats();
  EXPECT_EQ(s.oom_retries, 1u);
  EXPECT_EQ(s.alloc_failures, 0u);
  EXPECT_EQ(s.driver_mallocs, 1u);
  EXPECT_EQ(s.held, 2 * kMiB);
  EXPECT_EQ(t.backend.counters().allocation_failures, 1u);
  expect_consistent(t.pool, t.backend);
}

TEST(DevicePool, ExactSizeSegmentWhenAWholeOneDoesNotFit) {
  SimPool t(policy_with(kImmediate), kGiB);
  t.backend.set_other_usage(kGiB - 10 * kMiB);  // room for 8 MiB, not for a 20 MiB segment
  void* p = t.alloc(8 * kMiB);
  ASSERT_NE(p, nullptr);
  PoolStats s = t.pool.stats();
  EXPECT_EQ(s.held, 8 * kMiB);
  EXPECT_EQ(s.oom_retries, 1u);
  expect_consistent(t.pool, t.backend);
}

// ---- host allocations on the hot path
// ------------------------------------------------------------

TEST(DevicePool, PoolHitsAllocateNoHostMemory) {
  SimPool t(policy_with(kFence));
  std::vector<void*> held;
  auto churn = [&] {
    for (int round = 0; round < 50; ++round) {
      for (int i = 0; i < 40; ++i)
        held.push_back(t.alloc(512u * (1 + (i * 7 + round) % 64)));
      for (std::size_t i = 0; i < held.size(); i += 2)
        t.free(held[i]);
      for (std::size_t i = 1; i < held.size(); i += 2)
        t.free(held[i]);
      held.clear();
      t.pool.fence();
    }
  };
  churn();  // warm up: segments, map slots, index nodes and block records exist now
  std::uint64_t grown = t.pool.stats().driver_mallocs;
  test::HostAllocationCounter counter;
  churn();
  EXPECT_EQ(counter.count(), 0u);
  EXPECT_EQ(t.pool.stats().driver_mallocs, grown);
}

// ---- concurrency
// -----------------------------------------------------------------------------------

TEST(DevicePool, ConcurrentAllocFreeWithFencesAndReleases) {
  SimPool t(policy_with(kFence));
  std::mutex intervals_mutex;
  IntervalSet intervals;
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> total_allocs{0};

  auto worker = [&](unsigned seed) {
    std::mt19937_64 rng(seed);
    std::vector<std::pair<void*, std::size_t>> live;
    for (int op = 0; op < 50000; ++op) {
      if (!live.empty() && (live.size() >= 24 || rng() % 2 == 0)) {
        std::size_t i = rng() % live.size();
        {
          std::lock_guard lock(intervals_mutex);
          intervals.remove(live[i].first);
        }
        ASSERT_EQ(free_block(t.pool, live[i].first), Status::kOk);
        live[i] = live.back();
        live.pop_back();
      } else {
        // Log-uniform from 512 B to 32 MiB.
        double exp = 9.0 + (rng() % 1000) / 1000.0 * 16.0;
        std::size_t size = static_cast<std::size_t>(std::exp2(exp));
        void* p = nullptr;
        ASSERT_EQ(t.pool.allocate(size, &p), Status::kOk);
        {
          std::lock_guard lock(intervals_mutex);
          intervals.add(p, round_request(size));
        }
        live.emplace_back(p, size);
        ++total_allocs;
      }
    }
    for (auto& [p, size] : live) {
      {
        std::lock_guard lock(intervals_mutex);
        intervals.remove(p);
      }
      ASSERT_EQ(free_block(t.pool, p), Status::kOk);
    }
  };
  std::thread janitor([&] {
    for (int i = 0; !stop.load(); ++i) {
      if (i % 2 == 0) {
        t.pool.fence();
      } else {
        t.pool.release_idle(32 * kMiB, ReleaseReason::kTrim);
      }
      std::this_thread::yield();
    }
  });
  std::vector<std::thread> workers;
  for (unsigned i = 0; i < 4; ++i)
    workers.emplace_back(worker, 1000 + i);
  for (std::thread& w : workers)
    w.join();
  stop = true;
  janitor.join();

  EXPECT_EQ(intervals.size(), 0u);
  PoolStats s = t.pool.stats();
  EXPECT_EQ(s.app_mallocs, total_allocs.load());
  EXPECT_EQ(s.app_frees, total_allocs.load());
  EXPECT_EQ(s.in_use, 0u);
  EXPECT_EQ(s.live_blocks, 0u);
  EXPECT_EQ(s.invalid_frees, 0u);
  EXPECT_EQ(s.alloc_failures, 0u);
  expect_consistent(t.pool, t.backend);

  EXPECT_TRUE(t.pool.fence());
  t.pool.release_idle(0, ReleaseReason::kTrim);
  s = t.pool.stats();
  EXPECT_EQ(s.held, 0u);
  EXPECT_EQ(s.pending, 0u);
  EXPECT_EQ(s.segments, 0u);
  EXPECT_EQ(t.backend.counters().held, 0u);
  expect_consistent(t.pool, t.backend);
}

}  // namespace
}  // namespace cudapool
