// Releaser: the background thread that applies the release policy to every device's pool.
//
// It wakes every tick (100 ms) and whenever a free pushes a pool's idle bytes over its wake
// threshold (wake() is the only part the hot path touches: one atomic exchange in the common
// case). Each pass feeds decide_release() and calls DevicePool::release_idle(), which fences
// and returns memory without holding the pool's hot-path lock across driver calls.
//
// The watermark rule, per pool, so that a burst of frees (no allocation among them) ends at the
// low watermark however its frees interleave with the passes:
//   - A pass that finds idle > high arms the pool. While armed, the trigger is the low watermark:
//     every pass (tick or wake) that finds idle > low releases down to low, and the pool's wake
//     threshold is low, so each free that leaves idle above low wakes the thread.
//   - The pool disarms at the start of a pass that sees an allocation since the previous pass
//     (PoolStats::app_mallocs: the application uses memory again, so steady churn keeps the
//     hysteresis between the marks), or at the end of a pass that saw no free since the previous
//     pass (PoolStats::app_frees, read at the pass's start and at its end) when no pass has seen
//     a free for at least kTickMs (so a pass woken by another pool's free does not end a burst)
//     and idle is at most low or nothing new is left to release (below). Disarmed, the trigger
//     and the wake threshold are the high watermark again: a later idle amount up to high stays.
// Hold-back: when a release falls short of its target while idle is still above the trigger (the
// idle bytes sit in partly used segments, or the driver refused), the pool records floor_idle,
// the idle that release left of what the pass saw (min(idle after, idle before - released)), and
// floor_hint, releasable_hint() after it. The watermark is not retried while idle <= floor_idle
// and releasable_hint() < floor_hint + kSmallSegment (no new wholly free segment, less than a
// segment's worth of new pending blocks), and the wake threshold is at least floor_idle plus one
// segment. Frees that arrive during a release raise idle above floor_idle and a segment that
// becomes wholly free raises the hint by a segment: either is retried on the next pass, so the
// hold-back never strands releasable memory. It ends when idle falls to the trigger.
// The idle timer fires once per quiet period (also while the watermark holds back); device
// pressure is checked on every pass. Each pass first drains the thread caches (device_pool.h)
// that no call touched for kTickMs: what a thread keeps waits at most about two ticks.
// A framework's cache (set_framework, framework_cache.h): its cached-but-unallocated bytes count
// as idle (and not in use) in every rule, and a change of its activity counter as activity. When a
// rule fires while the framework caches something, the pass first asks the framework to empty its
// cache (at most once per kFrameworkRetryMs per pool: a cache that cannot shrink is not asked on
// every pass), then releases the pool's own idle memory down to the rule's target less what the
// framework still caches.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>

#include "allocator/device_pool.h"
#include "allocator/framework_cache.h"

namespace cudapool {

class Releaser {
 public:
  static constexpr std::uint64_t kTickMs = 100;
  static constexpr std::uint64_t kFrameworkRetryMs = 1000;

  Releaser() = default;
  Releaser(const Releaser&) = delete;
  Releaser& operator=(const Releaser&) = delete;

  void add_pool(DevicePool* pool);
  // Starts the thread (detached: it must never delay process exit). Idempotent.
  void start();
  // Asks for a pass soon. Safe from any thread.
  void wake() {
    if (!wake_pending_.exchange(true, std::memory_order_acq_rel)) notify();
  }
  // The cache of a framework above the pools, or null (the default). Set before start().
  void set_framework(FrameworkCache* framework) {
    framework_.store(framework, std::memory_order_release);
  }
  // Stops acting (process exit): no release starts after this returns.
  void stop() { stopping_.store(true, std::memory_order_release); }

  // One pass over all pools at time `now_ms`. The thread calls it; tests call it directly.
  void tick(std::uint64_t now_ms);

  static std::uint64_t now_ms();

 private:
  struct Tracked {
    DevicePool* pool;
    std::uint64_t last_activity = 0;
    std::uint64_t last_activity_ms = 0;
    bool idle_release_done = false;
    std::uint64_t last_frees = 0;    // PoolStats::app_frees at the end of the last pass
    std::uint64_t last_mallocs = 0;  // PoolStats::app_mallocs at the start of the last pass
    std::uint64_t last_free_ms = 0;  // time of the last pass that saw a free
    bool armed = false;              // a watermark release is under way: its target is low
    bool held_back = false;          // the last release fell short: floor_idle, floor_hint apply
    std::uint64_t floor_idle = 0;
    std::uint64_t floor_hint = 0;
    std::uint64_t framework_activity = 0;    // FrameworkUsage::activity at the last pass
    std::uint64_t framework_release_ms = 0;  // time of the last framework release (0: none yet)
  };

  void notify();
  void run();

  std::mutex mutex_;  // guards pools_ and the wake flag for the condition variable
  std::condition_variable cv_;
  std::deque<Tracked> pools_;  // a deque: add_pool() never moves the entries a tick works on
  bool woken_ = false;
  bool started_ = false;
  std::atomic<bool> wake_pending_{false};
  std::atomic<bool> stopping_{false};
  std::atomic<FrameworkCache*> framework_{nullptr};
};

}  // namespace cudapool
