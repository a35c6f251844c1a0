// The answers of the interposed calls (DESIGN §4.4, §4.7-4.10, §4.1), for a program linked directly
// against the runtime. Each suite is registered with its own environment (CMakeLists.txt).
#include <dlfcn.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/integration_util.h"

namespace integ {
namespace {

struct Block {
  void* ptr = nullptr;
  std::size_t size = 0;
  std::uint64_t seed = 0;
};

std::uintptr_t addr(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p);
}

// 100 allocate/free pairs of `size`; returns how many reached the stand-in's cudaMalloc.
unsigned long long driver_mallocs_for_pairs(std::size_t size, int pairs = 100) {
  const unsigned long long before = counters().mallocs;
  for (int i = 0; i < pairs; ++i) {
    void* p = nullptr;
    EXPECT_CUDA_OK(cudaMalloc(&p, size));
    EXPECT_CUDA_OK(cudaFree(p));
  }
  return counters().mallocs - before;
}

// ---- Alloc: the basic answers (§4.4) ----------------------------------------------------------

TEST(Alloc, ManySmallPairsCostOneDriverMalloc) {
  const StandinCounters before = counters();
  EXPECT_LE(driver_mallocs_for_pairs(4 * kKiB), 1u) << "cudaMalloc/cudaFree are not pooled";
  const StandinCounters after = counters();
  EXPECT_EQ(before.frees, after.frees) << "a pooled cudaFree reached the driver";
  EXPECT_EQ(before.implicit_syncs, after.implicit_syncs) << "a pooled cudaFree synchronised";
}

TEST(Alloc, LargeAndMediumPairsArePooledToo) {
  // Medium blocks share 20 MiB segments; the pool fences only once a segment's worth is pending,
  // so the first segment's blocks are all pending when a second segment is taken.
  EXPECT_LE(driver_mallocs_for_pairs(3 * kMiB), 2u);
  EXPECT_LE(driver_mallocs_for_pairs(24 * kMiB, 20), 1u);
}

TEST(Alloc, ZeroBytesGivesSuccessAndNull) {
  void* p = reinterpret_cast<void*>(0x1000);
  EXPECT_CUDA_OK(cudaMalloc(&p, 0));
  EXPECT_EQ(nullptr, p);
  EXPECT_EQ(cudaSuccess, cudaGetLastError());
}

TEST(Alloc, NullOutPointerIsInvalidValue) {
  EXPECT_EQ(cudaErrorInvalidValue, cudaMalloc(nullptr, 4096));
  EXPECT_EQ(cudaErrorInvalidValue, cudaMalloc(nullptr, 0));
  cudaGetLastError();
}

TEST(Alloc, SizesThatCannotBeServedAreMemoryAllocation) {
  const std::size_t sizes[] = {SIZE_MAX,
                               SIZE_MAX - 1,
                               SIZE_MAX - 511,
                               SIZE_MAX - 2 * kMiB,
                               SIZE_MAX - 2 * kMiB + 1,
                               SIZE_MAX / 2,
                               std::size_t{1} << 62};
  for (std::size_t size : sizes) {
    void* p = nullptr;
    EXPECT_EQ(cudaErrorMemoryAllocation, cudaMalloc(&p, size)) << "size " << size;
  }
  cudaGetLastError();
  // The pool is still usable.
  void* p = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&p, 4096));
  fill_pattern(p, 4096, 1);
  EXPECT_EQ(-1, pattern_mismatch(p, 4096, 1));
  EXPECT_CUDA_OK(cudaFree(p));
}

TEST(Alloc, PointersAreAlignedAndNeverOverlap) {
  const std::size_t sizes[] = {1,        511,       512,           513,          4095,
                               4096,     64 * kKiB, kMiB - 1,      kMiB,         kMiB + 1,
                               3 * kMiB, 10 * kMiB, 10 * kMiB + 1, 12 * kMiB + 3};
  std::vector<Block> blocks;
  std::uint64_t seed = 100;
  for (int round = 0; round < 3; ++round) {
    for (std::size_t size : sizes) {
      Block b{nullptr, size, ++seed};
      ASSERT_CUDA_OK(cudaMalloc(&b.ptr, size)) << "size " << size;
      EXPECT_EQ(0u, addr(b.ptr) % 512) << "size " << size << " ptr " << b.ptr;
      if (size <= 4 * kMiB) {
        fill_pattern(b.ptr, size, b.seed);
      } else {
        stamp_pattern(b.ptr, size, b.seed);
      }
      blocks.push_back(b);
    }
    // Free every other block of this round so that later rounds reuse the holes.
    for (std::size_t i = blocks.size() - std::size(sizes); i < blocks.size(); i += 2) {
      if (blocks[i].ptr == nullptr) continue;
      EXPECT_CUDA_OK(cudaFree(blocks[i].ptr));
      blocks[i].ptr = nullptr;
    }
  }
  std::vector<Block> live;
  for (const Block& b : blocks)
    if (b.ptr != nullptr) live.push_back(b);
  std::sort(live.begin(), live.end(), [](const Block& a, const Block& b) { return a.ptr < b.ptr; });
  for (std::size_t i = 1; i < live.size(); ++i)
    EXPECT_LE(addr(live[i - 1].ptr) + live[i - 1].size, addr(live[i].ptr))
        << "blocks " << live[i - 1].ptr << " (+" << live[i - 1].size << ") and " << live[i].ptr
        << " overlap";
  for (const Block& b : live) {
    if (b.size <= 4 * kMiB) {
      EXPECT_EQ(-1, pattern_mismatch(b.ptr, b.size, b.seed)) << "block " << b.ptr;
    } else {
      EXPECT_TRUE(stamps_intact(b.ptr, b.size, b.seed)) << "block " << b.ptr;
    }
    EXPECT_CUDA_OK(cudaFree(b.ptr));
  }
}

