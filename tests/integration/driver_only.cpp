// A process that uses the CUDA driver without a shared CUDA runtime, as a program linked with the
// static runtime does: it loads the driver library named by its argument (the stand-in's
// libcuda.so.1) and exits. Without an argument it loads nothing. For integration.never_called_*.
#include <dlfcn.h>

#include <cstdio>

int main(int argc, char** argv) {
  if (argc < 2) return 0;
  if (dlopen(argv[1], RTLD_NOW | RTLD_LOCAL) == nullptr) {
    std::fprintf(stderr, "driver_only: %s\n", dlerror());
    return 1;
  }
  return 0;
}
