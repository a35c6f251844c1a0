// Size classes: how a request is rounded and which segments serve it.
//
// Three kinds of segment, so that idle segments become wholly free and can be returned:
//   small   requests up to 1 MiB share 2 MiB segments;
//   medium  requests above 1 MiB and up to 10 MiB share 20 MiB segments;
//   large   requests above 10 MiB get a segment of their own (rounded up to 2 MiB), so a large
//           block is always a whole driver allocation: IPC works for it and freeing it frees the
//           segment. A large request reuses an idle large segment only if that wastes at most
//           max(2 MiB, 1/8 of the request).
// Small requests never land in medium or large segments, so they cannot pin them.
#pragma once

#include <cstddef>
#include <cstdint>

#include "allocator/types.h"

namespace cudapool {

enum class PoolKind : std::uint8_t { kSmall = 0, kMedium = 1, kLarge = 2 };
inline constexpr int kPoolKinds = 3;

inline constexpr std::size_t kAlignment = 512;  // every block starts and ends on this
inline constexpr std::size_t kSmallMax = 1 * kMiB;
inline constexpr std::size_t kSmallSegment = 2 * kMiB;
inline constexpr std::size_t kMediumMax = 10 * kMiB;
inline constexpr std::size_t kMediumSegment = 20 * kMiB;
inline constexpr std::size_t kLargeGranularity = 2 * kMiB;
// Small and medium misses fence only once this much is pending (DevicePool::allocate_slow), so
// up to this much freed memory waits for a fence while the pool grows instead.
inline constexpr std::size_t kFenceBatch = 32 * kMiB;
// Requests above this cannot be rounded without overflow; they fail as out of memory.
inline constexpr std::size_t kMaxRequest = SIZE_MAX - kLargeGranularity;

// Rounds a request (> 0) up to what the pool hands out; 0 if it cannot be served at all.
inline std::size_t round_request(std::size_t size) {
  if (size == 0 || size > kMaxRequest) return 0;
  if (size > kMediumMax) return (size + kLargeGranularity - 1) & ~(kLargeGranularity - 1);
  return (size + kAlignment - 1) & ~(kAlignment - 1);
}

inline PoolKind kind_of(std::size_t rounded) {
  if (rounded <= kSmallMax) return PoolKind::kSmall;
  if (rounded <= kMediumMax) return PoolKind::kMedium;
  return PoolKind::kLarge;
}

// The size of the segment to obtain when `rounded` cannot be served from the pool.
inline std::size_t segment_size_for(PoolKind kind, std::size_t rounded) {
  switch (kind) {
    case PoolKind::kSmall:
      return kSmallSegment;
    case PoolKind::kMedium:
      return kMediumSegment;
    case PoolKind::kLarge:
      break;
  }
  return rounded;
}

// Largest idle large segment that may serve a large request of `rounded` bytes.
inline std::size_t largest_acceptable_fit(std::size_t rounded) {
  std::size_t slack = rounded / 8 > kLargeGranularity ? rounded / 8 : kLargeGranularity;
  return rounded + slack;
}

}  // namespace cudapool
