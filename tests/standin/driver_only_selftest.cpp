// A program linked only with the stand-in libcuda.so.1 (-lcuda, no libcudart): the driver works
// on its own. cuInit loads the stand-in runtime privately to own the state; counters are read
// through the driver's own standinGetCounters (which forwards to that runtime).
// `standin.driver_only`.
#include <cuda.h>
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <thread>

#include "cuda_standin.h"

namespace {

constexpr size_t kMiB = size_t{1} << 20;

StandinCounters Counters() {
  StandinCounters c{};
  EXPECT_EQ(standinGetCounters(-1, &c), 0);
  return c;
}

// One test: the order matters (before and after cuInit).
TEST(DriverOnly, InitContextsMemoryAndCounters) {
  // No runtime in the process yet.
  EXPECT_EQ(dlopen("libcudart.so.13", RTLD_NOW | RTLD_NOLOAD), nullptr);
  int n = -1;
  EXPECT_EQ(cuDeviceGetCount(&n), CUDA_ERROR_NOT_INITIALIZED);
  CUdeviceptr p = 0;
  EXPECT_EQ(cuMemAlloc(&p, kMiB), CUDA_ERROR_NOT_INITIALIZED);
  CUcontext ctx = nullptr;
  EXPECT_EQ(cuCtxGetCurrent(&ctx), CUDA_ERROR_NOT_INITIALIZED);
  StandinCounters c{};
  EXPECT_EQ(standinGetCounters(-1, &c), -1) << "no runtime state before cuInit";
  // cuGetProcAddress needs no cuInit (NVIDIA's runtime looks cuInit up with it).
  void* fn = nullptr;
  CUdriverProcAddressQueryResult status{};
  ASSERT_EQ(cuGetProcAddress("cuMemAlloc", &fn, 13000, 0, &status), CUDA_SUCCESS);
  EXPECT_EQ(fn, reinterpret_cast<void*>(&cuMemAlloc_v2));

  ASSERT_EQ(cuInit(0), CUDA_SUCCESS);
  EXPECT_NE(dlopen("libcudart.so.13", RTLD_NOW | RTLD_NOLOAD), nullptr)
      << "cuInit did not load the runtime";
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "cudaMalloc"), nullptr) << "the runtime is private (RTLD_LOCAL)";
  ASSERT_EQ(cuDeviceGetCount(&n), CUDA_SUCCESS);
  EXPECT_EQ(n, 1);
  ASSERT_EQ(cuCtxGetCurrent(&ctx), CUDA_SUCCESS);
  EXPECT_EQ(ctx, nullptr) << "no context is current after cuInit";
  EXPECT_EQ(cuMemAlloc(&p, kMiB), CUDA_ERROR_INVALID_CONTEXT);

  CUdevice dev = 0;
  ASSERT_EQ(cuDeviceGet(&dev, 0), CUDA_SUCCESS);
  unsigned flags = 0;
  int active = -1;
  ASSERT_EQ(cuDevicePrimaryCtxGetState(dev, &flags, &active), CUDA_SUCCESS);
  EXPECT_EQ(active, 0);
  ASSERT_EQ(cuDevicePrimaryCtxRetain(&ctx, dev), CUDA_SUCCESS);
  ASSERT_EQ(cuDevicePrimaryCtxGetState(dev, &flags, &active), CUDA_SUCCESS);
  EXPECT_EQ(active, 1);
  ASSERT_EQ(cuCtxSetCurrent(ctx), CUDA_SUCCESS);

  const StandinCounters c0 = Counters();
  ASSERT_EQ(cuMemAlloc(&p, kMiB), CUDA_SUCCESS);
  StandinAllocationInfo info{};
  ASSERT_EQ(standinGetAllocationInfo(reinterpret_cast<void*>(p), &info), 0);
  EXPECT_EQ(info.api, STANDIN_API_DRIVER);
  const StandinCounters c1 = Counters();
  EXPECT_EQ(c1.driver_mallocs, c0.driver_mallocs + 1);
  EXPECT_EQ(c1.mallocs, c0.mallocs);
  EXPECT_EQ(c1.bytes_held, c0.bytes_held + kMiB);
  size_t free_bytes = 0, total = 0;
  ASSERT_EQ(cuMemGetInfo(&free_bytes, &total), CUDA_SUCCESS);
  EXPECT_EQ(total - free_bytes, kMiB);
  ASSERT_EQ(cuCtxSynchronize(), CUDA_SUCCESS);
  ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);
  EXPECT_EQ(Counters().driver_frees, c1.driver_frees + 1);
  EXPECT_EQ(cuMemFree(p), CUDA_ERROR_INVALID_VALUE);

  // Another thread shares nothing but the process: it needs its own current context.
  std::thread([&] {
    CUdeviceptr q = 0;
    EXPECT_EQ(cuMemAlloc(&q, kMiB), CUDA_ERROR_INVALID_CONTEXT);
    EXPECT_EQ(cuCtxPushCurrent(ctx), CUDA_SUCCESS);
    EXPECT_EQ(cuMemAlloc(&q, kMiB), CUDA_SUCCESS);
    EXPECT_EQ(cuMemFree(q), CUDA_SUCCESS);
  }).join();

  // The last release of a primary context the runtime does not use resets it: its allocations
  // go; the handle stays valid for a later retain.
  ASSERT_EQ(cuMemAlloc(&p, kMiB), CUDA_SUCCESS);
  EXPECT_EQ(Counters().bytes_held, kMiB);
  ASSERT_EQ(cuDevicePrimaryCtxRelease(dev), CUDA_SUCCESS);
  EXPECT_EQ(Counters().bytes_held, 0u);
  EXPECT_EQ(standinGetAllocationInfo(reinterpret_cast<void*>(p), &info), -1);
  EXPECT_EQ(cuDevicePrimaryCtxRelease(dev), CUDA_ERROR_INVALID_CONTEXT) << "not retained";
  ASSERT_EQ(cuDevicePrimaryCtxGetState(dev, &flags, &active), CUDA_SUCCESS);
  EXPECT_EQ(active, 0);
  CUcontext again = nullptr;
  ASSERT_EQ(cuDevicePrimaryCtxRetain(&again, dev), CUDA_SUCCESS);
  EXPECT_EQ(again, ctx);
}

}  // namespace
