// A small program for the trace recorder's test: known allocations from two threads, then exit
// with some blocks still live. Run with libcudapool.so preloaded and CUDAPOOL_TRACE_FILE set;
// trace_check then reads the file.
#include <cuda_runtime_api.h>

#include <cstdio>
#include <thread>
#include <vector>

namespace {

bool check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) fprintf(stderr, "record_program: %s failed (%d)\n", what, err);
  return err == cudaSuccess;
}

}  // namespace

int main() {
  std::vector<void*> blocks(40);
  for (std::size_t i = 0; i < blocks.size(); ++i)
    if (!check(cudaMalloc(&blocks[i], (i + 1) * 1000), "cudaMalloc")) return 1;
  bool ok = true;
  std::thread other([&ok] {
    for (int i = 0; i < 10; ++i) {
      void* p = nullptr;
      ok = ok && check(cudaMalloc(&p, 4096), "cudaMalloc") && check(cudaFree(p), "cudaFree");
    }
  });
  other.join();
  for (std::size_t i = 0; i < blocks.size(); i += 2)
    if (!check(cudaFree(blocks[i]), "cudaFree")) return 1;
  printf("record_program: 50 allocations, 30 frees\n");
  return ok ? 0 : 1;  // 20 blocks stay live
}