TEST(Alloc, DoubleFreeIsInvalidValueAndHarmsNoNeighbour) {
  Block a{nullptr, 8 * kKiB, 11}, b{nullptr, 8 * kKiB, 12}, c{nullptr, 8 * kKiB, 13};
  for (Block* x : {&a, &b, &c}) {
    ASSERT_CUDA_OK(cudaMalloc(&x->ptr, x->size));
    fill_pattern(x->ptr, x->size, x->seed);
  }
  const StandinCounters before = counters();
  EXPECT_CUDA_OK(cudaFree(b.ptr));
  EXPECT_EQ(cudaErrorInvalidValue, cudaFree(b.ptr)) << "double free";
  EXPECT_EQ(cudaErrorInvalidValue, cudaFree(b.ptr)) << "third free";
  const StandinCounters after = counters();
  EXPECT_EQ(before.frees, after.frees) << "the double free reached the runtime";
  EXPECT_EQ(before.free_failures, after.free_failures) << "the double free reached the runtime";
  // Neighbours untouched and still freeable exactly once.
  EXPECT_EQ(-1, pattern_mismatch(a.ptr, a.size, a.seed));
  EXPECT_EQ(-1, pattern_mismatch(c.ptr, c.size, c.seed));
  // A new block may take b's place; it must not be disturbed by the refused frees either.
  Block d{nullptr, 8 * kKiB, 14};
  ASSERT_CUDA_OK(cudaMalloc(&d.ptr, d.size));
  fill_pattern(d.ptr, d.size, d.seed);
  EXPECT_CUDA_OK(cudaFree(a.ptr));
  EXPECT_CUDA_OK(cudaFree(c.ptr));
  EXPECT_EQ(cudaErrorInvalidValue, cudaFree(a.ptr));
  EXPECT_EQ(cudaErrorInvalidValue, cudaFree(c.ptr));
  EXPECT_EQ(-1, pattern_mismatch(d.ptr, d.size, d.seed));
  EXPECT_CUDA_OK(cudaFree(d.ptr));
  cudaGetLastError();
}

TEST(Alloc, InteriorFreeIsInvalidValueAndFreesNothing) {
  Block small{nullptr, 64 * kKiB, 21}, next{nullptr, 64 * kKiB, 22}, large{nullptr, 16 * kMiB, 23};
  ASSERT_CUDA_OK(cudaMalloc(&small.ptr, small.size));
  ASSERT_CUDA_OK(cudaMalloc(&next.ptr, next.size));
  ASSERT_CUDA_OK(cudaMalloc(&large.ptr, large.size));
  fill_pattern(small.ptr, small.size, small.seed);
  fill_pattern(next.ptr, next.size, next.seed);
  stamp_pattern(large.ptr, large.size, large.seed);
  const StandinCounters before = counters();
  auto* s = static_cast<char*>(small.ptr);
  auto* l = static_cast<char*>(large.ptr);
  EXPECT_EQ(cudaErrorInvalidValue, cudaFree(s + 1));
  EXPECT_EQ(cudaErrorInvalidValue, cudaFree(s + 512));
  EXPECT_EQ(cudaErrorInvalidValue, cudaFree(s + small.size - 512));
  EXPECT_EQ(cudaErrorInvalidValue, cudaFree(l + 4096));
  EXPECT_EQ(cudaErrorInvalidValue, cudaFree(l + 2 * kMiB));
  const StandinCounters after = counters();
  EXPECT_EQ(before.frees, after.frees);
  EXPECT_EQ(before.free_failures, after.free_failures) << "an interior free reached the runtime";
  EXPECT_EQ(-1, pattern_mismatch(small.ptr, small.size, small.seed));
  EXPECT_EQ(-1, pattern_mismatch(next.ptr, next.size, next.seed));
  EXPECT_TRUE(stamps_intact(large.ptr, large.size, large.seed));
  // The blocks are still live: each frees exactly once.
  for (Block* b : {&small, &next, &large}) {
    EXPECT_CUDA_OK(cudaFree(b->ptr));
    EXPECT_EQ(cudaErrorInvalidValue, cudaFree(b->ptr));
  }
  cudaGetLastError();
}

