// A fixture for the doctor's unit tests, never run: a program that carries a CUDA runtime of its
// own, as one linked with NVIDIA's libcudart_static.a does: it defines cudaMalloc, reaches the
// driver by dlopen("libcuda.so.1"), and names its API functions in read-only data (the static
// runtime does, for its API tracing). A stripped copy keeps only the strings.
#include <dlfcn.h>

#include <cstddef>
#include <cstdio>

namespace {
const char* const kApiNames[] = {"cudaMalloc", "cudaFree", "cudaMemGetInfo"};
}  // namespace

extern "C" __attribute__((noinline)) int cudaMalloc(void** ptr, std::size_t size) {
  void* driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (driver == nullptr) return 35;  // cudaErrorInsufficientDriver
  *ptr = nullptr;
  return size == 0 ? 1 : 2;
}

int main(int argc, char** argv) {
  void* p = nullptr;
  std::printf("%s %d\n", kApiNames[static_cast<unsigned>(argc) % 3], cudaMalloc(&p, argc));
  return argv[0] == nullptr;
}
