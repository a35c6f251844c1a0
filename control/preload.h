// LD_PRELOAD lists for the programs cudapool's tools start (cudapoolctl run, the demo, the
// benchmarks, the soak). What the user preloads already stays first and in order: a sanitizer's
// runtime must come first in the initial library list, and an allocator such as jemalloc may be
// there on purpose. cudapool itself goes last, exactly once.
#pragma once

#include <string>

namespace cudapool {

// `current` (an LD_PRELOAD value, may be null; entries split by ':' or ' ') without any entry
// naming libcudapool, joined with ':'.
std::string preload_without_cudapool(const char* current);

// preload_without_cudapool(current), then `library`.
std::string preload_with_cudapool(const char* current, const std::string& library);

}  // namespace cudapool