TEST(Alloc, ForeignPointersAreForwardedToTheRuntime) {
  void* pooled = nullptr;  // the pool exists and holds a segment
  ASSERT_CUDA_OK(cudaMalloc(&pooled, 4096));
  void *async = nullptr, *managed = nullptr, *pitched = nullptr;
  std::size_t pitch = 0;
  ASSERT_CUDA_OK(cudaMallocAsync(&async, kMiB, nullptr));
  ASSERT_CUDA_OK(cudaStreamSynchronize(nullptr));
  ASSERT_CUDA_OK(cudaMallocManaged(&managed, kMiB));
  ASSERT_CUDA_OK(cudaMallocPitch(&pitched, &pitch, 1000, 16));
  const StandinCounters before = counters();
  EXPECT_CUDA_OK(cudaFree(async));
  EXPECT_CUDA_OK(cudaFree(managed));
  EXPECT_CUDA_OK(cudaFree(pitched));
  const StandinCounters after = counters();
  EXPECT_EQ(before.frees + 3, after.frees) << "foreign pointers must reach the runtime's cudaFree";
  EXPECT_EQ(before.bytes_held - after.bytes_held, 2 * kMiB + pitch * 16)
      << "the runtime did not release the foreign allocations";
  EXPECT_CUDA_OK(cudaFree(pooled));
}

TEST(Alloc, FreeNullSucceeds) {
  EXPECT_CUDA_OK(cudaFree(nullptr));
  EXPECT_EQ(cudaSuccess, cudaGetLastError());
}

// ---- Ipc (§4.9) -------------------------------------------------------------------------------

TEST(Ipc, BlockInsideALargerSegmentIsRefused) {
  // First in this process: two consecutive blocks of a fresh small, then medium, segment.
  for (std::size_t size : {4 * kKiB, 3 * kMiB}) {
    void *first = nullptr, *second = nullptr;
    ASSERT_CUDA_OK(cudaMalloc(&first, size));
    ASSERT_CUDA_OK(cudaMalloc(&second, size));
    ASSERT_EQ(addr(first) + size, addr(second)) << "expected two consecutive blocks of a segment";
    StandinAllocationInfo info{};
    if (allocation_info(second, &info)) {  // exact when the stand-in can say
      EXPECT_EQ(addr(first), info.base);
    }
    cudaIpcMemHandle_t handle{};
    EXPECT_EQ(cudaErrorInvalidValue, cudaIpcGetMemHandle(&handle, second))
        << "a handle for " << second << " would map the segment at " << first;
    EXPECT_CUDA_OK(cudaIpcGetMemHandle(&handle, first)) << "the segment's base block may be shared";
    EXPECT_CUDA_OK(cudaFree(first));
    EXPECT_CUDA_OK(cudaFree(second));
  }
  cudaGetLastError();
}

TEST(Ipc, LargeBlockIsAWholeSegmentAndCanBeShared) {
  for (std::size_t size : {10 * kMiB + 512, 16 * kMiB, 33 * kMiB + 5}) {
    void* p = nullptr;
    ASSERT_CUDA_OK(cudaMalloc(&p, size));
    StandinAllocationInfo info{};
    if (allocation_info(p, &info)) {  // exact when the stand-in can say
      EXPECT_EQ(addr(p), info.base) << "a large block must be its own driver allocation";
    }
    cudaIpcMemHandle_t handle{};
    EXPECT_CUDA_OK(cudaIpcGetMemHandle(&handle, p)) << "size " << size;
    EXPECT_CUDA_OK(cudaFree(p));
  }
}

// ---- MultiDevice (§4.10): STANDIN_DEVICE_COUNT=2 ------------------------------------------------

// The device a pointer's memory belongs to, as the runtime says.
int device_of(const void* p) {
  cudaPointerAttributes attributes{};
  EXPECT_CUDA_OK(cudaPointerGetAttributes(&attributes, p));
  return attributes.device;
}

// True when [p, p+n) starts and ends in device memory the runtime handed out.
bool is_device_range(const void* p, std::size_t n) {
  cudaPointerAttributes first{}, last{};
  return cudaPointerGetAttributes(&first, p) == cudaSuccess &&
         cudaPointerGetAttributes(&last, static_cast<const char*>(p) + n - 1) == cudaSuccess &&
         first.type == cudaMemoryTypeDevice && last.type == cudaMemoryTypeDevice;
}

int current_device() {
  int d = -1;
  EXPECT_CUDA_OK(cudaGetDevice(&d));
  return d;
}

