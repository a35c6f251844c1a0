#include "allocator/simulated_backend.h"

#include "allocator/size_classes.h"

namespace cudapool {

Status SimulatedBackend::allocate(int, std::size_t size, void** ptr) {
  std::lock_guard lock(mutex_);
  if (fail_allocations_ > 0 || size > capacity_ || counters_.held + other_ > capacity_ - size) {
    if (fail_allocations_ > 0) --fail_allocations_;
    ++counters_.allocation_failures;
    return Status::kOutOfMemory;
  }
  std::uintptr_t addr = next_address_;
  next_address_ += (size + kLargeGranularity - 1) & ~(kLargeGranularity - 1);
  live_.emplace(addr, size);
  counters_.held += size;
  ++counters_.allocations;
  *ptr = reinterpret_cast<void*>(addr);
  return Status::kOk;
}

Status SimulatedBackend::release(int, void* ptr) {
  std::lock_guard lock(mutex_);
  if (fail_releases_ > 0) {
    --fail_releases_;
    return Status::kError;
  }
  auto it = live_.find(reinterpret_cast<std::uintptr_t>(ptr));
  if (it == live_.end()) return Status::kError;
  counters_.held -= it->second;
  live_.erase(it);
  ++counters_.releases;
  return Status::kOk;
}

Status SimulatedBackend::synchronize(int) {
  std::lock_guard lock(mutex_);
  if (fail_syncs_) return Status::kError;
  ++counters_.syncs;
  return Status::kOk;
}

Status SimulatedBackend::device_memory(int, std::uint64_t* free, std::uint64_t* total) {
  std::lock_guard lock(mutex_);
  std::uint64_t used = counters_.held + other_;
  *free = used >= capacity_ ? 0 : capacity_ - used;
  *total = capacity_;
  return Status::kOk;
}

SimulatedBackend::Counters SimulatedBackend::counters() const {
  std::lock_guard lock(mutex_);
  return counters_;
}

void SimulatedBackend::set_other_usage(std::uint64_t bytes) {
  std::lock_guard lock(mutex_);
  other_ = bytes;
}

void SimulatedBackend::fail_next_allocations(int count) {
  std::lock_guard lock(mutex_);
  fail_allocations_ = count;
}

void SimulatedBackend::fail_next_releases(int count) {
  std::lock_guard lock(mutex_);
  fail_releases_ = count;
}

void SimulatedBackend::fail_syncs(bool fail) {
  std::lock_guard lock(mutex_);
  fail_syncs_ = fail;
}

}  // namespace cudapool
