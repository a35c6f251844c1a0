// DevicePool on pages (docs/pages.md), over SimulatedBackend with a 2 MiB page: held follows in
// use, idle pages move to where a request needs them, the release rules return idle pages of
// partly used ranges, every unmap follows a fence, counters add up, and each driver call can
// fail without losing anything.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "allocator/device_pool.h"
#include "allocator/simulated_backend.h"
#include "pool_harness.h"

namespace cudapool {
namespace {

using test::addr_of;
using test::IntervalSet;
using Call = SimulatedBackend::PageCall;

constexpr std::size_t kPage = 2 * kMiB;

Policy page_policy(ReuseMode reuse = ReuseMode::kFence) {
  Policy p;
  p.reuse = reuse;
  p.high_watermark = 64 * kGiB;  // no release unless a test asks for one
  p.low_watermark = 64 * kGiB;
  return p;
}

struct PagePool {
  explicit PagePool(const Policy& policy = page_policy(), std::uint64_t capacity = 16 * kGiB)
      : backend(capacity, kPage), pool(0, backend, gate, policy) {}

  void* alloc(std::size_t size) {
    void* p = nullptr;
    EXPECT_EQ(pool.allocate(size, &p), Status::kOk) << "allocate(" << size << ")";
    return p;
  }
  Status free(void* p) {
    bool wake = false;
    return pool.free(p, &wake);
  }

