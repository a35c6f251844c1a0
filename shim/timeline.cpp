#include "shim/timeline.h"

#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <cinttypes>

#include "control/log.h"
#include "control/options.h"

namespace cudapool {
namespace {

std::atomic<Timeline*> g_timeline{nullptr};

const char* event_kind(ReleaseReason reason) {
  switch (reason) {
    case ReleaseReason::kWatermark:
      return "watermark_release";
    case ReleaseReason::kIdleTimer:
      return "idle_release";
    case ReleaseReason::kDevicePressure:
      return "pressure_release";
    case ReleaseReason::kLimit:
      return "limit_release";
    case ReleaseReason::kOutOfMemory:
      return "oom_release";
    case ReleaseReason::kTrim:
      return "trim";
  }
  return "release";
}

// A forked child has no writer thread, and the parent's lock may be held: forget it.
void forget_after_fork() {
  g_timeline.store(nullptr, std::memory_order_relaxed);
}

}  // namespace

Timeline* active_timeline() {
  return g_timeline.load(std::memory_order_acquire);
}

void timeline_release(int device, ReleaseReason reason, std::uint64_t bytes,
                      std::uint64_t segments) {
  if (Timeline* t = active_timeline()) t->event(device, event_kind(reason), bytes, segments);
}

Timeline* Timeline::start(const std::string& pattern, std::chrono::milliseconds interval,
                          Sampler sampler) {
  static std::once_flag atfork_once;
  std::call_once(atfork_once, [] { pthread_atfork(nullptr, nullptr, &forget_after_fork); });
  const std::string path = expand_pid(pattern);
  std::FILE* file = std::fopen(path.c_str(), "we");
  if (file == nullptr) {
    log_warn("timeline off: cannot create {} (CUDAPOOL_TIMELINE_FILE)", path);
    return nullptr;
  }
  if (interval.count() <= 0) interval = std::chrono::milliseconds(100);
  auto* t = new Timeline(file, path, interval, std::move(sampler));  // lives until exit
  std::fprintf(file, "%s\n", kTimelineHeader);
  std::fflush(file);
  try {
    t->thread_ = std::thread([t] { t->run(); });
  } catch (...) {
    log_warn("timeline off: cannot start its thread");
    std::fclose(file);
    return nullptr;
  }
  g_timeline.store(t, std::memory_order_release);
  log_info("timeline: writing {} every {} ms", path, interval.count());
  return t;
}

Timeline::Timeline(std::FILE* file, std::string path, std::chrono::milliseconds interval,
                   Sampler sampler)
    : file_(file),
      path_(std::move(path)),
      interval_(interval),
      sampler_(std::move(sampler)),
      start_(std::chrono::steady_clock::now()) {}

double Timeline::now_s() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Timeline::event(int device, const char* kind, std::uint64_t bytes, std::uint64_t count) {
  std::lock_guard lock(mutex_);
  if (events_.size() >= 4096) return;  // a writer that fell behind drops events, never blocks
  events_.push_back({now_s(), device, kind, bytes, count});
}

void Timeline::run() {
  pthread_setname_np(pthread_self(), "cudapool-tline");
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    wake_.wait_for(lock, interval_, [this] { return stopping_; });
    if (stopping_) break;
    lock.unlock();
    write_once();
    lock.lock();
  }
}

void Timeline::write_once() {
  std::lock_guard write_lock(write_mutex_);
  if (file_ == nullptr) return;
  std::vector<TimelineSample> samples;
  try {
    samples = sampler_();
  } catch (...) {
    return;
  }
  const double t = now_s();
  std::vector<Event> events;
  {
    std::lock_guard lock(mutex_);
    events.swap(events_);
  }
  // Counters that moved since the last sample become events too.
  for (const TimelineSample& s : samples) {
    for (const TimelineSample& before : last_) {
      if (before.device != s.device) continue;
      if (s.stats.limit_hits > before.stats.limit_hits)
        events.push_back(
            {t, s.device, "limit_hit", 0, s.stats.limit_hits - before.stats.limit_hits});
      if (s.stats.oom_retries > before.stats.oom_retries)
        events.push_back(
            {t, s.device, "oom_retry", 0, s.stats.oom_retries - before.stats.oom_retries});
    }
  }
  for (const Event& e : events)
    std::fprintf(file_, "%.3f,%d,%s,,,,,%" PRIu64 ",%" PRIu64 ",\n", e.time_s, e.device, e.kind,
                 e.bytes, e.count);
  for (const TimelineSample& s : samples)
    std::fprintf(
        file_, "%.3f,%d,sample,%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",,,%" PRIu64 "\n", t,
        s.device, s.stats.held, s.stats.in_use, s.stats.idle(), s.stats.pending, s.stats.pages);
  std::fflush(file_);
  last_ = std::move(samples);
}

void Timeline::stop() {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  write_once();
  std::lock_guard write_lock(write_mutex_);
  if (file_ != nullptr) std::fclose(file_);
  file_ = nullptr;
}

}  // namespace cudapool