TEST(MultiDevice, BlocksFreedWhileAnotherDeviceIsCurrentGoBackToTheirPool) {
  int count = 0;
  ASSERT_CUDA_OK(cudaGetDeviceCount(&count));
  ASSERT_EQ(2, count) << "set STANDIN_DEVICE_COUNT=2";
  ASSERT_CUDA_OK(cudaSetDevice(1));
  std::vector<Block> blocks;
  std::uint64_t seed = 300;
  for (std::size_t size : {4 * kKiB, 512 * kKiB, 3 * kMiB, 16 * kMiB, 4 * kKiB}) {
    Block b{nullptr, size, ++seed};
    ASSERT_CUDA_OK(cudaMalloc(&b.ptr, size));
    EXPECT_EQ(1, device_of(b.ptr)) << "allocated while device 1 is current";
    stamp_pattern(b.ptr, size, b.seed);
    blocks.push_back(b);
  }
  const StandinCounters dev0 = counters(0), dev1 = counters(1);
  ASSERT_CUDA_OK(cudaSetDevice(0));
  for (const Block& b : blocks) {
    EXPECT_TRUE(stamps_intact(b.ptr, b.size, b.seed));
    EXPECT_CUDA_OK(cudaFree(b.ptr));
    EXPECT_EQ(0, current_device()) << "cudaFree changed the current device";
  }
  EXPECT_EQ(dev1.frees, counters(1).frees) << "pooled frees reached the runtime";
  EXPECT_EQ(dev0.frees, counters(0).frees);
  EXPECT_EQ(0u, counters(0).mallocs) << "device 0 was never used";
  // Device 1's pool took them back: with LOW_WATERMARK=0 and IDLE_RELEASE_MS=200 the idle timer
  // returns device 1's segments, and nothing is freed on device 0.
  EXPECT_TRUE(wait_until(milliseconds(3000), [] { return counters(1).bytes_held == 0; }))
      << "device 1 still holds " << counters(1).bytes_held << " bytes";
  EXPECT_EQ(0u, counters(1).free_failures) << "a segment was freed twice or on the wrong device";
  EXPECT_EQ(0u, counters(0).frees);
  EXPECT_EQ(0, current_device());
}

// A pool hit reads the current device from the driver (cuCtxGetDevice, whose CUdevice handles the
// stand-in makes differ from runtime ordinals) instead of cudaGetDevice; with no driver library
// loaded (STANDIN_DRIVER_LIBRARY=0) every cudaMalloc asks cudaGetDevice. Either way each thread's
// blocks come from its own device's pool.
TEST(MultiDevice, HitsTakeTheDeviceFromTheCurrentContext) {
  const char* lib = std::getenv("STANDIN_DRIVER_LIBRARY");
  const bool driver = lib == nullptr || std::string(lib) != "0";
  constexpr int kPairs = 500;
  auto loop = [](int device, int pairs) {
    EXPECT_CUDA_OK(cudaSetDevice(device));
    for (int i = 0; i < pairs; ++i) {
      void* p = nullptr;
      ASSERT_CUDA_OK(cudaMalloc(&p, (1 + i % 7) * kKiB));
      EXPECT_EQ(device, device_of(p));
      ASSERT_CUDA_OK(cudaFree(p));
    }
  };
  // The pools, their first segments, and one cudaGetDevice per device to learn its handle.
  for (int device : {0, 1})
    std::thread(loop, device, 2).join();
  const StandinCounters before0 = counters(0), before1 = counters(1);
  std::thread t0(loop, 0, kPairs), t1(loop, 1, kPairs);
  t0.join();
  t1.join();
  const StandinCounters after0 = counters(0), after1 = counters(1);
  EXPECT_EQ(before0.mallocs, after0.mallocs) << "device 0: not served by its pool";
  EXPECT_EQ(before1.mallocs, after1.mallocs) << "device 1: not served by its pool";
  const unsigned long long asked = (after0.get_device_calls - before0.get_device_calls) +
                                   (after1.get_device_calls - before1.get_device_calls);
  // The test's own device_of and cudaSetDevice calls make no cudaGetDevice calls.
  if (driver)
    EXPECT_EQ(0u, asked) << "pool hits called cudaGetDevice";
  else
    EXPECT_EQ(2u * kPairs, asked) << "without the driver every cudaMalloc asks the runtime";
  ASSERT_CUDA_OK(cudaSetDevice(0));
}

TEST(MultiDevice, PoolsArePerDevice) {
  for (int device : {0, 1}) {
    ASSERT_CUDA_OK(cudaSetDevice(device));
    const unsigned long long other_before = counters(1 - device).mallocs;
    const unsigned long long before = counters(device).mallocs;
    for (int i = 0; i < 100; ++i) {
      void* p = nullptr;
      ASSERT_CUDA_OK(cudaMalloc(&p, 4 * kKiB));
      EXPECT_EQ(device, device_of(p));
      ASSERT_CUDA_OK(cudaFree(p));
    }
    EXPECT_LE(counters(device).mallocs - before, 1u);
    EXPECT_EQ(other_before, counters(1 - device).mallocs);
  }
  ASSERT_CUDA_OK(cudaSetDevice(0));
}

