// The release rules of DESIGN §5 as one pure function: counters and time in, decision out.
// No locks, no threads, no clock: the release thread feeds it, and tests drive it directly.
#pragma once

#include <cstdint>

#include "allocator/types.h"

namespace cudapool {

struct PolicyInput {
  std::uint64_t held = 0;
  std::uint64_t in_use = 0;
  std::uint64_t now_ms = 0;
  std::uint64_t last_activity_ms = 0;  // time of the last allocation seen on the device
  bool device_free_known = false;      // device_free is only read when MIN_DEVICE_FREE is on
  std::uint64_t device_free = 0;       // free bytes of the whole device (all processes)
  // A release the high watermark started is still under way (Releaser: the burst's frees have
  // not stopped yet): the watermark rule then fires above the low watermark, not the high one.
  bool watermark_armed = false;
};

struct ReleaseDecision {
  bool release = false;
  std::uint64_t keep_idle = 0;  // release idle memory down to this
  ReleaseReason reason = ReleaseReason::kWatermark;
};

// Watermarks: idle > high (idle > low while watermark_armed) -> keep low. Idle timer: no allocation
// for idle_release_ms and idle > low -> keep low. Device pressure: device free < min_device_free ->
// release the shortfall. When several rules fire, the one that keeps least wins.
ReleaseDecision decide_release(const Policy& policy, const PolicyInput& in);
// True when the idle timer is on and no allocation happened for idle_release_ms.
bool idle_timer_expired(const Policy& policy, const PolicyInput& in);

}  // namespace cudapool
