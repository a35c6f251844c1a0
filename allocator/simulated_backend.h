// SimulatedBackend: a device without memory, for unit tests and benchmarks.
//
// Segments: addresses come from a bump pointer (never reused, never dereferenceable).
// Pages (page_size != 0): reservations, physical pages and mappings with the rules of CUDA's
// virtual memory management that the pool relies on, checked strictly: sizes and addresses in
// whole pages, a page mapped inside a reservation at one address at a time, only mapped pages
// get access or are unmapped, only unmapped pages are released, a reservation is freed whole and
// empty. A call that breaks a rule fails with kError and counts as a misuse.
// Device work: queue_work() marks addresses that queued work still uses until the next
// synchronize(); unmapping such a page counts as an early unmap (the fence rule, DESIGN §4.5).
// Capacity counts segments and pages; other processes' usage and failures are set by the test;
// every call is counted.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <unordered_map>
#include <utility>
#include <vector>

#include "allocator/backend.h"

namespace cudapool {

class SimulatedBackend final : public Backend {
 public:
  explicit SimulatedBackend(std::uint64_t capacity = 16ull << 30, std::size_t page_size = 0)
      : capacity_(capacity), page_size_(page_size) {}

  Status allocate(int device, std::size_t size, void** ptr) override;
  Status release(int device, void* ptr) override;
  Status synchronize(int device) override;
  Status device_memory(int device, std::uint64_t* free, std::uint64_t* total) override;

  std::size_t page_size(int device) override;
  Status reserve(int device, std::size_t size, std::uintptr_t* base) override;
  Status unreserve(int device, std::uintptr_t base, std::size_t size) override;
  Status create_page(int device, PageHandle* handle) override;
  Status release_page(int device, PageHandle handle) override;
  Status map(int device, std::uintptr_t addr, PageHandle handle) override;
  Status set_access(int device, std::uintptr_t addr, std::size_t size) override;
  Status unmap(int device, std::uintptr_t addr) override;

  struct Counters {
    std::uint64_t allocations = 0;
    std::uint64_t allocation_failures = 0;
    std::uint64_t releases = 0;
    std::uint64_t syncs = 0;
    std::uint64_t held = 0;  // segments and pages
    // Pages.
    std::uint64_t page_creates = 0;
    std::uint64_t page_create_failures = 0;
    std::uint64_t page_releases = 0;
    std::uint64_t maps = 0;
    std::uint64_t unmaps = 0;
    std::uint64_t set_access_calls = 0;
    std::uint64_t reserves = 0;
    std::uint64_t unreserves = 0;
    std::uint64_t pages = 0;         // live pages
    std::uint64_t pages_mapped = 0;  // live mappings
    std::uint64_t misuses = 0;       // calls that broke a rule (see above)
    std::uint64_t early_unmaps = 0;  // unmaps of pages that queued work still used
  };
  Counters counters() const;
  void set_other_usage(std::uint64_t bytes);
  void fail_next_allocations(int count);
  void fail_next_releases(int count);
  void fail_syncs(bool fail);
  enum class PageCall { kCreate, kRelease, kMap, kSetAccess, kUnmap, kReserve };
  // The next `count` calls of that kind fail (create: kOutOfMemory, the others kError).
  void fail_next(PageCall call, int count);
  // Work queued on the device still uses [addr, addr + size) until the next synchronize().
  void queue_work(std::uintptr_t addr, std::size_t size);
  // The page mapped at `addr` (0: none) and whether it is accessible.
  PageHandle mapped_at(std::uintptr_t addr, bool* accessible = nullptr) const;

 private:
  struct Mapping {
    PageHandle handle = 0;
    bool accessible = false;
  };
  bool fail_injected(PageCall call);
  bool reserved(std::uintptr_t addr, std::size_t size) const;
  Status misuse() {
    ++counters_.misuses;
    return Status::kError;
  }

  mutable std::mutex mutex_;
  std::uint64_t capacity_;
  std::size_t page_size_;
  std::uint64_t other_ = 0;
  std::uintptr_t next_address_ = std::uintptr_t{1} << 40;
  std::map<std::uintptr_t, std::uint64_t> live_;
  std::map<std::uintptr_t, std::size_t> reservations_;    // base -> size
  std::map<std::uintptr_t, Mapping> mappings_;            // page address -> mapping
  std::unordered_map<PageHandle, std::uintptr_t> pages_;  // handle -> mapped address (0: none)
  std::vector<std::pair<std::uintptr_t, std::size_t>> queued_work_;
  PageHandle next_handle_ = 1;
  Counters counters_;
  int fail_allocations_ = 0;
  int fail_releases_ = 0;
  int fail_page_calls_[6] = {};
  bool fail_syncs_ = false;
};

}  // namespace cudapool
