// Releaser: the background thread that applies the release policy to every device's pool.
//
// It wakes every tick (100 ms) and whenever a free pushes a pool's idle bytes over its wake
// threshold (wake() is the only part the hot path touches: one atomic exchange in the common
// case). Each pass feeds decide_release() and calls DevicePool::release_idle(), which fences
// and returns memory without holding the pool's hot-path lock across driver calls.
//
// Hysteresis beyond the watermarks: when a release cannot get idle down to its target (the idle
// bytes sit in partly used segments), the pool's wake threshold is raised to what is left plus
// one segment, and the same rule is not retried until idle grows past it. The idle timer fires
// once per quiet period.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>

#include "allocator/device_pool.h"

namespace cudapool {

class Releaser {
 public:
  static constexpr std::uint64_t kTickMs = 100;

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
    std::uint64_t watermark_floor = 0;  // idle left by the last watermark release
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
};

}  // namespace cudapool
