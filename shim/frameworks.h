// Framework adapters (docs/frameworks.md): the caches PyTorch and CuPy keep above the pool, read
// and emptied through the host's own interpreter, so that cudapool's release rules reach them.
//
// One adapter per framework, all behind one shape (frameworks.cpp, kAdapters): a piece of Python
// that, when the framework is loaded and has used CUDA, empties its cache if asked and reports
// (device, reserved, allocated, activity) for the devices cudapool has pools on.
//
// Threads. Every run happens on the adapters' own thread (started at the first reading), never
// inside an interposed call (PyTorch calls cudaMalloc/cudaFree holding its allocator lock, and
// its lock order is GIL -> allocator lock) and never with a pool lock held. The release thread
// and the control pipe only post requests: tick() schedules a reading, release() waits for one
// run, within kReleaseWaitMs. Readings: once a second while a framework is attached; until one
// is, at growing intervals (1 s, 2 s, ... 32 s), so a process without a framework is left alone,
// and at every release (trim).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "allocator/framework_cache.h"

namespace cudapool {

namespace python {
struct Api;
}

class Frameworks final : public FrameworkCache {
 public:
  static constexpr int kMaxDevices = 64;
  static constexpr std::uint64_t kPollMs = 1000;
  static constexpr std::uint64_t kMaxSearchMs = 32000;
  static constexpr std::uint64_t kReleaseWaitMs = 5000;

  // Null when the process has no CPython interpreter in its global scope: then nothing starts.
  static std::unique_ptr<Frameworks> create();

  // `device` has a pool: its cache is read from now on.
  void add_device(int device);
  // Process exit: no run starts after this.
  void stop();
  // Names of the frameworks whose caches are read ("torch", "cupy", "torch+cupy"); empty when none.
  std::string attached() const;

  void tick(std::uint64_t now_ms) override;
  FrameworkUsage usage(int device) override;
  FrameworkUsage release(int device) override;

 private:
  enum class State { kSearching, kAttached, kOff };

  explicit Frameworks(const python::Api& api) : api_(api) {}
  void run();  // the adapters' thread
  void start_thread_locked();
  std::string code(std::uint64_t devices, bool empty) const;           // the adapters of one run
  void take_result(const std::string& out, const std::string& error);  // under mutex_

  const python::Api& api_;
  mutable std::mutex mutex_;
  std::condition_variable work_cv_;  // the thread waits for a request
  std::condition_variable done_cv_;  // release() waits for its run
  bool thread_started_ = false;
  bool stopping_ = false;
  State state_ = State::kSearching;
  std::uint64_t devices_ = 0;       // bit d: device d has a pool
  std::uint64_t next_read_ms_ = 0;  // tick(): the next reading is due then
  std::uint64_t search_ms_ = 1000;  // interval between readings while no framework is attached
  bool read_requested_ = false;
  std::uint64_t release_requested_ = 0;  // sequence number of the latest release request
  std::uint64_t runs_done_ = 0;          // release requests up to this one are done
  unsigned quiet_ = 0;                   // bit a: adapter a raised, it runs no more
  unsigned attached_ = 0;                // bit a: adapter a reported a cache
  bool wait_logged_ = false;
  FrameworkUsage usage_[kMaxDevices];
};

}  // namespace cudapool
