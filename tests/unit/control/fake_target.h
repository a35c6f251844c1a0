// A ControlTarget without a shim: devices with fixed counters, trim that empties idle memory down
// to `keep`, options in a plain Options struct. For the command, stats and pipe-server tests.
#pragma once

#include <atomic>
#include <mutex>
#include <string>
#include <vector>

#include "control/command.h"
#include "control/options.h"

namespace cudapool::testing_support {

class FakeTarget : public ControlTarget {
 public:
  FakeTarget() {
    DeviceReport d;
    d.device = 0;
    d.stats.held = 1 << 30;
    d.stats.in_use = 64 << 20;
    d.stats.segments = 10;
    d.device_total = 16ull << 30;
    d.device_free = 8ull << 30;
    devices_.push_back(d);
  }

  int pid() const override { return 4242; }
  std::string process_name() const override { return name; }
  std::vector<DeviceReport> devices() override {
    std::lock_guard lock(mutex_);
    return devices_;
  }
  bool trim(int device, const SizeSpec& keep, std::vector<TrimReport>* out,
            std::string* error) override {
    std::lock_guard lock(mutex_);
    ++trims;
    bool found = false;
    for (DeviceReport& d : devices_) {
      if (device >= 0 && d.device != device) continue;
      found = true;
      const std::uint64_t keep_bytes = keep.resolve(d.device_total);
      TrimReport t;
      t.device = d.device;
      if (d.stats.idle() > keep_bytes) {
        t.released = d.stats.idle() - keep_bytes;
        d.stats.held -= t.released;
      }
      t.held_after = d.stats.held;
      t.idle_after = d.stats.idle();
      out->push_back(t);
    }
    if (!found) *error = "device " + std::to_string(device) + " has no pool";
    return found;
  }
  bool set_option(std::string_view name, std::string_view value, std::string* error,
                  std::string* note) override {
    std::lock_guard lock(mutex_);
    return cudapool::set_option(&options, name, value, error, /*runtime_only=*/true, note);
  }
  std::optional<std::string> get_option(std::string_view name) override {
    std::lock_guard lock(mutex_);
    return cudapool::get_option(options, name);
  }
  void reset_peaks() override { ++peak_resets; }

  void add_device(const DeviceReport& d) {
    std::lock_guard lock(mutex_);
    devices_.push_back(d);
  }

  std::string name = "server";
  Options options;
  std::atomic<int> trims{0};
  std::atomic<int> peak_resets{0};

 private:
  std::mutex mutex_;
  std::vector<DeviceReport> devices_;
};

}  // namespace cudapool::testing_support
