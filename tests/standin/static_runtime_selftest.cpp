// A program built as with nvcc's default -cudart static: linked with the stand-in static runtime
// (cudart_static_standin, static_runtime.h), no libcudart.so and no libcuda.so at link time. Its
// runtime reaches the driver by dlopen("libcuda.so.1") + cuGetProcAddress; the driver loads the
// stand-in runtime privately. Counters: the driver's standinGetCounters, found with dlsym on the
// libcuda.so.1 handle. `standin.static_runtime`.
#include <dlfcn.h>
#include <gtest/gtest.h>

#include "cuda_standin.h"
#include "selftest_child.h"
#include "static_runtime.h"

using standin_test::ExpectChildPasses;
using standin_test::InChild;

namespace {

constexpr size_t kMiB = size_t{1} << 20;

StandinCounters Counters(int device = -1) {
  using Get = int (*)(int, StandinCounters*);
  void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
  EXPECT_NE(h, nullptr) << "the static runtime did not load the driver";
  auto get = h ? reinterpret_cast<Get>(dlsym(h, "standinGetCounters")) : nullptr;
  StandinCounters c{};
  EXPECT_NE(get, nullptr);
  if (get) {
    EXPECT_EQ(get(device, &c), 0);
  }
  return c;
}

TEST(StaticRuntime, AllocatesThroughTheDriverOnly) {
  EXPECT_EQ(dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD), nullptr) << "linked with libcuda";
  EXPECT_EQ(dlopen("libcudart.so.13", RTLD_NOW | RTLD_NOLOAD), nullptr) << "linked with libcudart";
  void* p = nullptr;
  ASSERT_EQ(static_cudaMalloc(&p, kMiB), cudaSuccess);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "cudaMalloc"), nullptr) << "a shared runtime is visible";
  const StandinCounters c1 = Counters();
  EXPECT_EQ(c1.driver_mallocs, 1u) << "a static runtime is a driver-API client";
  EXPECT_EQ(c1.mallocs, 0u);
  EXPECT_EQ(c1.bytes_held, kMiB);
  size_t free_bytes = 0, total = 0;
  ASSERT_EQ(static_cudaMemGetInfo(&free_bytes, &total), cudaSuccess);
  EXPECT_EQ(total - free_bytes, kMiB);
  ASSERT_EQ(static_cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(Counters().device_syncs, c1.device_syncs + 1);
  EXPECT_EQ(static_cudaFree(static_cast<char*>(p) + 8), cudaErrorInvalidValue);
  ASSERT_EQ(static_cudaFree(p), cudaSuccess);
  EXPECT_EQ(static_cudaFree(p), cudaErrorInvalidValue);
  const StandinCounters c2 = Counters();
  EXPECT_EQ(c2.driver_frees, 1u);
  EXPECT_EQ(c2.bytes_held, 0u);
  EXPECT_EQ(static_cudaMalloc(&p, size_t{32} << 30), cudaErrorMemoryAllocation);
  EXPECT_EQ(static_cudaMalloc(&p, 0), cudaSuccess);
  EXPECT_EQ(p, nullptr);
  EXPECT_EQ(static_cudaFree(nullptr), cudaSuccess);
}

TEST(DISABLED_Child, SetDevice) {
  if (!InChild()) GTEST_SKIP();
  ASSERT_EQ(static_cudaSetDevice(1), cudaSuccess);
  void* p = nullptr;
  ASSERT_EQ(static_cudaMalloc(&p, kMiB), cudaSuccess);
  EXPECT_EQ(Counters(1).driver_mallocs, 1u);
  EXPECT_EQ(Counters(0).driver_mallocs, 0u);
  EXPECT_EQ(static_cudaSetDevice(2), cudaErrorInvalidDevice);
  ASSERT_EQ(static_cudaFree(p), cudaSuccess);
}

TEST(Env, StaticRuntimeSetDevice) {
  ExpectChildPasses("DISABLED_Child.SetDevice", {"STANDIN_DEVICE_COUNT=2"});
}

}  // namespace
