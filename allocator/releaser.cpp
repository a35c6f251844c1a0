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
  std::uint64_t now = now_ms();
  Tracked t{pool, pool->activity(), now};
  PoolStats stats = pool->stats();
  t.last_frees = stats.app_frees;
  t.last_mallocs = stats.app_mallocs;
  t.last_free_ms = now;
  pools_.push_back(t);
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

namespace {

// The watermark holds back (releaser.h): the last release fell short and nothing new has become
// releasable since.
bool nothing_new_to_release(std::uint64_t idle, std::uint64_t hint, std::uint64_t floor_idle,
                            std::uint64_t floor_hint) {
  return idle <= floor_idle && hint < floor_hint + kSmallSegment;
}

}  // namespace

void Releaser::tick(std::uint64_t now) {
  std::vector<Tracked*> pools;
  {
    std::lock_guard lock(mutex_);
    for (Tracked& t : pools_)
      pools.push_back(&t);  // elements are never removed
  }
  FrameworkCache* framework = framework_.load(std::memory_order_acquire);
  if (framework != nullptr) framework->tick(now);
  for (Tracked* t : pools) {
    if (stopping_.load(std::memory_order_acquire)) return;
    DevicePool& pool = *t->pool;
    if (pool.capture_active()) continue;   // retried once the capture ends
    pool.drain_idle_caches(now, kTickMs);  // a thread that stopped allocating strands nothing
    FrameworkUsage fw;
    if (framework != nullptr) fw = framework->usage(pool.device());
    std::uint64_t activity = pool.activity();
    if (activity != t->last_activity || (fw.known && fw.activity != t->framework_activity)) {
      t->last_activity = activity;
      t->framework_activity = fw.activity;
      t->last_activity_ms = now;
      t->idle_release_done = false;
    }
    Policy policy = pool.policy();
    PoolStats stats = pool.stats();
    bool freed = stats.app_frees != t->last_frees;
    // An allocation since the last pass ends the burst: the application is using memory again.
    if (stats.app_mallocs != t->last_mallocs) t->armed = false;
    t->last_mallocs = stats.app_mallocs;
    // The framework's cached bytes are in use to the pool and idle to the rules.
    std::uint64_t cached = std::min(fw.cached(), stats.in_use);
    std::uint64_t idle = stats.idle() + cached;
    if (idle > policy.high_watermark) t->armed = true;
    PolicyInput in{stats.held, stats.in_use - cached, now, t->last_activity_ms};
    in.watermark_armed = t->armed;
    if (policy.min_device_free != 0) {
      std::uint64_t free = 0, total = 0;
      in.device_free_known = pool.device_memory(&free, &total) == Status::kOk;
      in.device_free = free;
    }
    ReleaseDecision d = decide_release(policy, in);
    std::uint64_t trigger = t->armed ? policy.low_watermark : policy.high_watermark;
    if (idle <= trigger) t->held_back = false;
    bool attempt = d.release;
    if (attempt && d.reason == ReleaseReason::kWatermark && t->held_back &&
        nothing_new_to_release(idle, pool.releasable_hint(), t->floor_idle, t->floor_hint)) {
      // The watermark already did what it could with this much idle memory. The idle timer
      // still gets its one attempt per quiet period: the layout may have changed since.
      if (idle_timer_expired(policy, in)) {
        d.reason = ReleaseReason::kIdleTimer;
      } else {
        attempt = false;
      }
    }
    if (attempt && d.reason == ReleaseReason::kIdleTimer && t->idle_release_done) attempt = false;
    PoolStats after = stats;
    if (attempt) {
      // A cache the retry interval keeps from being asked now is asked by a later pass: this pass
      // then leaves the hold-back as it was.
      bool framework_waits = false;
      if (cached != 0) {
        framework_waits =
            t->framework_release_ms != 0 && now < t->framework_release_ms + kFrameworkRetryMs;
        if (!framework_waits) {
          t->framework_release_ms = now;
          fw = framework->release(pool.device());  // its blocks come back as frees
          cached = fw.cached();
        }
      }
      std::uint64_t released = 0;
      std::uint64_t keep = d.keep_idle > cached ? d.keep_idle - cached : 0;
      if (pool.releasable_hint() != 0) released = pool.release_idle(keep, d.reason);
      if (d.reason == ReleaseReason::kIdleTimer) t->idle_release_done = true;
      after = pool.stats();
      cached = std::min(cached, after.in_use);
      std::uint64_t left = after.idle() + cached;
      if (left > d.keep_idle && left > trigger && !framework_waits) {
        // Short of the target. Frees that arrived during the release count above the floor.
        t->held_back = true;
        t->floor_idle = std::min(left, idle - std::min(idle, released));
        t->floor_hint = pool.releasable_hint();
      }
    } else if (t->armed) {
      after = pool.stats();  // the frees of this pass's interval, up to its end
    }
    freed = freed || after.app_frees != t->last_frees;
    if (freed) {
      t->last_frees = after.app_frees;
      t->last_free_ms = now;
    }
    if (t->armed && !freed && now >= t->last_free_ms + kTickMs) {
      std::uint64_t left = after.idle() + cached;
      std::uint64_t hint = pool.releasable_hint();
      if (left <= policy.low_watermark || hint == 0 ||
          (t->held_back && nothing_new_to_release(left, hint, t->floor_idle, t->floor_hint))) {
        t->armed = false;
        trigger = policy.high_watermark;
        if (left <= trigger) t->held_back = false;
      }
    }
    std::uint64_t threshold = trigger;
    if (t->held_back) threshold = std::max(threshold, t->floor_idle + kSmallSegment);
    pool.set_wake_threshold(threshold);
  }
}

}  // namespace cudapool
