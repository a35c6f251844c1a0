// The pool's per-thread caches (device_pool.h, docs/thread-caches.md): what threads add to the
// pool's promises. Every test runs its threads against SimulatedBackend; none sleeps or times.
#include <gtest/gtest.h>

#include <atomic>
#include <latch>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "tests/unit/allocator/pool_harness.h"

namespace cudapool::test {
namespace {

constexpr ReuseMode kFence = ReuseMode::kFence;
constexpr ReuseMode kImmediate = ReuseMode::kImmediate;

// The caches start once a second thread allocates: one allocation and its free on another thread
// (a medium block, in a segment of its own kind, fenced: it stays out of the small blocks' way).
void start_caches(DevicePool& pool) {
  std::thread([&pool] {
    void* p = alloc_or_fail(pool, 2 * kMiB);
    EXPECT_EQ(free_block(pool, p), Status::kOk);
  }).join();
  EXPECT_TRUE(pool.fence());
  pool.reset_peaks();
}

// Allocates `n` blocks of `size` and frees them all, on this thread.
void churn(DevicePool& pool, std::size_t size, int n) {
  std::vector<void*> blocks;
  for (int i = 0; i < n; ++i)
    blocks.push_back(alloc_or_fail(pool, size));
  for (void* p : blocks)
    ASSERT_EQ(free_block(pool, p), Status::kOk);
}

TEST(ThreadCache, OneThreadAloneUsesThePoolDirectly) {
  SimPool t(policy_with(kImmediate));
  void* a = t.alloc(4096);
  ASSERT_EQ(t.free(a), Status::kOk);  // into the pool, not a bin: the next size fits there
  EXPECT_EQ(t.alloc(2048), a);
  start_caches(t.pool);
  void* b = t.alloc(8192);
  ASSERT_EQ(t.free(b), Status::kOk);  // now into this thread's bin
  EXPECT_NE(t.alloc(4096), b);
  EXPECT_EQ(t.alloc(8192), b);
}

TEST(ThreadCache, StatsCountWhatACacheHoldsAsIdle) {
  SimPool t(policy_with(kImmediate));
  start_caches(t.pool);
  std::vector<void*> blocks;
  for (int i = 0; i < 10; ++i)
    blocks.push_back(t.alloc(4096));
  for (int i = 0; i < 6; ++i)
    ASSERT_EQ(t.free(blocks[i]), Status::kOk);  // into this thread's bins
  PoolStats s = t.pool.stats();
  EXPECT_EQ(s.in_use, 4 * 4096u);
  EXPECT_EQ(s.live_blocks, 4u);
  EXPECT_EQ(s.app_mallocs, 11u);  // with start_caches()'s
  EXPECT_EQ(s.app_frees, 7u);
  EXPECT_EQ(s.idle(), s.held - 4 * 4096u);
  expect_consistent(t.pool, t.backend);
  // The report of the blocks agrees with the counters.
  std::uint64_t in_use = 0;
  for (const SegmentView& seg : t.pool.segments())
    for (const auto& b : seg.blocks)
      if (b.state == SegmentView::BlockState::kInUse) in_use += b.size;
  EXPECT_EQ(in_use, s.in_use);
}

TEST(ThreadCache, PendingFreesOfACacheCountAsPendingAndWaitForTheFence) {
  SimPool t(policy_with(kFence));
  start_caches(t.pool);
  void* a = t.alloc(4096);
  void* keep = t.alloc(4096);
  ASSERT_EQ(t.free(a), Status::kOk);
  EXPECT_EQ(t.pool.stats().pending, 4096u);
  for (int i = 0; i < 100; ++i) {  // never a before a fence, whatever the cache carves
    void* p = t.alloc(4096);
    EXPECT_NE(p, a);
  }
  EXPECT_TRUE(t.pool.fence());  // covers the frees waiting in the caches
  EXPECT_EQ(t.pool.stats().pending, 0u);
  EXPECT_NE(keep, nullptr);
}

// A block freed on thread A while its work may still run is not handed to thread B before a
// fence, and B gets it after one.
TEST(ThreadCache, ABlockFreedOnOneThreadReachesAnotherOnlyAfterAFence) {
  SimPool t(policy_with(kFence));
  start_caches(t.pool);
  std::vector<void*> freed;
  std::thread a([&] {
    for (int i = 0; i < 32; ++i)
      freed.push_back(alloc_or_fail(t.pool, 8192));
    for (void* p : freed)
      ASSERT_EQ(free_block(t.pool, p), Status::kOk);
  });  // A exits: its pending frees join the pool's list
  a.join();
  std::set<void*> waiting(freed.begin(), freed.end());
  std::thread b([&] {
    std::vector<void*> got;
    for (int i = 0; i < 64; ++i) {
      void* p = alloc_or_fail(t.pool, 8192);
      EXPECT_EQ(waiting.count(p), 0u) << "reused before a fence";
      got.push_back(p);
    }
    EXPECT_TRUE(t.pool.fence());
    t.pool.drain_caches();  // B's spare blocks back, so that the pool's best fit shows
    void* p = alloc_or_fail(t.pool, 8192);
    EXPECT_EQ(waiting.count(p), 1u) << "a fenced block is reused";
    got.push_back(p);
    for (void* q : got)
      ASSERT_EQ(free_block(t.pool, q), Status::kOk);
  });
  b.join();
  expect_consistent(t.pool, t.backend);
}

TEST(ThreadCache, FreesFromAnotherThreadSucceedAndDoubleFreesAreRefused) {
  SimPool t(policy_with(kFence));
  start_caches(t.pool);
  std::vector<void*> blocks;
  for (int i = 0; i < 100; ++i)
    blocks.push_back(t.alloc(512 * (1 + i % 8)));
  std::thread other([&] {
    for (void* p : blocks)
      EXPECT_EQ(free_block(t.pool, p), Status::kOk);
    EXPECT_EQ(free_block(t.pool, blocks[0]), Status::kInvalidValue);
  });
  other.join();
  EXPECT_EQ(t.free(blocks[1]), Status::kInvalidValue);  // on the allocating thread too
  PoolStats s = t.pool.stats();
  EXPECT_EQ(s.live_blocks, 0u);
  EXPECT_EQ(s.in_use, 0u);
  EXPECT_EQ(s.invalid_frees, 2u);
  expect_consistent(t.pool, t.backend);
}

TEST(ThreadCache, AThreadThatExitsWithAFullCacheReturnsIt) {
  for (ReuseMode mode : {kFence, kImmediate}) {
    SimPool t(policy_with(mode));
    start_caches(t.pool);
    void* kept = nullptr;
    std::thread worker([&] {
      churn(t.pool, 64 * kKiB, 200);
      churn(t.pool, 4096, 200);
      kept = alloc_or_fail(t.pool, 4096);  // still in use after the thread is gone
    });
    worker.join();
    PoolStats s = t.pool.stats();
    EXPECT_EQ(s.in_use, 4096u);
    EXPECT_EQ(s.app_mallocs, 402u);  // the thread's counters stay counted (and start_caches()'s)
    EXPECT_EQ(s.app_frees, 401u);
    // Everything but the segment of the live block goes back, and that block can still be freed.
    t.pool.release_idle(0, ReleaseReason::kTrim);
    EXPECT_EQ(t.pool.stats().held, kSmallSegment);
    EXPECT_EQ(t.free(kept), Status::kOk);
    t.pool.release_idle(0, ReleaseReason::kTrim);
    EXPECT_EQ(t.pool.stats().held, 0u);
    EXPECT_EQ(t.backend.counters().held, 0u);
    expect_consistent(t.pool, t.backend);
  }
}

// A release drains the caches of threads that are still alive but idle.
TEST(ThreadCache, ReleaseReachesTheCachesOfLiveThreads) {
  SimPool t(policy_with(kImmediate));
  start_caches(t.pool);
  std::latch filled(1), done(1);
  std::thread worker([&] {
    churn(t.pool, 16 * kKiB, 300);
    filled.count_down();
    done.wait();
  });
  filled.wait();
  const std::uint64_t held = t.pool.stats().held;
  EXPECT_GT(held, 0u);
  EXPECT_GT(t.pool.releasable_hint(), 0u);  // the cache's blocks count
  EXPECT_EQ(t.pool.release_idle(0, ReleaseReason::kTrim), held);
  EXPECT_EQ(t.pool.stats().held, 0u);
  done.count_down();
  worker.join();
  expect_consistent(t.pool, t.backend);
}

TEST(ThreadCache, IdleCachesAreDrainedOnlyAfterTheQuietTime) {
  SimPool t(policy_with(kImmediate));
  start_caches(t.pool);
  churn(t.pool, 4096, 50);
  EXPECT_EQ(t.pool.drain_idle_caches(1000, 100), 0);  // first look: remembers the calls
  EXPECT_EQ(t.pool.drain_idle_caches(1050, 100), 0);  // quiet for 50 ms only
  churn(t.pool, 4096, 1);
  EXPECT_EQ(t.pool.drain_idle_caches(1200, 100), 0);  // a call since: quiet again from now
  EXPECT_EQ(t.pool.drain_idle_caches(1300, 100), 1);
  // Back in the pool: the segment is wholly free again.
  EXPECT_EQ(t.pool.releasable_hint(), t.pool.stats().held);
  EXPECT_EQ(t.pool.stats().in_use, 0u);
  expect_consistent(t.pool, t.backend);
}

// Peak in use: exact while one thread alone allocates (no caches); with caches the pool notes
// peaks at its own operations, so it may miss at most what a cache's bins held.
void check_peak(bool caches) {
  SimPool t(policy_with(kImmediate));
  if (caches) start_caches(t.pool);
  std::mt19937 rng(7);
  std::vector<std::pair<void*, std::size_t>> live;
  std::uint64_t in_use = 0, peak = 0;
  for (int i = 0; i < 5000; ++i) {
    if (!live.empty() && (rng() % 2 == 0 || live.size() > 300)) {
      std::size_t k = rng() % live.size();
      ASSERT_EQ(t.free(live[k].first), Status::kOk);
      in_use -= live[k].second;
      live[k] = live.back();
      live.pop_back();
    } else {
      std::size_t size = 512 * (1 + rng() % 16);
      live.emplace_back(t.alloc(size), size);
      in_use += size;
      peak = std::max(peak, in_use);
    }
  }
  PoolStats s = t.pool.stats();
  EXPECT_EQ(s.in_use, in_use);
  if (!caches) {
    EXPECT_EQ(s.peak_in_use, peak);
  } else {
    EXPECT_LE(s.peak_in_use, peak);
    EXPECT_GE(s.peak_in_use + DevicePool::kCacheBytes, peak);
  }
}

TEST(ThreadCache, PeakInUseIsExactForOneThreadAlone) {
  check_peak(false);
}
TEST(ThreadCache, PeakInUseWithCachesMissesAtMostABinsWorth) {
  check_peak(true);
}

// Eight threads allocate, write and free while another thread trims, reads the stats and fences.
// Every block stays whole (no two live blocks overlap) and the counters balance at the end.
TEST(ThreadCache, TrimsAndFencesRacingWithHitsOnEightThreads) {
  for (ReuseMode mode : {kFence, kImmediate}) {
    SimPool t(policy_with(mode));
    start_caches(t.pool);
    std::atomic<bool> stop{false};
    std::mutex owners_mutex;
    std::map<std::uintptr_t, std::size_t> owned;  // live blocks of all threads
    auto claim = [&](void* p, std::size_t size) {
      std::lock_guard lock(owners_mutex);
      auto next = owned.lower_bound(addr_of(p));
      bool overlaps =
          (next != owned.end() && next->first < addr_of(p) + size) ||
          (next != owned.begin() && std::prev(next)->first + std::prev(next)->second > addr_of(p));
      EXPECT_FALSE(overlaps) << "two live blocks overlap at " << p;
      owned[addr_of(p)] = size;
    };
    auto unclaim = [&](void* p) {
      std::lock_guard lock(owners_mutex);
      owned.erase(addr_of(p));
    };
    std::vector<std::thread> workers;
    for (int w = 0; w < 8; ++w) {
      workers.emplace_back([&, w] {
        std::mt19937 rng(w);
        std::vector<std::pair<void*, std::size_t>> live;
        for (int i = 0; i < 4000; ++i) {
          if (!live.empty() && (rng() % 2 == 0 || live.size() > 64)) {
            std::size_t k = rng() % live.size();
            unclaim(live[k].first);
            ASSERT_EQ(free_block(t.pool, live[k].first), Status::kOk);
            live[k] = live.back();
            live.pop_back();
          } else {
            std::size_t size = 512 * (1 + rng() % 64);
            void* p = alloc_or_fail(t.pool, size);
            ASSERT_NE(p, nullptr);
            claim(p, size);
            live.emplace_back(p, size);
          }
        }
        for (auto& [p, size] : live) {
          unclaim(p);
          ASSERT_EQ(free_block(t.pool, p), Status::kOk);
        }
      });
    }
    std::thread trimmer([&] {
      while (!stop.load()) {
        t.pool.release_idle(0, ReleaseReason::kTrim);
        PoolStats s = t.pool.stats();
        EXPECT_GE(s.held, s.in_use + s.pending);
        t.pool.fence();
        t.pool.drain_idle_caches(0, 0);
      }
    });
    for (std::thread& w : workers)
      w.join();
    stop = true;
    trimmer.join();
    PoolStats s = t.pool.stats();
    EXPECT_EQ(s.in_use, 0u);
    EXPECT_EQ(s.app_mallocs, s.app_frees);
    t.pool.release_idle(0, ReleaseReason::kTrim);
    EXPECT_EQ(t.pool.stats().held, 0u);
    expect_consistent(t.pool, t.backend);
  }
}

// A device reset forgets what every cache holds; the threads go on with fresh blocks.
TEST(ThreadCache, ResetForgetsTheCachesOfEveryThread) {
  SimPool t(policy_with(kImmediate));
  start_caches(t.pool);
  std::latch filled(1), reset(1);
  std::thread worker([&] {
    churn(t.pool, 4096, 100);
    void* live = alloc_or_fail(t.pool, 4096);
    filled.count_down();
    reset.wait();
    EXPECT_EQ(free_block(t.pool, live), Status::kNotOwned);  // gone with the reset
    churn(t.pool, 4096, 100);
  });
  filled.wait();
  t.pool.drop_all();
  EXPECT_EQ(t.pool.stats().in_use, 0u);
  reset.count_down();
  worker.join();
  EXPECT_EQ(t.pool.stats().in_use, 0u);
}

}  // namespace
}  // namespace cudapool::test
