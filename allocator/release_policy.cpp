#include "allocator/release_policy.h"

namespace cudapool {

bool idle_timer_expired(const Policy& policy, const PolicyInput& in) {
  return policy.idle_release_ms != 0 && in.now_ms >= in.last_activity_ms &&
         in.now_ms - in.last_activity_ms >= policy.idle_release_ms;
}

ReleaseDecision decide_release(const Policy& policy, const PolicyInput& in) {
  ReleaseDecision best;
  std::uint64_t idle = in.held - in.in_use;
  auto consider = [&](std::uint64_t keep, ReleaseReason reason) {
    if (keep >= idle) return;
    if (!best.release || keep < best.keep_idle) best = ReleaseDecision{true, keep, reason};
  };
  std::uint64_t trigger = in.watermark_armed ? policy.low_watermark : policy.high_watermark;
  if (idle > trigger) consider(policy.low_watermark, ReleaseReason::kWatermark);
  if (idle_timer_expired(policy, in)) consider(policy.low_watermark, ReleaseReason::kIdleTimer);
  if (policy.min_device_free != 0 && in.device_free_known &&
      in.device_free < policy.min_device_free) {
    std::uint64_t shortfall = policy.min_device_free - in.device_free;
    consider(idle > shortfall ? idle - shortfall : 0, ReleaseReason::kDevicePressure);
  }
  return best;
}

const char* to_string(ReleaseReason reason) {
  switch (reason) {
    case ReleaseReason::kWatermark:
      return "watermark";
    case ReleaseReason::kIdleTimer:
      return "idle-timer";
    case ReleaseReason::kDevicePressure:
      return "device-pressure";
    case ReleaseReason::kLimit:
      return "limit";
    case ReleaseReason::kOutOfMemory:
      return "out-of-memory";
    case ReleaseReason::kTrim:
      return "trim";
  }
  return "unknown";
}

}  // namespace cudapool