TEST(MultiDevice, CurrentDeviceIsUnchangedByEveryCall) {
  for (int current : {0, 1}) {
    const int other = 1 - current;
    void *theirs_small = nullptr, *theirs_large = nullptr;
    ASSERT_CUDA_OK(cudaSetDevice(other));
    ASSERT_CUDA_OK(cudaMalloc(&theirs_small, 4 * kKiB));
    ASSERT_CUDA_OK(cudaMalloc(&theirs_large, 16 * kMiB));
    ASSERT_CUDA_OK(cudaSetDevice(current));
    auto expect_current = [&](cudaError_t err, const char* what) {
      EXPECT_EQ(cudaSuccess, err) << what;
      EXPECT_EQ(current, current_device()) << what << " changed the current device";
    };
    void *small = nullptr, *large = nullptr, *zero = nullptr;
    expect_current(cudaMalloc(&small, 4 * kKiB), "cudaMalloc(small)");
    expect_current(cudaMalloc(&large, 16 * kMiB), "cudaMalloc(large)");
    expect_current(cudaMalloc(&zero, 0), "cudaMalloc(0)");
    for (void* p : {small, large})
      EXPECT_EQ(current, device_of(p)) << "allocated on the wrong device";
    std::size_t free = 0, total = 0;
    expect_current(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
    cudaIpcMemHandle_t handle{};
    expect_current(cudaIpcGetMemHandle(&handle, theirs_large), "cudaIpcGetMemHandle(other's)");
    expect_current(cudaFree(theirs_small), "cudaFree(other device's small block)");
    expect_current(cudaFree(theirs_large), "cudaFree(other device's large block)");
    expect_current(cudaFree(small), "cudaFree(small)");
    expect_current(cudaFree(large), "cudaFree(large)");
    expect_current(cudaFree(nullptr), "cudaFree(nullptr)");
  }
  // Releases run on the release thread (IDLE_RELEASE_MS=200, LOW_WATERMARK=0) and switch devices
  // there; the calling thread's device stays put meanwhile.
  ASSERT_CUDA_OK(cudaSetDevice(1));
  EXPECT_TRUE(wait_until(milliseconds(3000), [] { return counters(-1).bytes_held == 0; }))
      << "still held: " << counters(-1).bytes_held;
  EXPECT_EQ(1, current_device());
  EXPECT_EQ(0u, counters(-1).free_failures);
  ASSERT_CUDA_OK(cudaSetDevice(0));
}

// ---- OutOfMemory (§4.4): STANDIN_DEVICE_MEMORY=1GiB ---------------------------------------------

TEST(OutOfMemory, IdleMemoryIsReleasedBeforeFailing) {
  std::vector<void*> blocks(8);
  for (void*& p : blocks)
    ASSERT_CUDA_OK(cudaMalloc(&p, 100 * kMiB));
  for (void* p : blocks)
    ASSERT_CUDA_OK(cudaFree(p));
  ASSERT_GE(counters().bytes_held, 800 * kMiB) << "the pool should hold the idle blocks";
  const unsigned long long frees_before = counters().frees;
  void* big = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&big, 600 * kMiB)) << "fits only after the pool releases idle memory";
  EXPECT_EQ(cudaSuccess, cudaGetLastError()) << "the recovered out-of-memory left a trace";
  EXPECT_GT(counters().frees, frees_before);
  stamp_pattern(big, 600 * kMiB, 5);
  EXPECT_TRUE(stamps_intact(big, 600 * kMiB, 5));
  EXPECT_CUDA_OK(cudaFree(big));
}

TEST(OutOfMemory, SmallRequestsRecoverFromIdleLargeSegments) {
  std::vector<void*> large(10);
  for (void*& p : large)
    ASSERT_CUDA_OK(cudaMalloc(&p, 100 * kMiB));
  for (void* p : large)
    ASSERT_CUDA_OK(cudaFree(p));
  std::vector<void*> small(40);
  for (void*& p : small) {
    ASSERT_CUDA_OK(cudaMalloc(&p, kMiB)) << "small requests must get the idle large memory";
    stamp_pattern(p, kMiB, 7);
  }
  EXPECT_EQ(cudaSuccess, cudaGetLastError());
  for (void* p : small) {
    EXPECT_TRUE(stamps_intact(p, kMiB, 7));
    EXPECT_CUDA_OK(cudaFree(p));
  }
}

TEST(OutOfMemory, InjectedDriverFailureIsRecoveredWithoutTrace) {
  auto inject = reinterpret_cast<void (*)(int)>(
      dlsym(dlopen("libcudart.so.13", RTLD_NOW | RTLD_NOLOAD), "standinInjectMallocFailures"));
  ASSERT_NE(nullptr, inject);
  const unsigned long long failures = counters().malloc_failures;
  inject(1);  // the next segment the pool asks for fails once
  void* p = nullptr;
  EXPECT_CUDA_OK(cudaMalloc(&p, 40 * kMiB + 3));
  EXPECT_EQ(cudaSuccess, cudaGetLastError()) << "the recovered out-of-memory left a trace";
  EXPECT_EQ(failures + 1, counters().malloc_failures) << "the injected failure did not happen";
  EXPECT_CUDA_OK(cudaFree(p));
}