  SimulatedBackend backend;
  SyncGate gate;
  DevicePool pool;
};

// The pool's page counts agree with each other and with the simulated driver, which saw no
// call that breaks a rule of the VMM API.
void expect_pages_consistent(const PagePool& t) {
  PoolStats s = t.pool.stats();
  SimulatedBackend::Counters c = t.backend.counters();
  EXPECT_EQ(s.page_size, kPage);
  EXPECT_EQ(s.held, s.pages * kPage);
  EXPECT_EQ(s.held, c.held);
  EXPECT_EQ(s.pages, c.pages);
  EXPECT_EQ(s.page_creates, c.page_creates);
  EXPECT_EQ(s.page_releases, c.page_releases);
  EXPECT_EQ(s.page_maps, c.maps);
  EXPECT_EQ(s.page_unmaps, c.unmaps);
  EXPECT_EQ(s.pages - s.pages_unmapped, c.pages_mapped);
  EXPECT_EQ(s.reservations, c.reserves);
  EXPECT_EQ(s.driver_mallocs, 0u) << "no segment may be allocated on pages";
  EXPECT_EQ(c.misuses, 0u) << "a VMM call broke the API's rules";
  EXPECT_EQ(c.early_unmaps, 0u) << "a page was unmapped while queued work still used it";
  EXPECT_GE(s.held, s.in_use + s.pending);
  EXPECT_LE(s.pages_mapped_idle + s.pages_unmapped, s.pages);
}

// Every page a block touches is mapped and accessible, and no page backs two live blocks.
void expect_backed(const PagePool& t, const std::map<void*, std::size_t>& live) {
  std::map<PageHandle, std::uintptr_t> owner;
  for (const auto& [p, size] : live) {
    std::uintptr_t lo = addr_of(p) / kPage * kPage;
    std::uintptr_t hi = (addr_of(p) + size + kPage - 1) / kPage * kPage;
    for (std::uintptr_t a = lo; a < hi; a += kPage) {
      bool accessible = false;
      PageHandle h = t.backend.mapped_at(a, &accessible);
      ASSERT_NE(h, 0u) << "block " << p << " touches an unmapped page";
      EXPECT_TRUE(accessible) << "block " << p << " touches a page without access";
      auto [it, inserted] = owner.emplace(h, a);
      EXPECT_TRUE(inserted || it->second == a) << "page " << h << " mapped at two addresses";
    }
  }
}

TEST(PagePool, SmallBlocksShareAPageOfARange) {
  PagePool t;
  ASSERT_TRUE(t.pool.uses_pages());
  void* a = t.alloc(1000);
  void* b = t.alloc(3000);
  EXPECT_EQ(addr_of(b), addr_of(a) + 1024);
  PoolStats s = t.pool.stats();
  EXPECT_EQ(s.pages, 1u);
  EXPECT_EQ(s.held, kPage);
  EXPECT_EQ(s.page_creates, 1u);
  EXPECT_EQ(s.page_maps, 1u);
  EXPECT_EQ(s.reservations, 1u);
  EXPECT_EQ(t.backend.counters().set_access_calls, 1u);
  expect_pages_consistent(t);
}

TEST(PagePool, AMissStartsInTheFreeMemoryBeforeTheNewPages) {
  PagePool t;
  void* a = t.alloc(3 * kMiB);  // 2 pages, 1 MiB of the second free
  void* b = t.alloc(3 * kMiB);  // starts in that free MiB: one new page, not two
  EXPECT_EQ(addr_of(b), addr_of(a) + 3 * kMiB);
  EXPECT_EQ(t.pool.stats().pages, 3u);
  void* c = t.alloc(2 * kMiB);  // the same again: fits the rest exactly
  EXPECT_EQ(addr_of(c), addr_of(b) + 3 * kMiB);
  EXPECT_EQ(t.pool.stats().pages, 4u);
  expect_backed(t, {{a, 3 * kMiB}, {b, 3 * kMiB}, {c, 2 * kMiB}});
  expect_pages_consistent(t);
}

TEST(PagePool, BlocksGetOnlyThePagesTheyNeed) {
  PagePool t;
  void* m = t.alloc(3 * kMiB);   // medium: 2 pages, not a 20 MiB segment
  void* l = t.alloc(11 * kMiB);  // large: rounded to 12 MiB, 6 pages
  ASSERT_NE(m, nullptr);
  ASSERT_NE(l, nullptr);
  PoolStats s = t.pool.stats();
  EXPECT_EQ(s.pages, 2u + 6u);
  EXPECT_EQ(s.held, 16 * kMiB);
  expect_pages_consistent(t);
}

TEST(PagePool, IdlePagesMoveToARequestOfAnotherSize) {
  PagePool t;
  void* a = t.alloc(100 * kMiB);
  void* k = t.alloc(12 * kMiB);  // in use between a and the rest of the range
  ASSERT_EQ(t.free(a), Status::kOk);
  ASSERT_TRUE(t.pool.fence());
  // 120 MiB fits no free run: the 50 idle pages move, only the 10-page shortfall is created.
  void* b = t.alloc(120 * kMiB);
  PoolStats s = t.pool.stats();
  EXPECT_EQ(s.pages, 66u);
  EXPECT_EQ(s.page_creates, 66u);
  EXPECT_EQ(s.page_remaps, 50u);
  EXPECT_EQ(s.page_unmaps, 50u);
  EXPECT_EQ(t.backend.counters().pages_mapped, 66u) << "a moved page kept its old mapping";
  expect_backed(t, {{b, 120 * kMiB}, {k, 12 * kMiB}});
  // A smaller request reuses a free run's front; the rest stays free and movable.
  ASSERT_EQ(t.free(b), Status::kOk);
  ASSERT_TRUE(t.pool.fence());
  void* c = t.alloc(30 * kMiB);
  void* d = t.alloc(90 * kMiB);
  s = t.pool.stats();
  EXPECT_EQ(s.pages, 66u) << "held grew although idle pages covered the requests";
  EXPECT_EQ(s.page_creates, 66u);
  expect_backed(t, {{c, 30 * kMiB}, {d, 90 * kMiB}, {k, 12 * kMiB}});
  expect_pages_consistent(t);
}

TEST(PagePool, MovedPagesShowNoStaleMappingAndNeverBackTwoBlocks) {
  PagePool t;
  std::mt19937_64 rng(7);
  std::map<void*, std::size_t> live;
  IntervalSet intervals;
  const std::size_t sizes[] = {512,      4 * kKiB,  700 * kKiB, 1536 * kKiB, 3 * kMiB,
                               9 * kMiB, 12 * kMiB, 26 * kMiB,  64 * kMiB};
  for (int i = 0; i < 3000; ++i) {
    if (live.size() < 40 && (live.empty() || rng() % 3 != 0)) {
      std::size_t size = sizes[rng() % std::size(sizes)] + rng() % 4096;
      void* p = t.alloc(size);
      ASSERT_NE(p, nullptr);
      intervals.add(p, size);
      live[p] = size;
    } else {
      auto it = std::next(live.begin(), static_cast<long>(rng() % live.size()));
      intervals.remove(it->first);
      ASSERT_EQ(t.free(it->first), Status::kOk);
      live.erase(it);
    }
    if (i % 97 == 0) {
      ASSERT_TRUE(t.pool.fence());
    }
    if (i % 101 == 0) t.pool.release_idle(32 * kMiB, ReleaseReason::kTrim);
    if (i % 50 == 0) {
      expect_backed(t, live);
      expect_pages_consistent(t);
    }
  }
  EXPECT_GT(t.pool.stats().page_remaps, 0u) << "the mix never moved a page: the test is weak";
  expect_backed(t, live);
  expect_pages_consistent(t);
}

TEST(PagePool, ReleaseReturnsIdlePagesOfAPartlyUsedRange) {
  PagePool t;
  void* a = t.alloc(4 * kMiB);
  void* b = t.alloc(8 * kMiB);
  void* c = t.alloc(4 * kMiB);  // a, b, c share one medium range
  ASSERT_EQ(addr_of(c), addr_of(b) + 8 * kMiB);
  ASSERT_EQ(t.free(b), Status::kOk);
  std::uint64_t released = t.pool.release_idle(0, ReleaseReason::kTrim);
  EXPECT_EQ(released, 8 * kMiB) << "the free middle of a used range was not returned";
  PoolStats s = t.pool.stats();
  EXPECT_EQ(s.held, 8 * kMiB);
  EXPECT_EQ(s.page_releases, 4u);
  EXPECT_EQ(s.releases_by_reason[static_cast<int>(ReleaseReason::kTrim)], 1u);
  expect_backed(t, {{a, 4 * kMiB}, {c, 4 * kMiB}});
  // The hole is mapped again for the next request that fits it.
  void* d = t.alloc(6 * kMiB);
  EXPECT_EQ(addr_of(d), addr_of(b));
  expect_backed(t, {{a, 4 * kMiB}, {c, 4 * kMiB}, {d, 6 * kMiB}});
  expect_pages_consistent(t);
}

TEST(PagePool, ReleaseKeepsPagesSharedWithLiveBlocks) {
  PagePool t;
  void* a = t.alloc(1 * kMiB);
  void* b = t.alloc(1 * kMiB);  // same page as a
  ASSERT_EQ(t.free(a), Status::kOk);
  EXPECT_EQ(t.pool.release_idle(0, ReleaseReason::kTrim), 0u);
  EXPECT_EQ(t.pool.stats().pages, 1u);
  expect_backed(t, {{b, 1 * kMiB}});
  ASSERT_EQ(t.free(b), Status::kOk);
  EXPECT_EQ(t.pool.release_idle(0, ReleaseReason::kTrim), kPage);
  EXPECT_EQ(t.pool.stats().held, 0u);
  expect_pages_consistent(t);
}

TEST(PagePool, EveryUnmapFollowsTheFenceOfTheFreesOnItsPages) {
  for (ReuseMode reuse : {ReuseMode::kFence, ReuseMode::kImmediate}) {
    SCOPED_TRACE(reuse == ReuseMode::kFence ? "fence" : "immediate");
    PagePool t(page_policy(reuse));
    void* a = t.alloc(40 * kMiB);
    t.backend.queue_work(addr_of(a), 40 * kMiB);  // a kernel still writes to it
    ASSERT_EQ(t.free(a), Status::kOk);
    void* b = t.alloc(50 * kMiB);  // moves a's pages: only after a fence
    ASSERT_NE(b, nullptr);
    t.backend.queue_work(addr_of(b), 50 * kMiB);
    ASSERT_EQ(t.free(b), Status::kOk);
    t.pool.release_idle(0, ReleaseReason::kTrim);  // unmaps b's pages: only after a fence
    EXPECT_EQ(t.pool.stats().held, 0u);
    expect_pages_consistent(t);  // checks early_unmaps == 0
  }
}

TEST(PagePool, NoPageMovesOrReturnsDuringACapture) {
  PagePool t;
  void* a = t.alloc(40 * kMiB);
  void* k = t.alloc(12 * kMiB);  // keeps the next request from starting in a's free run
  ASSERT_NE(k, nullptr);
  ASSERT_EQ(t.free(a), Status::kOk);
  ASSERT_TRUE(t.pool.fence());
  t.gate.begin_capture();
  EXPECT_EQ(t.pool.release_idle(0, ReleaseReason::kTrim), 0u);
  void* b = t.alloc(50 * kMiB);  // grows with new pages instead of moving a's
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(t.pool.stats().page_unmaps, 0u);
  t.gate.end_capture();
  EXPECT_EQ(t.pool.release_idle(0, ReleaseReason::kTrim), 40 * kMiB);
  expect_pages_consistent(t);
}

TEST(PagePool, TheLimitCountsPagesAndIdlePagesServeBeforeItFails) {
  Policy p = page_policy();
  p.limit = 64 * kMiB;
  PagePool t(p);
  void* a = t.alloc(40 * kMiB);
  ASSERT_EQ(t.free(a), Status::kOk);  // pending, not fenced
  void* b = t.alloc(60 * kMiB);       // 20 new pages would pass the limit: fence, move a's
  ASSERT_NE(b, nullptr);
  EXPECT_LE(t.pool.stats().held, 64 * kMiB);
  void* c = nullptr;
  EXPECT_EQ(t.pool.allocate(8 * kMiB, &c), Status::kOutOfMemory);
  PoolStats s = t.pool.stats();
  EXPECT_GE(s.limit_hits, 1u);
  EXPECT_EQ(s.alloc_failures, 1u);
  EXPECT_LE(s.peak_held, 64 * kMiB);
  expect_pages_consistent(t);
}

TEST(PagePool, OutOfMemoryFencesAndMovesPendingPagesBeforeFailing) {
  PagePool t(page_policy(), 128 * kMiB);
  void* a = t.alloc(100 * kMiB);
  ASSERT_EQ(t.free(a), Status::kOk);  // 100 MiB pending: below the fence threshold for large? no
  void* b = t.alloc(120 * kMiB);      // needs a's pages: the device cannot create 60
  ASSERT_NE(b, nullptr);
  void* c = nullptr;
  EXPECT_EQ(t.pool.allocate(20 * kMiB, &c), Status::kOutOfMemory);
  EXPECT_GE(t.pool.stats().alloc_failures, 1u);
  expect_pages_consistent(t);
}

TEST(PagePool, AFailedCallLosesNothing) {
  const Call calls[] = {Call::kCreate, Call::kMap,     Call::kSetAccess,
                        Call::kUnmap,  Call::kRelease, Call::kReserve};
  for (Call call : calls) {
    SCOPED_TRACE(static_cast<int>(call));
    PagePool t;
    void* keep = t.alloc(6 * kMiB);
    void* a = t.alloc(40 * kMiB);
    ASSERT_EQ(t.free(a), Status::kOk);
    ASSERT_TRUE(t.pool.fence());
    t.backend.fail_next(call, 1);
    void* b = nullptr;
    Status st = t.pool.allocate(50 * kMiB, &b);  // moves pages, creates, maps, maybe reserves
    if (st == Status::kOk) {
      t.free(b);
    }
    void* far = nullptr;
    Status st2 = t.pool.allocate(2 * kGiB, &far);  // a new range
    if (st2 == Status::kOk) {
      t.free(far);
    }
    t.pool.release_idle(0, ReleaseReason::kTrim);
    expect_backed(t, {{keep, 6 * kMiB}});
    expect_pages_consistent(t);
    // Whatever failed, the pool still serves and returns memory.
    t.backend.fail_next(call, 0);
    void* c = t.alloc(30 * kMiB);
    ASSERT_NE(c, nullptr);
    ASSERT_EQ(t.free(c), Status::kOk);
    t.pool.release_idle(0, ReleaseReason::kTrim);
    PoolStats s = t.pool.stats();
    EXPECT_EQ(s.held, 6 * kMiB) << "idle pages were stranded after a failed call";
    expect_pages_consistent(t);
  }
}

TEST(PagePool, ResetReturnsPagesAndRanges) {
  PagePool t;
  t.alloc(3 * kMiB);
  void* a = t.alloc(30 * kMiB);
  t.alloc(1000);
  ASSERT_EQ(t.free(a), Status::kOk);
  t.pool.drop_all();
  SimulatedBackend::Counters c = t.backend.counters();
  EXPECT_EQ(c.pages, 0u);
  EXPECT_EQ(c.pages_mapped, 0u);
  EXPECT_EQ(c.reserves, c.unreserves);
  EXPECT_GE(c.syncs, 1u) << "pages were unmapped without synchronising";
  EXPECT_EQ(c.misuses, 0u);
  EXPECT_EQ(t.pool.stats().held, 0u);
  EXPECT_NE(t.alloc(5 * kMiB), nullptr);  // and the pool starts over
}

TEST(PagePool, RefreshAccessCoversEveryMappedRun) {
  PagePool t;
  t.alloc(1000);
  t.alloc(3 * kMiB);
  t.alloc(20 * kMiB);
  std::uint64_t before = t.backend.counters().set_access_calls;
  ASSERT_EQ(t.pool.refresh_access(), Status::kOk);
  EXPECT_EQ(t.backend.counters().set_access_calls - before, 3u);  // one per range
}

TEST(PagePool, IpcIsRefusedForEveryPooledBlock) {
  PagePool t;
  void* a = t.alloc(64 * kMiB);
  EXPECT_EQ(t.pool.check_ipc_base(a), Status::kInvalidValue);
  int x = 0;
  EXPECT_EQ(t.pool.check_ipc_base(&x), Status::kNotOwned);
}

TEST(PagePool, SegmentsWhenOffOrUnsupported) {
  Policy off = page_policy();
  off.vmm = VmmMode::kOff;
  PagePool t(off);
  EXPECT_FALSE(t.pool.uses_pages());
  t.alloc(1000);
  EXPECT_EQ(t.pool.stats().driver_mallocs, 1u);
  EXPECT_EQ(t.backend.counters().page_creates, 0u);

  SimulatedBackend no_pages(16 * kGiB, 0);
  SyncGate gate;
  DevicePool pool(0, no_pages, gate, page_policy());
  EXPECT_FALSE(pool.uses_pages());
}

TEST(PagePool, ThreadsAllocatingAndTrimmingKeepTheInvariants) {
  PagePool t;
  std::atomic<bool> stop{false};
  std::thread trimmer([&] {
    while (!stop.load())
      t.pool.release_idle(0, ReleaseReason::kTrim);
  });
  std::vector<std::thread> workers;
  for (int w = 0; w < 3; ++w)
    workers.emplace_back([&, w] {
      std::mt19937_64 rng(w);
      std::vector<void*> mine;
      for (int i = 0; i < 2000; ++i) {
        if (mine.size() < 8 && rng() % 2 == 0) {
          void* p = nullptr;
          if (t.pool.allocate((rng() % 24 + 1) * kMiB / 2, &p) == Status::kOk) mine.push_back(p);
        } else if (!mine.empty()) {
          t.free(mine.back());
          mine.pop_back();
        }
      }
      for (void* p : mine)
        t.free(p);
    });
  for (auto& w : workers)
    w.join();
  stop = true;
  trimmer.join();
  t.pool.release_idle(0, ReleaseReason::kTrim);
  EXPECT_EQ(t.pool.stats().in_use, 0u);
  EXPECT_EQ(t.pool.stats().held, 0u);
  expect_pages_consistent(t);
}

}  // namespace
}  // namespace cudapool
