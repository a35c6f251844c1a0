// A DevicePool with its backend and gate, plus the helpers the pool and releaser tests share.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <map>

#include "allocator/device_pool.h"
#include "allocator/simulated_backend.h"

namespace cudapool::test {

inline std::uintptr_t addr_of(void* p) {
  return reinterpret_cast<std::uintptr_t>(p);
}
inline void* ptr_at(std::uintptr_t a) {
  return reinterpret_cast<void*>(a);
}

inline Policy policy_with(ReuseMode reuse) {
  Policy p;
  p.reuse = reuse;
  return p;
}

// Allocates or records a test failure; returns nullptr on failure.
inline void* alloc_or_fail(DevicePool& pool, std::size_t size) {
  void* p = nullptr;
  Status st = pool.allocate(size, &p);
  EXPECT_EQ(st, Status::kOk) << "allocate(" << size << ")";
  return st == Status::kOk ? p : nullptr;
}

inline Status free_block(DevicePool& pool, void* p) {
  bool wake = false;
  return pool.free(p, &wake);
}

// A pool over a SimulatedBackend (members in construction order).
struct SimPool {
  explicit SimPool(const Policy& policy = Policy{}, std::uint64_t capacity = 16 * kGiB,
                   PoolObserver* observer = nullptr)
      : backend(capacity), pool(0, backend, gate, policy, observer) {}

  void* alloc(std::size_t size) { return alloc_or_fail(pool, size); }
  Status free(void* p) { return free_block(pool, p); }

  SimulatedBackend backend;
  SyncGate gate;
  DevicePool pool;
};

// The pool's counters agree with each other and with the simulated driver.
inline void expect_consistent(const DevicePool& pool, const SimulatedBackend& backend) {
  PoolStats s = pool.stats();
  SimulatedBackend::Counters c = backend.counters();
  EXPECT_EQ(s.held, c.held);
  EXPECT_EQ(s.driver_mallocs, c.allocations);
  EXPECT_EQ(s.driver_frees, c.releases);
  EXPECT_EQ(s.segments, s.driver_mallocs - s.driver_frees);
  EXPECT_EQ(s.live_blocks, s.app_mallocs - s.app_frees);
  EXPECT_GE(s.held, s.in_use + s.pending);
  EXPECT_GE(s.peak_held, s.held);
  EXPECT_GE(s.peak_in_use, s.in_use);
}

// Live blocks as address intervals; fails the test on an overlap or a misaligned pointer.
class IntervalSet {
 public:
  void add(void* p, std::size_t size) {
    std::uintptr_t a = addr_of(p);
    EXPECT_EQ(a % 512, 0u) << "misaligned pointer " << p;
    auto next = live_.lower_bound(a);
    if (next != live_.end()) {
      EXPECT_LE(a + size, next->first) << p << " overlaps the block at " << ptr_at(next->first);
    }
    if (next != live_.begin()) {
      auto prev = std::prev(next);
      EXPECT_LE(prev->first + prev->second, a)
          << p << " overlaps the block at " << ptr_at(prev->first);
    }
    live_[a] = size;
  }
  void remove(void* p) { live_.erase(addr_of(p)); }
  std::size_t size() const { return live_.size(); }

 private:
  std::map<std::uintptr_t, std::size_t> live_;
};

}  // namespace cudapool::test
