#include "tools/bench/sim_replay.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <limits>
#include <memory>

#include "allocator/device_pool.h"
#include "allocator/releaser.h"
#include "allocator/simulated_backend.h"
#include "allocator/sync_gate.h"

namespace cudapool::bench {

const char* to_string(SimMode mode) {
  switch (mode) {
    case SimMode::kPool:
      return "cudapool";
    case SimMode::kPoolSegments:
      return "cudapool, segments";
    case SimMode::kCache:
      return "pool, no release";
    case SimMode::kPassThrough:
      return "pass-through";
  }
  return "?";
}

namespace {

constexpr std::uint64_t kCapacity = std::uint64_t{1} << 40;  // the simulated device: 1 TiB
constexpr std::size_t kPageSize = 2 * kMiB;  // with VMM, as the pool runs by default on GPUs
constexpr std::uint64_t kTickUs = Releaser::kTickMs * 1000;
constexpr std::size_t kTimelineBuckets = 1500;

class RecordingObserver final : public PoolObserver {
 public:
  explicit RecordingObserver(const std::uint64_t* now_us, SimResult* out, bool record)
      : now_us_(now_us), out_(out), record_(record) {}
  void on_release(int, ReleaseReason reason, std::uint64_t bytes, std::uint64_t) override {
    if (record_)
      out_->releases.push_back({static_cast<double>(*now_us_) / 1e6, to_string(reason), bytes});
  }
  void on_driver_error(int, const char*, Status) override {}

 private:
  const std::uint64_t* now_us_;
  SimResult* out_;
  bool record_;
};

// Keeps the highest held and in-use bytes per time bucket.
class Sampler {
 public:
  Sampler(std::uint64_t end_us, std::vector<SimResult::Sample>* out)
      : width_(std::max<std::uint64_t>(1, end_us / kTimelineBuckets)), out_(out) {}
  void add(std::uint64_t t_us, std::uint64_t held, std::uint64_t in_use) {
    std::uint64_t bucket = t_us / width_;
    if (!open_ || bucket != bucket_) {
      flush();
      open_ = true;
      bucket_ = bucket;
      held_ = held;
      in_use_ = in_use;
      t_ = t_us;
      return;
    }
    held_ = std::max(held_, held);
    in_use_ = std::max(in_use_, in_use);
  }
  void flush() {
    if (open_) out_->push_back({static_cast<double>(t_) / 1e6, held_, in_use_});
    open_ = false;
  }

