// Entry points found by lookup (entry_points.cpp, dlsym.cpp): where a lookup of a driver or
// runtime function found one that cudapool serves, cudapool's own.
#pragma once

namespace cudapool {

// Replaces *pfn (a lookup's answer, made from `caller`: a return address) with cudapool's function
// of the same name when *pfn is a libcuda/libcudart function cudapool exports and the caller is
// neither a shared CUDA runtime nor cudapool. True when it did.
bool substitute_entry_point(void** pfn, const void* caller);

}  // namespace cudapool
