#include "allocator/releaser.h"

#include <algorithm>
#include <chrono>
#include <thread>
#include <vector>

#include "allocator/release_policy.h"

namespace cudapool {

std::uint64_t Releaser::now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}

void Releaser::add_pool(DevicePool* pool) {
  std::lock_guard lock(mutex_);
  pools_.push_back(Tracked{pool, pool->activity(), now_ms()});
}

void Releaser::start() {
  std::lock_guard lock(mutex_);
  if (started_) return;
  started_ = true;
  std::thread([this] { run(); }).detach();
}

void Releaser::notify() {
  std::lock_guard lock(mutex_);
  woken_ = true;
  cv_.notify_one();
}

void Releaser::run() {
  std::unique_lock lock(mutex_);
  while (!stopping_.load(std::memory_order_acquire)) {
    cv_.wait_for(lock, std::chrono::milliseconds(kTickMs), [this] { return woken_; });
    woken_ = false;
    lock.unlock();
    wake_pending_.store(false, std::memory_order_release);
    tick(now_ms());
    lock.lock();
  }
}

void Releaser::tick(std::uint64_t now) {
  std::vector<Tracked*> pools;
  {
    std::lock_guard lock(mutex_);
    for (Tracked& t : pools_)
      pools.push_back(&t);  // elements are never removed
  }
  for (Tracked* t : pools) {
    if (stopping_.load(std::memory_order_acquire)) return;
    DevicePool& pool = *t->pool;
    if (pool.capture_active()) continue;  // retried once the capture ends
    std::uint64_t activity = pool.activity();
    if (activity != t->last_activity) {
      t->last_activity = activity;
      t->last_activity_ms = now;
      t->idle_release_done = false;
    }
    Policy policy = pool.policy();
    PoolStats stats = pool.stats();
    PolicyInput in{stats.held, stats.in_use, now, t->last_activity_ms};
    if (policy.min_device_free != 0) {
      std::uint64_t free = 0, total = 0;
      in.device_free_known = pool.device_memory(&free, &total) == Status::kOk;
      in.device_free = free;
    }
    ReleaseDecision d = decide_release(policy, in);
    std::uint64_t idle = stats.idle();
    if (idle <= policy.high_watermark) {
      t->watermark_floor = 0;
      pool.set_wake_threshold(policy.high_watermark);
    }
    if (!d.release) continue;
    if (d.reason == ReleaseReason::kWatermark && idle <= t->watermark_floor) {
      // The watermark already did what it could with this much idle memory. The idle timer
      // still gets its one attempt per quiet period: the layout may have changed since.
      if (!idle_timer_expired(policy, in)) continue;
      d.reason = ReleaseReason::kIdleTimer;
    }
    if (d.reason == ReleaseReason::kIdleTimer && t->idle_release_done) continue;
    if (pool.releasable_hint() != 0) pool.release_idle(d.keep_idle, d.reason);
    if (d.reason == ReleaseReason::kIdleTimer) t->idle_release_done = true;
    std::uint64_t left = pool.stats().idle();
    if (left > d.keep_idle && left > policy.high_watermark) {
      t->watermark_floor = left;
      pool.set_wake_threshold(left + kSmallSegment);
    }
  }
}

}  // namespace cudapool
