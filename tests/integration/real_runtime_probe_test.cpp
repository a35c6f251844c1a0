// Linked against NVIDIA's own libcudart.so.13. On a machine without a driver every call fails with
// cudaErrorInsufficientDriver (CUDA-FACTS 15); with the shim preloaded the answers must be exactly
// those of the same program without it (DESIGN §4.4, "where the runtime itself cannot start").
#include <cstdio>
#include <string>

#include "tests/integration/integration_util.h"

namespace integ {
namespace {

// "call=code ..." lines; out-pointers as "changed"/"kept". The order is fixed: the first call
// starts the runtime.
std::string probe() {
  std::string out;
  auto line = [&](const char* what, cudaError_t err, const std::string& extra = "") {
    out += std::string(what) + "=" + std::to_string(static_cast<int>(err)) + extra + "\n";
  };
  void* const sentinel = reinterpret_cast<void*>(0x5a5a000);
  void* p = sentinel;
  line("cudaMalloc(1MiB)", cudaMalloc(&p, 1 << 20), p == sentinel ? " kept" : " changed");
  p = sentinel;
  line("cudaMalloc(0)", cudaMalloc(&p, 0), p == sentinel ? " kept" : " changed");
  line("cudaFree(0)", cudaFree(nullptr));
  line("cudaFree(bogus)", cudaFree(sentinel));
  std::size_t free = 7, total = 7;
  line("cudaMemGetInfo", cudaMemGetInfo(&free, &total),
       " " + std::to_string(free) + " " + std::to_string(total));
  int count = 7;
  line("cudaGetDeviceCount", cudaGetDeviceCount(&count), " " + std::to_string(count));
  line("cudaMalloc(null out)", cudaMalloc(nullptr, 1 << 20));
  cudaIpcMemHandle_t handle{};
  line("cudaIpcGetMemHandle", cudaIpcGetMemHandle(&handle, sentinel));
  line("cudaDeviceReset", cudaDeviceReset());
  line("cudaGetLastError", cudaGetLastError());
  return out;
}

INTEG_SCENARIO(probe) {
  std::fputs(probe().c_str(), stdout);
  return 0;
}

TEST(RealRuntime, AnswersAreThoseOfTheRuntimeWithoutTheShim) {
  const std::string preloaded = probe();  // first CUDA calls of this process
  ProcessResult plain = run_scenario("probe", without_shim());
  ASSERT_EQ(0, plain.exit_code) << describe(plain);
  EXPECT_EQ(plain.output, preloaded) << "without the shim:\n"
                                     << plain.output << "with the shim:\n"
                                     << preloaded;
  int count = 0;
  if (cudaGetDeviceCount(&count) == cudaErrorInsufficientDriver) {
    // No driver here: the documented answers (CUDA-FACTS 15).
    EXPECT_NE(std::string::npos, preloaded.find("cudaMalloc(1MiB)=35 kept")) << preloaded;
    EXPECT_NE(std::string::npos, preloaded.find("cudaMalloc(0)=35")) << preloaded;
    EXPECT_NE(std::string::npos, preloaded.find("cudaFree(0)=35")) << preloaded;
    EXPECT_NE(std::string::npos, preloaded.find("cudaFree(bogus)=35")) << preloaded;
    EXPECT_NE(std::string::npos, preloaded.find("cudaMemGetInfo=35 7 7")) << preloaded;
  }
}

}  // namespace
}  // namespace integ
