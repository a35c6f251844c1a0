// Test doubles for the pool's Backend and PoolObserver, for what SimulatedBackend cannot show:
// the order of calls, segment addresses that do not grow with age, and a synchronize() that a
// test can hold open while it acts from another thread.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "allocator/backend.h"
#include "allocator/device_pool.h"
#include "allocator/size_classes.h"

namespace cudapool::test {

class FakeBackend final : public Backend {
 public:
  // Descending addresses make "oldest first" and "lowest address first" differ.
  enum class Addresses { kAscending, kDescending };

  struct Call {
    std::string op;  // "allocate", "release", "synchronize"
    std::uintptr_t addr = 0;
    std::size_t size = 0;
  };

  explicit FakeBackend(Addresses order = Addresses::kAscending) : order_(order) {}

  Status allocate(int, std::size_t size, void** ptr) override {
    std::lock_guard lock(mutex_);
    std::size_t span = (size + kLargeGranularity - 1) & ~(kLargeGranularity - 1);
    std::uintptr_t addr;
    if (order_ == Addresses::kAscending) {
      addr = next_up_;
      next_up_ += span;
    } else {
      next_down_ -= span;
      addr = next_down_;
    }
    live_[addr] = size;
    held_ += size;
    max_held_ = std::max(max_held_, held_);
    calls_.push_back(Call{"allocate", addr, size});
    *ptr = reinterpret_cast<void*>(addr);
    return Status::kOk;
  }

  Status release(int, void* ptr) override {
    auto addr = reinterpret_cast<std::uintptr_t>(ptr);
    std::function<void()> hook;
    {
      std::lock_guard lock(mutex_);
      calls_.push_back(Call{"release", addr, 0});
      hook = on_release_;
    }
    if (hook) hook();  // the memory is still held while the hook runs, as in a slow cudaFree
    std::lock_guard lock(mutex_);
    auto it = live_.find(addr);
    if (it == live_.end()) return Status::kError;
    held_ -= it->second;
    live_.erase(it);
    return Status::kOk;
  }

  Status synchronize(int) override {
    std::function<void()> hook;
    {
      std::lock_guard lock(mutex_);
      calls_.push_back(Call{"synchronize", 0, 0});
      hook = on_synchronize_;
    }
    if (hook) hook();  // outside the lock: the hook may block
    return Status::kOk;
  }

  Status device_memory(int, std::uint64_t* free, std::uint64_t* total) override {
    std::lock_guard lock(mutex_);
    *total = 16 * kGiB;
    *free = *total - held_;
    return Status::kOk;
  }

  // Runs inside every synchronize() from now on (nullptr: none).
  void set_on_synchronize(std::function<void()> hook) {
    std::lock_guard lock(mutex_);
    on_synchronize_ = std::move(hook);
  }
  // Runs at the start of every release() from now on, before the memory is given back.
  void set_on_release(std::function<void()> hook) {
    std::lock_guard lock(mutex_);
    on_release_ = std::move(hook);
  }
  std::vector<Call> calls() const {
    std::lock_guard lock(mutex_);
    return calls_;
  }
  int count(const std::string& op) const {
    std::lock_guard lock(mutex_);
    int n = 0;
    for (const Call& c : calls_)
      n += c.op == op;
    return n;
  }
  std::vector<std::uintptr_t> released() const {
    std::lock_guard lock(mutex_);
    std::vector<std::uintptr_t> out;
    for (const Call& c : calls_)
      if (c.op == "release") out.push_back(c.addr);
    return out;
  }
  std::uint64_t held() const {
    std::lock_guard lock(mutex_);
    return held_;
  }
  // The most this device ever held at once.
  std::uint64_t max_held() const {
    std::lock_guard lock(mutex_);
    return max_held_;
  }

 private:
  mutable std::mutex mutex_;
  Addresses order_;
  std::uintptr_t next_up_ = std::uintptr_t{1} << 40;
  std::uintptr_t next_down_ = std::uintptr_t{1} << 44;
  std::map<std::uintptr_t, std::size_t> live_;
  std::uint64_t held_ = 0;
  std::uint64_t max_held_ = 0;
  std::vector<Call> calls_;
  std::function<void()> on_synchronize_;
  std::function<void()> on_release_;
};

// Records the pool's rare events.
class RecordingObserver final : public PoolObserver {
 public:
  struct ReleaseEvent {
    int device;
    ReleaseReason reason;
    std::uint64_t bytes;
    std::uint64_t segments;
  };
  struct ErrorEvent {
    int device;
    std::string operation;
    Status status;
  };

  void on_release(int device, ReleaseReason reason, std::uint64_t bytes,
                  std::uint64_t segments) override {
    std::lock_guard lock(mutex_);
    releases.push_back(ReleaseEvent{device, reason, bytes, segments});
  }
  void on_driver_error(int device, const char* operation, Status status) override {
    std::lock_guard lock(mutex_);
    errors.push_back(ErrorEvent{device, operation, status});
  }

  std::mutex mutex_;
  std::vector<ReleaseEvent> releases;
  std::vector<ErrorEvent> errors;
};

}  // namespace cudapool::test
