// The trace recorder: with CUDAPOOL_TRACE_FILE set, every cudaMalloc and cudaFree the pool serves
// is written to that file as one line of the trace format that `cudapool-bench replay` reads
// (thread,time_us,action,id,size,device; docs/benchmarks.md), so users can replay their own
// workload.
//
// Cost: off, one relaxed atomic load per call. On, a short critical section that appends a
// fixed-size record to a preallocated buffer; a writer thread formats and writes full buffers,
// and the rest is written at exit. No host allocation and no system call on the calling thread
// (unless the writer falls a whole buffer behind, when the caller waits for it).
//
// The file is created at the process's first CUDA call; "%p" in the name becomes the pid. A
// child after fork records only when the name has "%p" (its own file); otherwise the parent keeps
// the file to itself.
#pragma once

#include <atomic>
#include <cstddef>
#include <string>

namespace cudapool {

extern std::atomic<bool> g_trace_recording;

// Opens the file and starts the writer. False (and the reason) when the file cannot be opened;
// the process then runs without recording.
bool trace_recorder_start(const std::string& path, std::string* error);
// Writes what is buffered (at exit). Recording stops.
void trace_recorder_flush();

void trace_record(bool alloc, const void* ptr, std::size_t size, int device);

inline void trace_alloc(const void* ptr, std::size_t size, int device) {
  if (g_trace_recording.load(std::memory_order_relaxed)) trace_record(true, ptr, size, device);
}
inline void trace_free(const void* ptr, int device) {
  if (g_trace_recording.load(std::memory_order_relaxed)) trace_record(false, ptr, 0, device);
}

}  // namespace cudapool
