// The real runtime partly missing (issue 4, DESIGN §4.1): the program links a runtime that has
// cudaMalloc and cudaFree but lacks functions the pool needs (partial_runtime.cpp). The library
// must not pool (it cannot fence, query or reset), must not crash, and must pass every call
// through: the runtime's own answers, and one log line (on stderr: the options, and so
// CUDAPOOL_LOG_FILE, are read only when the pool starts).
#include <dlfcn.h>

#include <string>

#include "tests/integration/integration_util.h"

extern "C" int partialRuntimeCalls();

namespace integ {
namespace {

// Exit code 0, or the number of the first check that failed.
INTEG_SCENARIO(passthrough) {
  const int before = partialRuntimeCalls();
  void* p = nullptr;
  if (cudaMalloc(&p, 4 * kKiB) != cudaSuccess || p == nullptr) return 10;
  if (reinterpret_cast<std::uintptr_t>(p) % 512 != 0) return 11;
  fill_pattern(p, 4 * kKiB, 1);
  if (pattern_mismatch(p, 4 * kKiB, 1) != -1) return 12;
  if (cudaFree(p) != cudaSuccess) return 13;
  // Not pooled: each pair reaches the runtime (a pool would serve them from its cache).
  for (int i = 0; i < 10; ++i)
    if (cudaMalloc(&p, 4 * kKiB) != cudaSuccess || cudaFree(p) != cudaSuccess) return 14;
  if (partialRuntimeCalls() - before < 22) return 15;
  // The runtime's own answers for the odd cases too.
  if (cudaMalloc(nullptr, kKiB) != cudaErrorInvalidValue) return 16;
  if (cudaMalloc(&p, SIZE_MAX) != cudaErrorMemoryAllocation) return 17;
  if (cudaFree(nullptr) != cudaSuccess) return 18;
  // A function the runtime lacks answers (no crash) through the library.
  auto mem_get_info =
      reinterpret_cast<cudaError_t (*)(size_t*, size_t*)>(dlsym(RTLD_DEFAULT, "cudaMemGetInfo"));
  if (mem_get_info == nullptr) return 19;
  std::size_t free_bytes = 0, total = 0;
  if (mem_get_info(&free_bytes, &total) != cudaErrorInsufficientDriver) return 20;
  return 0;
}

TEST(PartialRuntime, EveryCallPassesThroughToWhatIsThere) {
  const ProcessResult r = run_scenario("passthrough", EnvChanges{});
  EXPECT_EQ(0, r.exit_code) << describe(r);
  std::size_t lines = 0;
  for (std::size_t at = 0;
       (at = r.output.find("passes every call through", at)) != std::string::npos; ++at)
    ++lines;
  EXPECT_EQ(1u, lines) << "one log line says why the pool is off: " << describe(r);
}

}  // namespace
}  // namespace integ
