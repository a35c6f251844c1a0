// dlsym with the library preloaded (docs/driver-api.md): pooled names looked up on the runtime's
// or the driver's handle give cudapool's functions; every other lookup gives exactly the answer
// it gives without cudapool, RTLD_NEXT included.
#include <dlfcn.h>

#include <string>

#include "tests/integration/integration_util.h"
#include "tools/native_symbol.h"

extern "C" void* lookup_probe_next(const char* name);

namespace integ {
namespace {

std::string file_of(const void* address) {
  Dl_info info{};
  return address != nullptr && dladdr(address, &info) != 0 && info.dli_fname != nullptr
             ? info.dli_fname
             : "";
}

bool in_cudapool(const void* address) {
  return file_of(address).find("libcudapool.so") != std::string::npos;
}

// The runtime (this program links it: the call below) and the driver it loaded.
void* runtime_handle() {
  EXPECT_EQ(cudaSuccess, cudaFree(nullptr));
  return dlopen("libcudart.so.13", RTLD_NOW | RTLD_NOLOAD);
}
void* driver_handle() {
  return dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
}

TEST(Dlsym, RtldNextFromALibraryIsRelativeToThatLibrary) {
  // probe.so and twin.so both define lookup_twin; RTLD_NEXT from probe.so must find twin.so's,
  // not probe.so's own (which a lookup made from inside cudapool would find first).
  auto next = reinterpret_cast<int (*)()>(lookup_probe_next("lookup_twin"));
  ASSERT_NE(next, nullptr);
  EXPECT_EQ(next(), 2) << file_of(reinterpret_cast<void*>(next));
  // And a name the probe's successors lack stays missing.
  EXPECT_EQ(lookup_probe_next("lookup_no_such_name"), nullptr);
}

TEST(Dlsym, RtldNextAndDefaultFromTheProgramFindCudapoolsExportsFirst) {
  EXPECT_TRUE(in_cudapool(dlsym(RTLD_NEXT, "cudaMalloc")));
  EXPECT_TRUE(in_cudapool(dlsym(RTLD_DEFAULT, "cudaMalloc")));
  EXPECT_EQ(dlsym(RTLD_NEXT, "malloc"), dlsym(RTLD_DEFAULT, "malloc"));
}

TEST(Dlsym, PooledNamesOnTheRuntimesHandleAreCudapools) {
  void* rt = runtime_handle();
  ASSERT_NE(rt, nullptr);
  void* own = dlsym(RTLD_DEFAULT, "cudaMalloc");
  ASSERT_TRUE(in_cudapool(own));
  EXPECT_EQ(dlsym(rt, "cudaMalloc"), own);
  EXPECT_EQ(dlsym(rt, "cudaFree"), dlsym(RTLD_DEFAULT, "cudaFree"));
  // The runtime's own function is still there for whoever asks for its version.
  void* real = dlvsym(rt, "cudaMalloc", "libcudart.so.13");
  ASSERT_NE(real, nullptr);
  EXPECT_FALSE(in_cudapool(real));
}

TEST(Dlsym, OtherNamesAreTheLibrariesOwn) {
  void* rt = runtime_handle();  // first: it loads the driver
  void* drv = driver_handle();
  ASSERT_NE(rt, nullptr);
  ASSERT_NE(drv, nullptr);
  for (const char* name : {"cudaGetDevice", "cudaSetDevice", "cudaStreamCreate"}) {
    EXPECT_EQ(dlsym(rt, name), cudapool::tools::native_symbol("libcudart.so", name)) << name;
    EXPECT_FALSE(in_cudapool(dlsym(rt, name))) << name;
  }
  for (const char* name : {"cuInit", "cuDeviceGet", "cuCtxGetCurrent", "cuMemCreate"}) {
    EXPECT_EQ(dlsym(drv, name), cudapool::tools::native_symbol("libcuda.so", name)) << name;
  }
  EXPECT_EQ(dlsym(drv, "cuNoSuchFunction"), nullptr);
  EXPECT_EQ(dlsym(rt, "cudaNoSuchFunction"), nullptr);
}

}  // namespace
}  // namespace integ
