// The interface of the test plugin (plugin.cpp): a shared library linked against the CUDA runtime
// that a host without libcudart loads with dlopen(RTLD_LOCAL), as Python loads PyTorch.
#pragma once

#include <cstddef>

extern "C" {

struct PluginReport {
  int errors;                         // failed CUDA calls or corrupted blocks
  unsigned long long driver_mallocs;  // stand-in mallocs during the call
  unsigned long long driver_frees;    // stand-in frees during the call
};

// `pairs` times: cudaMalloc(size), write and check a pattern, cudaFree.
typedef int (*PluginAllocFreePairsFn)(int pairs, std::size_t size, PluginReport* out);
#define PLUGIN_ALLOC_FREE_PAIRS "plugin_alloc_free_pairs"
}
