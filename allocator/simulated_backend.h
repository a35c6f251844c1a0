// SimulatedBackend: a device without memory, for unit tests and benchmarks.
//
// Addresses come from a bump pointer (never reused, never dereferenceable); capacity, other
// processes' usage and failures are set by the test; every call is counted.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>

#include "allocator/backend.h"

namespace cudapool {

class SimulatedBackend final : public Backend {
 public:
  explicit SimulatedBackend(std::uint64_t capacity = 16ull << 30) : capacity_(capacity) {}

  Status allocate(int device, std::size_t size, void** ptr) override;
  Status release(int device, void* ptr) override;
  Status synchronize(int device) override;
  Status device_memory(int device, std::uint64_t* free, std::uint64_t* total) override;

  struct Counters {
    std::uint64_t allocations = 0;
    std::uint64_t allocation_failures = 0;
    std::uint64_t releases = 0;
    std::uint64_t syncs = 0;
    std::uint64_t held = 0;
  };
  Counters counters() const;
  void set_other_usage(std::uint64_t bytes);
  void fail_next_allocations(int count);
  void fail_next_releases(int count);
  void fail_syncs(bool fail);

 private:
  mutable std::mutex mutex_;
  std::uint64_t capacity_;
  std::uint64_t other_ = 0;
  std::uintptr_t next_address_ = std::uintptr_t{1} << 40;
  std::map<std::uintptr_t, std::uint64_t> live_;
  Counters counters_;
  int fail_allocations_ = 0;
  int fail_releases_ = 0;
  bool fail_syncs_ = false;
};

}  // namespace cudapool
