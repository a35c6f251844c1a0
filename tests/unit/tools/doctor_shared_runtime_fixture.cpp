// A fixture for the doctor's unit tests, never run: a program linked against a shared CUDA
// runtime (the stand-in libcudart.so.13): cudaMalloc is only an import, named in .dynstr.
#include <cuda_runtime_api.h>

int main() {
  void* p = nullptr;
  return cudaMalloc(&p, 16) == cudaSuccess ? 0 : 1;
}
