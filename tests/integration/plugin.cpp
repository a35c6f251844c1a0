// The test plugin: allocates through the CUDA runtime it links, like a framework's extension
// module. See plugin_api.h.
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>

#include "tests/integration/plugin_api.h"
#include "tests/standin/cuda_standin.h"

extern "C" __attribute__((visibility("default"))) int plugin_alloc_free_pairs(int pairs,
                                                                              std::size_t size,
                                                                              PluginReport* out) {
  StandinCounters before{}, after{};
  standinGetCounters(-1, &before);
  int errors = 0;
  for (int i = 0; i < pairs; ++i) {
    void* p = nullptr;
    if (cudaMalloc(&p, size) != cudaSuccess || p == nullptr) {
      ++errors;
      continue;
    }
    auto* bytes = static_cast<unsigned char*>(p);
    std::memset(bytes, i & 0xff, size < 4096 ? size : 4096);
    if (bytes[0] != (i & 0xff)) ++errors;
    if (cudaFree(p) != cudaSuccess) ++errors;
  }
  standinGetCounters(-1, &after);
  out->errors = errors;
  out->driver_mallocs = after.mallocs - before.mallocs;
  out->driver_frees = after.frees - before.frees;
  return errors == 0 ? 0 : 1;
}
