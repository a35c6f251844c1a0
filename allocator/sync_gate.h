// SyncGate keeps the pool from synchronising or releasing while a CUDA stream capture is active.
//
// Both a device synchronisation and a cudaFree invalidate a capture in progress (CUDA-FACTS 8).
// Captures enter the gate exclusively to change the count; syncs and releases hold it shared for
// their whole duration. So a capture that begins while a fence runs waits for that fence, and a
// fence that would start during a capture is skipped.
#pragma once

#include <atomic>
#include <mutex>
#include <shared_mutex>

namespace cudapool {

class SyncGate {
 public:
  void begin_capture() {
    std::unique_lock lock(mutex_);
    captures_.fetch_add(1, std::memory_order_relaxed);
  }
  void end_capture() {
    std::unique_lock lock(mutex_);
    if (captures_.load(std::memory_order_relaxed) > 0)
      captures_.fetch_sub(1, std::memory_order_relaxed);
  }
  // Cheap check for hot paths; may be stale by the time it is used.
  bool capture_active() const { return captures_.load(std::memory_order_relaxed) > 0; }

  // Holds the gate shared while it exists; `allowed()` is false if a capture is active.
  class SyncPermit {
   public:
    explicit SyncPermit(SyncGate& gate) : lock_(gate.mutex_) {
      allowed_ = gate.captures_.load(std::memory_order_relaxed) == 0;
    }
    bool allowed() const { return allowed_; }

   private:
    std::shared_lock<std::shared_mutex> lock_;
    bool allowed_;
  };

 private:
  std::shared_mutex mutex_;
  std::atomic<int> captures_{0};
};

}  // namespace cudapool