TEST(OutOfMemory, LargerThanTheDeviceFailsLikeTheRuntime) {
  void* p = nullptr;
  EXPECT_EQ(cudaErrorMemoryAllocation, cudaMalloc(&p, 2 * kGiB));
  EXPECT_EQ(cudaErrorMemoryAllocation, cudaGetLastError())
      << "a native failure sets the last error";
  EXPECT_EQ(cudaErrorMemoryAllocation, cudaMalloc(&p, kGiB + kMiB));
  cudaGetLastError();
  // The pool still works.
  ASSERT_CUDA_OK(cudaMalloc(&p, 4 * kKiB));
  EXPECT_CUDA_OK(cudaFree(p));
}

// ---- Limit (§5): CUDAPOOL_LIMIT=256MiB, STANDIN_DEVICE_MEMORY=1GiB -----------------------------

TEST(Limit, RequestsBeyondTheLimitFailWithinItWork) {
  void *a = nullptr, *b = nullptr, *c = nullptr, *d = nullptr;
  EXPECT_EQ(cudaErrorMemoryAllocation, cudaMalloc(&a, 300 * kMiB)) << "above the limit";
  ASSERT_CUDA_OK(cudaMalloc(&a, 200 * kMiB));
  EXPECT_EQ(cudaErrorMemoryAllocation, cudaMalloc(&b, 100 * kMiB)) << "200 + 100 > 256 MiB";
  ASSERT_CUDA_OK(cudaMalloc(&c, 40 * kMiB)) << "200 + 40 <= 256 MiB";
  ASSERT_CUDA_OK(cudaMalloc(&d, 4 * kKiB)) << "a small block still fits";
  cudaGetLastError();
  EXPECT_LE(counters().peak_bytes_held, 256 * kMiB) << "the process held more than the limit";
  for (void* p : {a, c, d})
    EXPECT_CUDA_OK(cudaFree(p));
}

TEST(Limit, IdleMemoryIsReleasedToStayWithinTheLimit) {
  void *a = nullptr, *b = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&a, 200 * kMiB));
  ASSERT_CUDA_OK(cudaFree(a));
  ASSERT_CUDA_OK(cudaMalloc(&b, 150 * kMiB)) << "the idle 200 MiB must make room";
  EXPECT_LE(counters().peak_bytes_held, 256 * kMiB);
  EXPECT_CUDA_OK(cudaFree(b));
}

TEST(Limit, MemGetInfoReportsTheLimit) {
  auto [free0, total0] = shim_mem_info();
  EXPECT_EQ(256 * kMiB, total0);
  EXPECT_LE(free0, 256 * kMiB);
  void* a = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&a, 100 * kMiB));
  auto [free1, total1] = shim_mem_info();
  EXPECT_EQ(256 * kMiB, total1);
  EXPECT_LE(free1, 156 * kMiB) << "free must leave out the bytes in use";
  ASSERT_CUDA_OK(cudaFree(a));
  auto [free2, total2] = shim_mem_info();
  EXPECT_EQ(256 * kMiB, total2);
  EXPECT_LE(free2, 256 * kMiB);
  EXPECT_GE(free2, 250 * kMiB) << "the idle block counts as free";
}

// ---- MemGetInfo (§4.8) ------------------------------------------------------------------------

TEST(MemGetInfo, IdlePoolBytesCountAsFree) {
  auto [free0, total0] = shim_mem_info();
  ASSERT_LE(free0, total0);
  void* p = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&p, 100 * kMiB));
  auto [free1, total1] = shim_mem_info();
  EXPECT_EQ(total0, total1);
  EXPECT_LE(free1, free0 - 100 * kMiB + 2 * kMiB);
  ASSERT_CUDA_OK(cudaFree(p));
  auto [free2, total2] = shim_mem_info();
  EXPECT_EQ(total0, total2);
  EXPECT_LE(free2, total2);
  EXPECT_GE(free2 + 2 * kMiB, free0) << "the idle 100 MiB must count as free";
  // The runtime itself still sees the pool's segment as used.
  auto [native_free, native_total] = native_mem_info();
  EXPECT_EQ(native_total, total2);
  EXPECT_EQ(native_free + counters().bytes_held, total2)
      << "stand-in accounting (other memory must be 0)";
  EXPECT_LE(native_free + 100 * kMiB, free2);
}

