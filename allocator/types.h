// Core vocabulary of the pool. Pure C++: nothing here knows CUDA, the environment or the pipe.
//
// Glossary
//   driver      whatever hands out device memory to the pool (the CUDA runtime in the shim, a
//               simulated device in tests); reached only through Backend (backend.h).
//   segment     one allocation obtained from the driver. The unit of growth and of release: only
//               a segment whose bytes are all free can be given back.
//   block       a range of a segment. Every byte of a segment belongs to exactly one block, which
//               is in use, pending or free.
//   in use      handed to the application by cudaMalloc and not yet freed.
//   pending     freed by the application, but the device may still touch it (work issued before
//               the free may not have finished). Not reusable until a fence passes.
//   fence       a device synchronisation the pool issues; every block that was pending when it
//               began is free once it completes. One fence serves many blocks.
//   free        reusable at once; free neighbours in a segment are coalesced.
//   held        bytes of all segments = what the driver has given this pool.
//   idle        held - in use (free + pending): what a release could eventually return.
//   page        (devices with virtual memory management) one physical allocation of the
//               device's granularity, mapped into an address range the pool reserved (a range
//               plays the part of a segment). Held is then the bytes of the pages the pool owns;
//               addresses of a range that no block needs are unmapped holes (docs/pages.md).
#pragma once

#include <cstddef>
#include <cstdint>

namespace cudapool {

inline constexpr std::size_t kKiB = 1024;
inline constexpr std::size_t kMiB = 1024 * kKiB;
inline constexpr std::size_t kGiB = 1024 * kMiB;

// Outcome of a pool or backend operation; the shim maps it to a cudaError_t.
enum class Status : std::uint8_t {
  kOk,
  kOutOfMemory,   // the driver (or the limit) cannot provide the bytes
  kInvalidValue,  // a pointer inside a segment that is not the start of a live block
  kNotOwned,      // the pointer is not in any segment of this pool
  kUnloading,     // the runtime is being torn down (process exit)
  kError,         // any other driver failure
};

enum class ReuseMode : std::uint8_t { kFence, kImmediate };

// CUDAPOOL_VMM: pages where the device supports them (auto), always (on: segments, with one
// warning, where it cannot), or never (off).
enum class VmmMode : std::uint8_t { kAuto, kOn, kOff };

// Why memory went back to the driver; also labels release events.
enum class ReleaseReason : std::uint8_t {
  kWatermark,
  kIdleTimer,
  kDevicePressure,
  kLimit,
  kOutOfMemory,
  kTrim,
};
const char* to_string(ReleaseReason reason);

// Release policy of one device, in resolved bytes (percentages already applied).
struct Policy {
  std::uint64_t high_watermark = 4 * kGiB;
  std::uint64_t low_watermark = 1 * kGiB;
  std::uint64_t idle_release_ms = 30000;  // 0 = off
  std::uint64_t min_device_free = 0;      // 0 = off
  std::uint64_t limit = 0;                // 0 = none
  ReuseMode reuse = ReuseMode::kFence;
  VmmMode vmm = VmmMode::kAuto;  // read when the pool is built; later changes have no effect
};

// Counters of one device's pool. A snapshot; all byte figures are exact.
struct PoolStats {
  std::uint64_t held = 0;
  std::uint64_t in_use = 0;
  std::uint64_t pending = 0;
  std::uint64_t segments = 0;
  std::uint64_t live_blocks = 0;
  std::uint64_t peak_held = 0;
  std::uint64_t peak_in_use = 0;
  std::uint64_t app_mallocs = 0;     // successful allocations served by the pool
  std::uint64_t app_frees = 0;       // frees of pool blocks
  std::uint64_t hits = 0;            // allocations served without growing the pool
  std::uint64_t driver_mallocs = 0;  // segments obtained
  std::uint64_t driver_frees = 0;    // segments returned
  std::uint64_t fences = 0;
  std::uint64_t releases = 0;  // release operations that returned at least one segment
  std::uint64_t released_bytes = 0;
  std::uint64_t oom_retries = 0;     // driver OOMs answered by release-and-retry
  std::uint64_t alloc_failures = 0;  // allocations the pool failed with out-of-memory
  std::uint64_t limit_hits = 0;      // requests that ran into the limit
  std::uint64_t invalid_frees = 0;   // double or interior frees refused
  std::uint64_t releases_by_reason[6] = {};
  // Pages (all 0 when the pool uses segments). held == pages * page_size.
  std::uint64_t page_size = 0;
  std::uint64_t pages = 0;              // physical pages the pool owns
  std::uint64_t pages_mapped_idle = 0;  // mapped pages wholly inside free blocks
  std::uint64_t pages_unmapped = 0;     // owned pages mapped nowhere (between a steal and a map)
  std::uint64_t page_creates = 0;       // driver calls, each kind on its own
  std::uint64_t page_releases = 0;
  std::uint64_t page_maps = 0;
  std::uint64_t page_unmaps = 0;
  std::uint64_t page_remaps = 0;   // idle pages unmapped from a free run and mapped elsewhere
  std::uint64_t reservations = 0;  // address ranges reserved

  std::uint64_t idle() const { return held - in_use; }
};

}  // namespace cudapool
