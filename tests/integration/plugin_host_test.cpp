// A host that does not link libcudart loads a plugin that does, with dlopen(RTLD_LOCAL) (how Python
// loads PyTorch): the runtime is then invisible to dlsym(RTLD_NEXT) from the shim, which must find
// it among the loaded objects (DESIGN §4.3). The plugin's path comes as --plugin=PATH.
#include <dlfcn.h>

#include <string>

#include "tests/integration/integration_util.h"
#include "tests/integration/plugin_api.h"

namespace integ {
namespace {

PluginAllocFreePairsFn load_plugin() {
  const std::string path = flag_value("--plugin");
  EXPECT_FALSE(path.empty()) << "pass --plugin=PATH";
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  EXPECT_NE(nullptr, handle) << dlerror();
  if (handle == nullptr) return nullptr;
  auto fn = reinterpret_cast<PluginAllocFreePairsFn>(dlsym(handle, PLUGIN_ALLOC_FREE_PAIRS));
  EXPECT_NE(nullptr, fn);
  return fn;
}

void expect_pooled(PluginAllocFreePairsFn run) {
  ASSERT_NE(nullptr, run);
  // The runtime stays private to the plugin.
  EXPECT_EQ(nullptr, dlsym(RTLD_DEFAULT, "standinIsStandin")) << "libcudart is globally visible";
  EXPECT_EQ(nullptr, dlsym(RTLD_DEFAULT, "cudaGetDeviceCount")) << "libcudart is globally visible";
  PluginReport small{}, large{};
  EXPECT_EQ(0, run(100, 4096, &small));
  EXPECT_EQ(0, small.errors);
  EXPECT_LE(small.driver_mallocs, 1u) << "the plugin's allocations are not pooled";
  EXPECT_EQ(0u, small.driver_frees);
  EXPECT_EQ(0, run(20, 16 << 20, &large));
  EXPECT_EQ(0, large.errors);
  EXPECT_LE(large.driver_mallocs, 1u) << "the plugin's large allocations are not pooled";
}

TEST(Plugin, PrivatelyLoadedRuntimeIsPooled) {
  ASSERT_EQ(nullptr, dlopen("libcudart.so.13", RTLD_NOW | RTLD_NOLOAD))
      << "the host must not load libcudart itself";
  expect_pooled(load_plugin());
}

TEST(Plugin, CallBeforeTheRuntimeIsLoadedThenPooled) {
  // A host probing for CUDA before any runtime is loaded reaches the shim alone: it must answer
  // (not crash), and resolve the runtime once a plugin brings one.
  auto cuda_free = reinterpret_cast<cudaError_t (*)(void*)>(dlsym(RTLD_DEFAULT, "cudaFree"));
  ASSERT_NE(nullptr, cuda_free);
  EXPECT_NE(cudaSuccess, cuda_free(nullptr));
  expect_pooled(load_plugin());
}

}  // namespace
}  // namespace integ