TEST(MemGetInfo, NeverAboveTheDeviceTotal) {
  auto set_other = reinterpret_cast<void (*)(int, unsigned long long)>(
      dlsym(dlopen("libcudart.so.13", RTLD_NOW | RTLD_NOLOAD), "standinSetOtherMemory"));
  ASSERT_NE(nullptr, set_other);
  std::vector<void*> blocks(6);
  for (void*& p : blocks)
    ASSERT_CUDA_OK(cudaMalloc(&p, 64 * kMiB));
  for (std::size_t i = 0; i < blocks.size(); i += 2)
    ASSERT_CUDA_OK(cudaFree(blocks[i]));
  for (unsigned long long other : {0ull, 100ull * kMiB, 700ull * kMiB, 0ull}) {
    set_other(-1, other);
    auto [free, total] = shim_mem_info();
    auto [native_free, native_total] = native_mem_info();
    EXPECT_EQ(native_total, total);
    EXPECT_LE(free, total) << "other memory " << other;
    EXPECT_GE(free, native_free);
  }
  for (std::size_t i = 1; i < blocks.size(); i += 2)
    ASSERT_CUDA_OK(cudaFree(blocks[i]));
}

// ---- DeviceReset (§4.7): IDLE_RELEASE_MS=200, LOW_WATERMARK=0 ---------------------------------

TEST(DeviceReset, DropsThePoolWithoutFreeingAnything) {
  std::vector<void*> live, freed;
  for (std::size_t size : {4 * kKiB, 600 * kKiB, 3 * kMiB, 16 * kMiB, 64 * kMiB}) {
    void *a = nullptr, *b = nullptr;
    ASSERT_CUDA_OK(cudaMalloc(&a, size));
    ASSERT_CUDA_OK(cudaMalloc(&b, size));
    live.push_back(a);
    freed.push_back(b);
  }
  for (void* p : freed)
    ASSERT_CUDA_OK(cudaFree(p));
  const StandinCounters before = counters();
  ASSERT_GT(before.bytes_held, 0u);
  ASSERT_CUDA_OK(cudaDeviceReset());
  StandinCounters after = counters();
  EXPECT_EQ(0u, after.bytes_held) << "the reset frees every segment";
  EXPECT_EQ(before.frees, after.frees) << "the shim freed segments around the reset";
  EXPECT_EQ(before.free_failures, after.free_failures);
  // The idle timer fires well within this: a pool that still knew its segments would free them.
  sleep_ms(800);
  after = counters();
  EXPECT_EQ(before.frees, after.frees) << "a release after the reset freed old segments";
  EXPECT_EQ(before.free_failures, after.free_failures)
      << "a release after the reset freed segments the reset had freed";
  // Allocation works again, pooled, and the idle timer releases the new segments normally.
  EXPECT_LE(driver_mallocs_for_pairs(4 * kKiB), 1u);
  EXPECT_TRUE(wait_until(milliseconds(3000), [] { return counters().bytes_held == 0; }))
      << "the new pool's idle segment was not released";
  EXPECT_EQ(0u, counters().free_failures);
}

TEST(DeviceReset, BlocksAfterTheResetNeverOverlap) {
  // Live blocks before the reset; afterwards the runtime hands the same addresses out again, so a
  // pool that still knew the old blocks would confuse them with the new ones.
  std::vector<void*> before_reset(16);
  for (void*& p : before_reset)
    ASSERT_CUDA_OK(cudaMalloc(&p, 64 * kKiB));
  ASSERT_CUDA_OK(cudaDeviceReset());
  std::mt19937 rng(7);
  std::vector<Block> live;
  std::uint64_t seed = 1000;
  int overlaps = 0, corrupted = 0;
  for (int op = 0; op < 3000; ++op) {
    if (live.empty() || (live.size() < 64 && rng() % 2 == 0)) {
      Block b{nullptr, (1 + rng() % 128) * 512, ++seed};
      ASSERT_CUDA_OK(cudaMalloc(&b.ptr, b.size));
      ASSERT_TRUE(is_device_range(b.ptr, b.size))
          << "cudaMalloc handed out " << b.ptr << " (+" << b.size << "): not device memory";
      for (const Block& other : live)
        if (addr(b.ptr) < addr(other.ptr) + other.size && addr(other.ptr) < addr(b.ptr) + b.size)
          ++overlaps;
      fill_pattern(b.ptr, b.size, b.seed);
      live.push_back(b);
    } else {
      const std::size_t i = rng() % live.size();
      if (pattern_mismatch(live[i].ptr, live[i].size, live[i].seed) != -1) ++corrupted;
      ASSERT_CUDA_OK(cudaFree(live[i].ptr));
      live[i] = live.back();
      live.pop_back();
    }
  }
  EXPECT_EQ(0, overlaps) << "blocks handed out after the reset overlap live ones";
  EXPECT_EQ(0, corrupted);
  for (const Block& b : live)
    EXPECT_CUDA_OK(cudaFree(b.ptr));
}

// ---- Disabled (§4.1): CUDAPOOL_DISABLE=1 --------------------------------------------------------

