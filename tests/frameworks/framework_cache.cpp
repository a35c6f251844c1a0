// The caching allocator behind the stand-in `torch` and `cupy` packages (tests/frameworks/python):
// a C ABI library that links the CUDA runtime, as PyTorch's C++ does, so its cudaMalloc/cudaFree
// calls reach libcudapool.so when it is preloaded. Python loads it with ctypes.PyDLL: its calls
// hold the GIL, the hardest case for cudapool's adapters.
//
// Like PyTorch's CUDACachingAllocator it keeps freed blocks for reuse until empty_cache, and when
// cudaMalloc fails with cudaErrorMemoryAllocation it frees its cached blocks of the device and
// tries once more. Blocks are reused by best fit within twice the request.
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstdlib>
#include <iterator>
#include <map>
#include <mutex>
#include <unordered_map>

#include "tests/standin/cuda_standin.h"

namespace {

constexpr int kMaxDevices = 8;

struct Device {
  std::multimap<std::size_t, void*> cached;  // free blocks by size
  std::uint64_t reserved = 0;
  std::uint64_t allocated = 0;
  std::uint64_t allocations = 0;  // count, as "allocation.all.allocated"
  std::uint64_t retries = 0;      // cudaMalloc failures answered by emptying the cache
};

struct Block {
  std::size_t size;
  int device;
};

std::mutex g_mutex;
Device g_devices[kMaxDevices];
std::unordered_map<void*, Block> g_live;

std::size_t round_up(std::size_t n) {
  return (n + 511) / 512 * 512;
}

// Frees the cached blocks of `device` (-1: every device), as empty_cache does.
void empty_locked(int device) {
  for (int d = 0; d < kMaxDevices; ++d) {
    if (device >= 0 && d != device) continue;
    Device& dev = g_devices[d];
    if (dev.cached.empty()) continue;
    int current = 0;
    cudaGetDevice(&current);
    cudaSetDevice(d);
    for (auto& [size, ptr] : dev.cached) {
      cudaFree(ptr);
      dev.reserved -= size;
    }
    dev.cached.clear();
    cudaSetDevice(current);
  }
}

}  // namespace

extern "C" {

// 0 (cudaSuccess) and *out, or the CUDA error. `device` becomes the thread's current device.
__attribute__((visibility("default"))) int fc_malloc(int device, std::size_t size, void** out) {
  if (device < 0 || device >= kMaxDevices || size == 0) return cudaErrorInvalidValue;
  size = round_up(size);
  std::lock_guard lock(g_mutex);
  Device& dev = g_devices[device];
  auto it = dev.cached.lower_bound(size);
  if (it != dev.cached.end() && it->first <= 2 * size) {
    *out = it->second;
    g_live[it->second] = {it->first, device};
    dev.allocated += it->first;
    dev.cached.erase(it);
    ++dev.allocations;
    return cudaSuccess;
  }
  cudaError_t err = cudaSetDevice(device);
  if (err == cudaSuccess) err = cudaMalloc(out, size);
  if (err == cudaErrorMemoryAllocation) {  // as PyTorch: free the cached blocks, try again
    cudaGetLastError();
    ++dev.retries;
    empty_locked(device);
    err = cudaMalloc(out, size);
  }
  if (err != cudaSuccess) {
    cudaGetLastError();
    return err;
  }
  g_live[*out] = {size, device};
  dev.reserved += size;
  dev.allocated += size;
  ++dev.allocations;
  return cudaSuccess;
}

// STANDIN_FRAMEWORK_NO_CACHE=1: frees go straight to cudaFree, as with PyTorch's
// PYTORCH_NO_CUDA_MEMORY_CACHING=1.
__attribute__((visibility("default"))) int fc_free(void* ptr) {
  static const bool no_cache = std::getenv("STANDIN_FRAMEWORK_NO_CACHE") != nullptr;
  std::lock_guard lock(g_mutex);
  auto it = g_live.find(ptr);
  if (it == g_live.end()) return cudaErrorInvalidValue;
  Device& dev = g_devices[it->second.device];
  dev.allocated -= it->second.size;
  if (no_cache) {
    dev.reserved -= it->second.size;
    cudaFree(ptr);
  } else {
    dev.cached.emplace(it->second.size, ptr);
  }
  g_live.erase(it);
  return cudaSuccess;
}

__attribute__((visibility("default"))) void fc_empty(int device) {
  std::lock_guard lock(g_mutex);
  empty_locked(device);
}

// reserved, allocated, allocation count, out-of-memory retries of one device.
__attribute__((visibility("default"))) void fc_stats(int device, std::uint64_t out[4]) {
  std::lock_guard lock(g_mutex);
  const Device& dev = g_devices[device];
  out[0] = dev.reserved;
  out[1] = dev.allocated;
  out[2] = dev.allocations;
  out[3] = dev.retries;
}

// The stand-in driver's figures for `device`: bytes it has handed out, and pages created.
__attribute__((visibility("default"))) std::uint64_t fc_driver_held(int device) {
  StandinCounters c{};
  if (standinGetCounters(device, &c) != 0) return UINT64_MAX;
  return c.bytes_held;
}

__attribute__((visibility("default"))) int fc_set_device(int device) {
  return cudaSetDevice(device);
}

__attribute__((visibility("default"))) int fc_get_device() {
  int d = -1;
  cudaGetDevice(&d);
  return d;
}

}  // extern "C"
