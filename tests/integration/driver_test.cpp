// The driver's allocation calls served by the pool (docs/driver-api.md), in three kinds of
// process, one program each (DRIVER_TEST_KIND):
//   1 driver_only:    linked with the stand-in libcuda.so.1 only (-lcuda), no runtime;
//   2 static_runtime: the stand-in static runtime (reaches the driver by dlopen + dlsym of
//                     cuGetProcAddress_v2, then cuGetProcAddress);
//   3 mixed:          the shared runtime and the driver API in one process.
#include <cuda.h>
#include <dlfcn.h>

#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/integration_util.h"
#if DRIVER_TEST_KIND == 2
#include "tests/standin/static_runtime.h"
#endif

namespace integ {
namespace {

// Application calls made in the churn, and the driver allocations they may cost at most (1%).
constexpr int kChurnCalls = 20000;

#if DRIVER_TEST_KIND == 1 || DRIVER_TEST_KIND == 3

// The current thread on device 0's primary context.
void use_device0() {
  ASSERT_EQ(CUDA_SUCCESS, cuInit(0));
  CUdevice dev = 0;
  ASSERT_EQ(CUDA_SUCCESS, cuDeviceGet(&dev, 0));
  CUcontext ctx = nullptr;
  ASSERT_EQ(CUDA_SUCCESS, cuDevicePrimaryCtxRetain(&ctx, dev));
  ASSERT_EQ(CUDA_SUCCESS, cuCtxSetCurrent(ctx));
}

// Mixed sizes through cuMemAlloc_v2/cuMemFree_v2, a window of live blocks with patterns.
void churn_through_the_driver() {
  std::mt19937 rng(7);
  std::vector<std::pair<CUdeviceptr, std::size_t>> live;
  for (int i = 0; i < kChurnCalls / 2; ++i) {
    const std::size_t sizes[] = {512, 4 * kKiB, 100 * kKiB, 3 * kMiB, 12 * kMiB};
    const std::size_t n = sizes[rng() % 5];
    CUdeviceptr p = 0;
    ASSERT_EQ(CUDA_SUCCESS, cuMemAlloc_v2(&p, n));
    stamp_pattern(reinterpret_cast<void*>(p), n, 11);
    live.emplace_back(p, n);
    if (live.size() > 32) {
      const std::size_t k = rng() % live.size();
      ASSERT_TRUE(stamps_intact(reinterpret_cast<void*>(live[k].first), live[k].second, 11));
      ASSERT_EQ(CUDA_SUCCESS, cuMemFree_v2(live[k].first));
      live.erase(live.begin() + static_cast<long>(k));
    }
  }
  for (auto& [p, n] : live)
    ASSERT_EQ(CUDA_SUCCESS, cuMemFree_v2(p));
}

TEST(DriverApi, ChurnIsPooledAndTheDriverSeesAtMostOnePercent) {
  use_device0();
  const StandinCounters before = counters();
  churn_through_the_driver();
  const StandinCounters after = counters();
  const auto driver_allocs = after.driver_mallocs - before.driver_mallocs;
  const auto runtime_allocs = after.mallocs - before.mallocs;
  // The pool's own segments come through the runtime (mixed) or the driver (driver alone); with
  // pages, from cuMemCreate. Unpooled, the churn would be kChurnCalls / 2 driver allocations.
  EXPECT_LE((driver_allocs + runtime_allocs) * 100, static_cast<unsigned long long>(kChurnCalls))
      << driver_allocs << " driver and " << runtime_allocs << " runtime allocations";
  EXPECT_EQ(0u, after.free_failures);
}

TEST(DriverApi, TheDriversErrorCodes) {
  use_device0();
  CUdeviceptr p = 0;
  EXPECT_EQ(CUDA_ERROR_INVALID_VALUE, cuMemAlloc_v2(&p, 0));
  EXPECT_EQ(CUDA_ERROR_INVALID_VALUE, cuMemAlloc_v2(nullptr, 4096));
  ASSERT_EQ(CUDA_SUCCESS, cuMemAlloc_v2(&p, 3 * kMiB));
  CUdeviceptr q = 0;
  ASSERT_EQ(CUDA_SUCCESS, cuMemAlloc_v2(&q, 3 * kMiB));
  fill_pattern(reinterpret_cast<void*>(q), 3 * kMiB, 5);
  // The block holding an interior address.
  CUdeviceptr base = 0;
  size_t size = 0;
  ASSERT_EQ(CUDA_SUCCESS, cuMemGetAddressRange_v2(&base, &size, p + 1000));
  EXPECT_EQ(base, p);
  EXPECT_GE(size, 3 * kMiB);
  // Interior and double frees: refused, the neighbour intact.
  EXPECT_EQ(CUDA_ERROR_INVALID_VALUE, cuMemFree_v2(p + 512));
  ASSERT_EQ(CUDA_SUCCESS, cuMemFree_v2(p));
  EXPECT_EQ(CUDA_ERROR_INVALID_VALUE, cuMemFree_v2(p));
  EXPECT_EQ(-1, pattern_mismatch(reinterpret_cast<void*>(q), 3 * kMiB, 5));
  ASSERT_EQ(CUDA_SUCCESS, cuMemFree_v2(q));
  // No current context on a fresh thread: the driver's answer.
  std::thread([] {
    CUdeviceptr r = 0;
    EXPECT_EQ(CUDA_ERROR_INVALID_CONTEXT, cuMemAlloc_v2(&r, 4096));
  }).join();
  size_t free = 0, total = 0;
  EXPECT_EQ(CUDA_SUCCESS, cuMemGetInfo_v2(&free, &total));
  EXPECT_LE(free, total);
  EXPECT_GT(total, 0u);
}

#endif

#if DRIVER_TEST_KIND == 1 || DRIVER_TEST_KIND == 3
TEST(DriverApi, AnInjectedDriverFailureIsAbsorbedAndTheProcessKeepsWorking) {
  use_device0();
  auto inject = reinterpret_cast<void (*)(int)>(
      dlsym(dlopen("libcudart.so.13", RTLD_NOW | RTLD_NOLOAD), "standinInjectMallocFailures"));
  ASSERT_NE(nullptr, inject);
  const unsigned long long failures = counters().malloc_failures;
  inject(1);  // the next allocation the pool asks the driver for fails once (segments)
  CUdeviceptr p = 0;
  EXPECT_EQ(CUDA_SUCCESS, cuMemAlloc_v2(&p, 40 * kMiB + 3));
  fill_pattern(reinterpret_cast<void*>(p), 4096, 9);
  CUdeviceptr q = 0;
  EXPECT_EQ(CUDA_SUCCESS, cuMemAlloc_v2(&q, 40 * kMiB + 3));
  EXPECT_EQ(-1, pattern_mismatch(reinterpret_cast<void*>(p), 4096, 9));
  EXPECT_EQ(CUDA_SUCCESS, cuMemFree_v2(p));
  EXPECT_EQ(CUDA_SUCCESS, cuMemFree_v2(q));
  // On segments the pool's own allocation took the failure; with pages it allocates with
  // cuMemCreate, which the injection does not reach.
  const char* vmm = std::getenv("CUDAPOOL_VMM");
  if (vmm != nullptr && std::string(vmm) == "off") {
    EXPECT_EQ(failures + 1, counters().malloc_failures) << "the injected failure did not happen";
  }
  inject(0);
}
#endif

#if DRIVER_TEST_KIND == 1
INTEG_SCENARIO(before_cu_init) {
  CUdeviceptr p = 0;
  return cuMemAlloc_v2(&p, 4096) == CUDA_ERROR_NOT_INITIALIZED ? 0 : 1;
}

TEST(DriverApi, BeforeCuInitTheAnswerIsNotInitialized) {
  ProcessResult r = run_scenario("before_cu_init", EnvChanges{});
  EXPECT_EQ(0, r.exit_code) << describe(r);
}
#endif

#if DRIVER_TEST_KIND == 3
TEST(DriverApi, BlocksFreeAcrossTheTwoApisAndNothingIsPooledTwice) {
  use_device0();
  const StandinCounters before = counters();
  void* a = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&a, 1 * kMiB));
  ASSERT_EQ(CUDA_SUCCESS, cuMemFree_v2(reinterpret_cast<CUdeviceptr>(a)));
  CUdeviceptr b = 0;
  ASSERT_EQ(CUDA_SUCCESS, cuMemAlloc_v2(&b, 1 * kMiB));
  ASSERT_CUDA_OK(cudaFree(reinterpret_cast<void*>(b)));
  for (int i = 0; i < 1000; ++i) {
    void* p = nullptr;
    ASSERT_CUDA_OK(cudaMalloc(&p, 64 * kKiB));
    ASSERT_CUDA_OK(cudaFree(p));
  }
  const StandinCounters after = counters();
  // The pool's segments come from the runtime's cudaMalloc, which reaches the driver through the
  // functions the runtime looked up itself: none came back through cudapool's driver calls.
  EXPECT_EQ(after.driver_mallocs, before.driver_mallocs);
  EXPECT_LE(after.mallocs - before.mallocs, 20u);  // 1% of the 2004 calls
  EXPECT_EQ(0u, after.free_failures);
}
#endif