TEST(Disabled, EveryCallPassesThrough) {
  const StandinCounters before = counters();
  EXPECT_EQ(100u, driver_mallocs_for_pairs(4 * kKiB));
  EXPECT_EQ(before.frees + 100, counters().frees);
  void* p = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&p, 4096));
  ASSERT_CUDA_OK(cudaFree(p));
  // A double free gets the runtime's own answer.
  const cudaError_t through_shim = cudaFree(p);
  const cudaError_t native_answer = native().cudaFree(p);
  EXPECT_EQ(native_answer, through_shim);
  EXPECT_EQ(before.free_failures + 2, counters().free_failures);
  cudaGetLastError();
}

// ---- BadOption (§4.1): CUDAPOOL_HIGH_WATERMARK=lots, CUDAPOOL_LOG_FILE=<file> -------------------

TEST(BadOption, WarnsOnceNamingTheVariableAndKeepsWorking) {
  const char* log = std::getenv("CUDAPOOL_LOG_FILE");
  ASSERT_NE(nullptr, log) << "set CUDAPOOL_LOG_FILE";
  remove_path(log);  // the shim opens it at the first call, below
  EXPECT_LE(driver_mallocs_for_pairs(4 * kKiB), 1u) << "the pool must work with the default";
  EXPECT_LE(driver_mallocs_for_pairs(4 * kKiB), 0u);
  const std::string text = read_file(log);
  int warnings = 0;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (line.find("CUDAPOOL_HIGH_WATERMARK") == std::string::npos) continue;
    ++warnings;
    EXPECT_NE(std::string::npos, line.find("lots")) << line;
    EXPECT_NE(std::string::npos, line.find("warn")) << line;
  }
  EXPECT_EQ(1, warnings) << "log:\n" << text;
}

// ---- NoDriver (§4.4): STANDIN_NO_DRIVER=1 -------------------------------------------------------

TEST(NoDriver, EveryCallReturnsWhatTheRuntimeReturns) {
  const NativeRuntime& rt = native();
  ASSERT_NE(nullptr, rt.cudaMalloc);
  void* const sentinel = reinterpret_cast<void*>(0x5a5a000);
  struct Probe {
    const char* what;
    std::function<cudaError_t()> shim, native;
  };
  void *p_shim = sentinel, *p_native = sentinel;
  std::size_t f_shim = 7, t_shim = 7, f_native = 7, t_native = 7;
  cudaIpcMemHandle_t handle{};
  cudaStream_t stream = nullptr;
  std::vector<Probe> probes = {
      {"cudaMalloc(1 MiB)", [&] { return cudaMalloc(&p_shim, kMiB); },
       [&] { return rt.cudaMalloc(&p_native, kMiB); }},
      {"cudaMalloc(0)", [&] { return cudaMalloc(&p_shim, 0); },
       [&] { return rt.cudaMalloc(&p_native, 0); }},
      {"cudaMalloc(null out)", [&] { return cudaMalloc(nullptr, kMiB); },
       [&] { return rt.cudaMalloc(nullptr, kMiB); }},
      {"cudaMalloc(SIZE_MAX)", [&] { return cudaMalloc(&p_shim, SIZE_MAX); },
       [&] { return rt.cudaMalloc(&p_native, SIZE_MAX); }},
      {"cudaFree(0)", [&] { return cudaFree(nullptr); }, [&] { return rt.cudaFree(nullptr); }},
      {"cudaFree(bogus)", [&] { return cudaFree(sentinel); },
       [&] { return rt.cudaFree(sentinel); }},
      {"cudaMemGetInfo", [&] { return cudaMemGetInfo(&f_shim, &t_shim); },
       [&] { return rt.cudaMemGetInfo(&f_native, &t_native); }},
      {"cudaIpcGetMemHandle", [&] { return cudaIpcGetMemHandle(&handle, sentinel); },
       [&] { return rt.cudaIpcGetMemHandle(&handle, sentinel); }},
      {"cudaStreamBeginCapture",
       [&] { return cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal); },
       [&] { return rt.cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal); }},
      {"cudaStreamEndCapture", [&] { return cudaStreamEndCapture(stream, nullptr); },
       [&] { return rt.cudaStreamEndCapture(stream, nullptr); }},
      {"cudaDeviceReset", [&] { return cudaDeviceReset(); }, [&] { return rt.cudaDeviceReset(); }},
  };
  for (const Probe& probe : probes) {
    const cudaError_t through_shim = probe.shim();
    const cudaError_t native_answer = probe.native();
    EXPECT_EQ(native_answer, through_shim) << probe.what;
    EXPECT_EQ(cudaErrorInsufficientDriver, through_shim) << probe.what;
    EXPECT_EQ(p_native, p_shim) << probe.what << " wrote a different out-pointer";
  }
  EXPECT_EQ(f_native, f_shim);
  EXPECT_EQ(t_native, t_shim);
  int count = 7;
  EXPECT_EQ(cudaErrorInsufficientDriver, cudaGetDeviceCount(&count));
}

}  // namespace
}  // namespace integ
