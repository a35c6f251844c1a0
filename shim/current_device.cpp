#include "shim/current_device.h"

#include "shim/driver_api.h"

namespace cudapool {

void CurrentDevice::bind_driver() {
  if (ctx_get_device_.load(std::memory_order_relaxed) != nullptr) return;
  const DriverApi* driver = bind_driver_api();
  if (driver != nullptr && driver->cuCtxGetDevice != nullptr)
    ctx_get_device_.store(driver->cuCtxGetDevice, std::memory_order_release);
}

bool CurrentDevice::learn(int handle, int* ordinal) {
  if (rt_.cudaGetDevice(ordinal) != cudaSuccess) return false;
  std::lock_guard lock(learn_mutex_);
  int known = -1;
  if (lookup(handle, &known)) return true;
  for (unsigned i = 0, at = static_cast<unsigned>(handle); i < kSlots; ++i, ++at) {
    Slot& s = slots_[at & (kSlots - 1)];
    if (s.key.load(std::memory_order_relaxed) != 0) continue;
    s.ordinal.store(*ordinal, std::memory_order_relaxed);
    s.key.store(key_of(handle), std::memory_order_release);
    return true;
  }
  return true;  // table full (more devices than slots): answered, not remembered
}

}  // namespace cudapool