#if DRIVER_TEST_KIND == 2
TEST(StaticRuntime, ChurnIsPooledThroughTheLookups) {
  ASSERT_EQ(cudaSuccess, static_cudaSetDevice(0));
  void* first = nullptr;
  ASSERT_EQ(cudaSuccess, static_cudaMalloc(&first, 4096));  // starts the driver
  const StandinCounters before = counters();
  std::mt19937 rng(3);
  std::vector<void*> live;
  for (int i = 0; i < kChurnCalls / 2; ++i) {
    const std::size_t sizes[] = {512, 64 * kKiB, 2 * kMiB, 12 * kMiB};
    void* p = nullptr;
    ASSERT_EQ(cudaSuccess, static_cudaMalloc(&p, sizes[rng() % 4]));
    live.push_back(p);
    if (live.size() > 16) {
      ASSERT_EQ(cudaSuccess, static_cudaFree(live.front()));
      live.erase(live.begin());
    }
  }
  for (void* p : live)
    ASSERT_EQ(cudaSuccess, static_cudaFree(p));
  ASSERT_EQ(cudaSuccess, static_cudaFree(first));
  const StandinCounters after = counters();
  EXPECT_LE((after.driver_mallocs - before.driver_mallocs) * 100,
            static_cast<unsigned long long>(kChurnCalls))
      << "the static runtime's allocations were not pooled";
  EXPECT_EQ(0u, after.free_failures);
}
#endif

}  // namespace
}  // namespace integ
