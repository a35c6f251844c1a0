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
  queued_work_.clear();
  return Status::kOk;
}

Status SimulatedBackend::device_memory(int, std::uint64_t* free, std::uint64_t* total) {
  std::lock_guard lock(mutex_);
  std::uint64_t used = counters_.held + other_;
  *free = used >= capacity_ ? 0 : capacity_ - used;
  *total = capacity_;
  return Status::kOk;
}

// ---- pages -----------------------------------------------------------------------------------

std::size_t SimulatedBackend::page_size(int) {
  return page_size_;
}

bool SimulatedBackend::fail_injected(PageCall call) {
  int& n = fail_page_calls_[static_cast<int>(call)];
  if (n == 0) return false;
  --n;
  return true;
}

bool SimulatedBackend::reserved(std::uintptr_t addr, std::size_t size) const {
  auto it = reservations_.upper_bound(addr);
  if (it == reservations_.begin()) return false;
  --it;
  return addr >= it->first && addr + size <= it->first + it->second;
}

Status SimulatedBackend::reserve(int, std::size_t size, std::uintptr_t* base) {
  std::lock_guard lock(mutex_);
  if (page_size_ == 0 || size == 0 || size % page_size_ != 0) return misuse();
  if (fail_injected(PageCall::kReserve)) return Status::kError;
  std::uintptr_t addr = (next_address_ + page_size_ - 1) / page_size_ * page_size_;
  next_address_ = addr + size + page_size_;  // a gap: adjacent ranges are never contiguous
  reservations_.emplace(addr, size);
  ++counters_.reserves;
  *base = addr;
  return Status::kOk;
}

Status SimulatedBackend::unreserve(int, std::uintptr_t base, std::size_t size) {
  std::lock_guard lock(mutex_);
  auto it = reservations_.find(base);
  if (it == reservations_.end() || it->second != size) return misuse();
  auto m = mappings_.lower_bound(base);
  if (m != mappings_.end() && m->first < base + size) return misuse();  // still mapped
  reservations_.erase(it);
  ++counters_.unreserves;
  return Status::kOk;
}

Status SimulatedBackend::create_page(int, PageHandle* handle) {
  std::lock_guard lock(mutex_);
  if (page_size_ == 0) return misuse();
  if (fail_injected(PageCall::kCreate) || counters_.held + other_ + page_size_ > capacity_) {
    ++counters_.page_create_failures;
    return Status::kOutOfMemory;
  }
  PageHandle h = next_handle_++;
  pages_.emplace(h, 0);
  counters_.held += page_size_;
  ++counters_.pages;
  ++counters_.page_creates;
  *handle = h;
  return Status::kOk;
}

Status SimulatedBackend::release_page(int, PageHandle handle) {
  std::lock_guard lock(mutex_);
  auto it = pages_.find(handle);
  if (it == pages_.end() || it->second != 0) return misuse();  // unknown or still mapped
  if (fail_injected(PageCall::kRelease)) return Status::kError;
  pages_.erase(it);
  counters_.held -= page_size_;
  --counters_.pages;
  ++counters_.page_releases;
  return Status::kOk;
}

Status SimulatedBackend::map(int, std::uintptr_t addr, PageHandle handle) {
  std::lock_guard lock(mutex_);
  auto it = pages_.find(handle);
  if (page_size_ == 0 || addr % page_size_ != 0 || !reserved(addr, page_size_) ||
      it == pages_.end() || it->second != 0 || mappings_.count(addr) != 0)
    return misuse();
  if (fail_injected(PageCall::kMap)) return Status::kError;
  it->second = addr;
  mappings_.emplace(addr, Mapping{handle, false});
  ++counters_.pages_mapped;
  ++counters_.maps;
  return Status::kOk;
}

Status SimulatedBackend::set_access(int, std::uintptr_t addr, std::size_t size) {
  std::lock_guard lock(mutex_);
  if (page_size_ == 0 || size == 0 || addr % page_size_ != 0 || size % page_size_ != 0)
    return misuse();
  for (std::uintptr_t a = addr; a < addr + size; a += page_size_)
    if (mappings_.count(a) == 0) return misuse();
  if (fail_injected(PageCall::kSetAccess)) return Status::kError;
  for (std::uintptr_t a = addr; a < addr + size; a += page_size_)
    mappings_[a].accessible = true;
  ++counters_.set_access_calls;
  return Status::kOk;
}

Status SimulatedBackend::unmap(int, std::uintptr_t addr) {
  std::lock_guard lock(mutex_);
  auto it = mappings_.find(addr);
  if (it == mappings_.end()) return misuse();
  if (fail_injected(PageCall::kUnmap)) return Status::kError;
  for (const auto& [a, n] : queued_work_)
    if (a < addr + page_size_ && addr < a + n) ++counters_.early_unmaps;
  pages_[it->second.handle] = 0;
  mappings_.erase(it);
  --counters_.pages_mapped;
  ++counters_.unmaps;
  return Status::kOk;
}

// ---- test controls ---------------------------------------------------------------------------

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

void SimulatedBackend::fail_next(PageCall call, int count) {
  std::lock_guard lock(mutex_);
  fail_page_calls_[static_cast<int>(call)] = count;
}

void SimulatedBackend::queue_work(std::uintptr_t addr, std::size_t size) {
  std::lock_guard lock(mutex_);
  queued_work_.emplace_back(addr, size);
}

PageHandle SimulatedBackend::mapped_at(std::uintptr_t addr, bool* accessible) const {
  std::lock_guard lock(mutex_);
  auto it = mappings_.find(addr);
  if (accessible != nullptr) *accessible = it != mappings_.end() && it->second.accessible;
  return it == mappings_.end() ? 0 : it->second.handle;
}

}  // namespace cudapool