 private:
  std::uint64_t width_;
  std::vector<SimResult::Sample>* out_;
  bool open_ = false;
  std::uint64_t bucket_ = 0, t_ = 0, held_ = 0, in_use_ = 0;
};

SimResult run(const Trace& trace, SimMode mode, const Policy& policy_in, bool instrument) {
  SimResult r;
  r.mode = mode;
  Policy policy = policy_in;
  if (mode == SimMode::kPoolSegments) policy.vmm = VmmMode::kOff;
  if (mode == SimMode::kCache) {
    policy.high_watermark = std::numeric_limits<std::uint64_t>::max() / 2;
    policy.low_watermark = policy.high_watermark;
    policy.idle_release_ms = 0;
    policy.min_device_free = 0;
  }
  SimulatedBackend backend(kCapacity, kPageSize);
  SyncGate gate;
  Releaser releaser;  // never started: tick() is called below, in trace time
  std::uint64_t now_us = 0;
  RecordingObserver observer(&now_us, &r, instrument);
  std::deque<DevicePool> pools;
  if (mode != SimMode::kPassThrough) {
    for (int d = 0; d < trace.devices; ++d) {
      pools.emplace_back(d, backend, gate, policy, &observer);
      releaser.add_pool(&pools.back());
    }
  }
  // Trace time 0 is now on the steady clock (Releaser::add_pool stamps the pools with it).
  const std::uint64_t base_ms = Releaser::now_ms();
  std::vector<void*> ptrs(trace.ids, nullptr);
  std::vector<std::uint64_t> sizes(instrument ? trace.ids : 0, 0);
  std::uint64_t requested = 0;
  Sampler sampler(trace.end_us, &r.timeline);

  auto totals = [&](std::uint64_t* held, std::uint64_t* in_use) {
    *held = 0;
    *in_use = 0;
    if (mode == SimMode::kPassThrough) {
      *held = backend.counters().held;
      *in_use = *held;
      return;
    }
    for (DevicePool& p : pools) {
      PoolStats s = p.stats();
      *held += s.held;
      *in_use += s.in_use;
    }
  };
  auto sample = [&] {
    std::uint64_t held = 0, in_use = 0;
    totals(&held, &in_use);
    r.peak_held = std::max(r.peak_held, held);
    r.peak_in_use = std::max(r.peak_in_use, in_use);
    sampler.add(now_us, held, in_use);
  };

  std::uint64_t next_tick_us = kTickUs;
  auto tick_until = [&](std::uint64_t t_us) {
    while (next_tick_us <= t_us) {
      now_us = next_tick_us;
      if (mode != SimMode::kPassThrough) releaser.tick(base_ms + now_us / 1000);
      if (instrument) sample();
      next_tick_us += kTickUs;
    }
    now_us = t_us;
  };

  auto start = std::chrono::steady_clock::now();
  for (const TraceEvent& e : trace.events) {
    tick_until(e.time_us);
    switch (e.action) {
      case Action::kAlloc: {
        void* p = nullptr;
        Status st = mode == SimMode::kPassThrough ? backend.allocate(e.device, e.size, &p)
                                                  : pools[e.device].allocate(e.size, &p);
        if (st != Status::kOk) {
          ++r.failures;
          p = nullptr;
        }
        ptrs[e.id] = p;
        ++r.app_calls;
        if (instrument && p != nullptr) {
          sizes[e.id] = e.size;
          requested += e.size;
          r.peak_requested = std::max(r.peak_requested, requested);
        }
        break;
      }
      case Action::kFree: {
        void* p = ptrs[e.id];
        ++r.app_calls;
        if (p == nullptr) break;
        if (mode == SimMode::kPassThrough) {
          backend.release(e.device, p);
        } else {
          bool wake = false;
          pools[e.device].free(p, &wake);
          if (wake) releaser.tick(base_ms + now_us / 1000);
        }
        if (instrument) requested -= sizes[e.id];
        break;
      }
      case Action::kMark:
        if (instrument) {
          HeldAt h;
          h.label = trace.labels[e.label];
          totals(&h.held, &h.in_use);
          SimulatedBackend::Counters c = backend.counters();
          h.driver_calls = c.allocations + c.releases + c.page_creates + c.page_releases;
          h.app_calls = r.app_calls;
          r.at_marks.push_back(h);
        }
        break;
    }
    if (instrument) sample();
  }
  tick_until(trace.end_us);
  auto end = std::chrono::steady_clock::now();
  r.replay_ms = std::chrono::duration<double, std::milli>(end - start).count();

  std::uint64_t in_use = 0;
  totals(&r.held_end, &in_use);
  if (mode == SimMode::kPassThrough) {
    r.held_after_trim = r.held_end;
  } else {
    for (DevicePool& p : pools)
      p.release_idle(0, ReleaseReason::kTrim);
    totals(&r.held_after_trim, &in_use);
  }
  if (instrument) {
    now_us = trace.end_us;
    sample();
    sampler.flush();
  }
  SimulatedBackend::Counters c = backend.counters();
  r.driver_mallocs = c.allocations + c.page_creates;
  r.driver_frees = c.releases + c.page_releases;
  r.page_maps = c.maps;
  r.page_unmaps = c.unmaps;
  r.fences = c.syncs;
  if (mode != SimMode::kPassThrough) {
    // Peaks as the pool counts them (exact, not sampled).
    std::uint64_t peak_held = 0, peak_in_use = 0;
    for (DevicePool& p : pools) {
      PoolStats s = p.stats();
      peak_held += s.peak_held;
      peak_in_use += s.peak_in_use;
    }
    r.peak_held = std::max(r.peak_held, peak_held);
    r.peak_in_use = std::max(r.peak_in_use, peak_in_use);
  }
  return r;
}

}  // namespace

void SimResult::calls_between(const std::string& from, const std::string& to, std::uint64_t* driver,
                              std::uint64_t* app) const {
  const HeldAt* a = nullptr;
  const HeldAt* b = nullptr;
  for (const HeldAt& h : at_marks) {
    if (h.label == from) a = &h;
    if (h.label == to) b = &h;
  }
  *driver = a != nullptr && b != nullptr ? b->driver_calls - a->driver_calls : 0;
  *app = a != nullptr && b != nullptr ? b->app_calls - a->app_calls : 0;
}

SimResult replay_simulated(const Trace& trace, SimMode mode, const Policy& policy, bool timeline) {
  SimResult timed = run(trace, mode, policy, false);
  SimResult full = run(trace, mode, policy, true);
  full.replay_ms = timed.replay_ms;
  if (!timeline) {
    full.timeline.clear();
    full.releases.clear();
  }
  return full;
}

}  // namespace cudapool::bench
