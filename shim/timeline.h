// Timeline (CUDAPOOL_TIMELINE_FILE): how the pool's memory moved, as a CSV file.
//
// A writer thread, started with the Shim when TIMELINE_FILE is set (never before the first CUDA
// call), samples every device's held / in use / idle / pending bytes each TIMELINE_MS and appends
// the events queued since the last sample: releases by reason (from the pool's observer), limit
// hits and out-of-memory retries (from the counters). The allocation path never touches it; the
// observer's callback takes a short lock to queue an event. Format: docs/observability.md.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "allocator/types.h"

namespace cudapool {

// The header line of the CSV file (documented in docs/observability.md).
inline constexpr const char* kTimelineHeader =
    "time_s,device,kind,held,in_use,idle,pending,bytes,count,pages";

struct TimelineSample {
  int device = 0;
  PoolStats stats;
};

class Timeline {
 public:
  using Sampler = std::function<std::vector<TimelineSample>()>;
  // Opens `path` ("%p" becomes the pid) and starts the writer. Null, after one log line, when the
  // file cannot be created.
  static Timeline* start(const std::string& path, std::chrono::milliseconds interval,
                         Sampler sampler);
  // Queues an event for the next write; kind: a short word ("watermark_release"...).
  void event(int device, const char* kind, std::uint64_t bytes, std::uint64_t count);
  // Takes a last sample, writes it and stops the writer (at exit).
  void stop();
  const std::string& path() const { return path_; }

 private:
  struct Event {
    double time_s;
    int device;
    const char* kind;
    std::uint64_t bytes;
    std::uint64_t count;
  };
  Timeline(std::FILE* file, std::string path, std::chrono::milliseconds interval, Sampler sampler);
  void run();
  void write_once();
  double now_s() const;

  std::FILE* file_;
  std::string path_;
  std::chrono::milliseconds interval_;
  Sampler sampler_;
  std::chrono::steady_clock::time_point start_;
  std::mutex mutex_;  // events_, stopping_
  std::condition_variable wake_;
  std::vector<Event> events_;
  bool stopping_ = false;
  std::mutex write_mutex_;  // the file and last_
  std::vector<TimelineSample> last_;
  std::thread thread_;
};

// Queues a release event on the process's timeline, if one runs (the pool observer's hook).
void timeline_release(int device, ReleaseReason reason, std::uint64_t bytes,
                      std::uint64_t segments);
// The process's timeline, or null.
Timeline* active_timeline();

}  // namespace cudapool
