// The exported cuda* entry points: interposition only (STYLE.md). Each one finds the real
// runtime, passes nested calls straight through, and hands the rest to the Shim. Nothing may
// escape as an exception (DESIGN §4.1): a failure inside the Shim falls back to the native call.
#include <cuda_runtime_api.h>

#include "control/log.h"
#include "shim/real_runtime.h"
#include "shim/shim.h"

#define CUDAPOOL_EXPORT extern "C" __attribute__((visibility("default")))

namespace cudapool {
namespace {

// Set while this thread is inside the shim: a runtime that calls an interposed function from
// within another one goes straight to the real function.
thread_local bool t_inside __attribute__((tls_model("initial-exec"))) = false;

class InsideScope {
 public:
  InsideScope() { t_inside = true; }
  ~InsideScope() { t_inside = false; }
};

cudaError_t no_runtime() {
  static std::atomic<bool> said{false};
  if (!said.exchange(true))
    log_error(
        "no CUDA runtime (libcudart.so) is loaded; cuda* calls fail with "
        "cudaErrorInsufficientDriver");
  return cudaErrorInsufficientDriver;
}

// Runs `pooled(shim)` when the pool is active, `native()` otherwise or on any failure.
// Once: the runtime lacks functions the pool needs, so the pool stays off.
void note_passthrough_only(const RealRuntime& rt) {
  Shim::note_called();
  static std::atomic<bool> said{false};
  if (!said.exchange(true))
    log_error("the CUDA runtime has no {}; cudapool is off and passes every call through",
              rt.first_missing != nullptr ? rt.first_missing : "?");
}

template <typename Pooled, typename Native>
cudaError_t dispatch(const RealRuntime& rt, Pooled&& pooled, Native&& native) {
  if (t_inside) return native();
  if (rt.passthrough_only) [[unlikely]] {
    note_passthrough_only(rt);
    return native();
  }
  InsideScope scope;
  try {
    if (Shim* shim = Shim::get(rt)) return pooled(*shim);
  } catch (...) {
    log_error_ratelimited("exception", "internal error; the call goes to the CUDA runtime");
  }
  return native();
}

}  // namespace
}  // namespace cudapool

using cudapool::dispatch;
using cudapool::real_runtime;
using cudapool::RealRuntime;
using cudapool::Shim;

CUDAPOOL_EXPORT cudaError_t cudaMalloc(void** devPtr, size_t size) {
  const RealRuntime* rt = real_runtime();
  if (rt == nullptr) return cudapool::no_runtime();
  return dispatch(
      *rt, [&](Shim& s) { return s.malloc(devPtr, size); },
      [&] { return rt->cudaMalloc(devPtr, size); });
}

CUDAPOOL_EXPORT cudaError_t cudaFree(void* devPtr) {
  const RealRuntime* rt = real_runtime();
  if (rt == nullptr) return cudapool::no_runtime();
  return dispatch(
      *rt, [&](Shim& s) { return s.free(devPtr); }, [&] { return rt->cudaFree(devPtr); });
}

CUDAPOOL_EXPORT cudaError_t cudaMemGetInfo(size_t* free, size_t* total) {
  const RealRuntime* rt = real_runtime();
  if (rt == nullptr) return cudapool::no_runtime();
  return dispatch(
      *rt, [&](Shim& s) { return s.mem_get_info(free, total); },
      [&] { return rt->cudaMemGetInfo(free, total); });
}

CUDAPOOL_EXPORT cudaError_t cudaDeviceReset() {
  const RealRuntime* rt = real_runtime();
  if (rt == nullptr) return cudapool::no_runtime();
  return dispatch(
      *rt, [&](Shim& s) { return s.device_reset(); }, [&] { return rt->cudaDeviceReset(); });
}

CUDAPOOL_EXPORT cudaError_t cudaIpcGetMemHandle(cudaIpcMemHandle_t* handle, void* devPtr) {
  const RealRuntime* rt = real_runtime();
  if (rt == nullptr) return cudapool::no_runtime();
  return dispatch(
      *rt, [&](Shim& s) { return s.ipc_get_mem_handle(handle, devPtr); },
      [&] { return rt->cudaIpcGetMemHandle(handle, devPtr); });
}

// Peer access does not cover the pool's mapped pages: the pool grants it (DESIGN §4.9, pages).
CUDAPOOL_EXPORT cudaError_t cudaDeviceEnablePeerAccess(int peerDevice, unsigned int flags) {
  const RealRuntime* rt = real_runtime();
  if (rt == nullptr) return cudapool::no_runtime();
  if (rt->cudaDeviceEnablePeerAccess == nullptr) return cudaErrorNotSupported;
  return dispatch(
      *rt, [&](Shim& s) { return s.enable_peer_access(peerDevice, flags); },
      [&] { return rt->cudaDeviceEnablePeerAccess(peerDevice, flags); });
}

CUDAPOOL_EXPORT cudaError_t cudaDeviceDisablePeerAccess(int peerDevice) {
  const RealRuntime* rt = real_runtime();
  if (rt == nullptr) return cudapool::no_runtime();
  if (rt->cudaDeviceDisablePeerAccess == nullptr) return cudaErrorNotSupported;
  return dispatch(
      *rt, [&](Shim& s) { return s.disable_peer_access(peerDevice); },
      [&] { return rt->cudaDeviceDisablePeerAccess(peerDevice); });
}

// ---- stream capture: only to know when one is active (DESIGN §4.6) ----------------------------
// The _ptsz variants are what programs built with per-thread default streams call; their stream
// 0 is the calling thread's default stream.

namespace {

cudaStream_t per_thread(cudaStream_t stream) {
  return stream == nullptr ? cudaStreamPerThread : stream;
}

template <typename Fn, typename... Args>
cudaError_t begin_capture(Fn fn, cudaStream_t tracked, Args... args) {
  const RealRuntime* rt = real_runtime();
  if (rt == nullptr) return cudapool::no_runtime();
  if (fn == nullptr) return cudaErrorNotSupported;
  auto native = [&] { return fn(args...); };
  return dispatch(
      *rt, [&](Shim& s) { return s.begin_capture(tracked, native); }, native);
}

template <typename Fn>
cudaError_t end_capture(Fn fn, cudaStream_t tracked, cudaStream_t stream, cudaGraph_t* graph) {
  const RealRuntime* rt = real_runtime();
  if (rt == nullptr) return cudapool::no_runtime();
  if (fn == nullptr) return cudaErrorNotSupported;
  auto native = [&] { return fn(stream, graph); };
  return dispatch(
      *rt, [&](Shim& s) { return s.end_capture(tracked, native); }, native);
}

}  // namespace

CUDAPOOL_EXPORT cudaError_t cudaStreamBeginCapture(cudaStream_t stream,
                                                   cudaStreamCaptureMode mode) {
  const RealRuntime* rt = real_runtime();
  return begin_capture(rt ? rt->cudaStreamBeginCapture : nullptr, stream, stream, mode);
}

CUDAPOOL_EXPORT cudaError_t cudaStreamBeginCapture_ptsz(cudaStream_t stream,
                                                        cudaStreamCaptureMode mode) {
  const RealRuntime* rt = real_runtime();
  return begin_capture(rt ? rt->cudaStreamBeginCapture_ptsz : nullptr, per_thread(stream), stream,
                       mode);
}

CUDAPOOL_EXPORT cudaError_t cudaStreamBeginCaptureToGraph(cudaStream_t stream, cudaGraph_t graph,
                                                          const cudaGraphNode_t* dependencies,
                                                          const cudaGraphEdgeData* dependencyData,
                                                          size_t numDependencies,
                                                          cudaStreamCaptureMode mode) {
  const RealRuntime* rt = real_runtime();
  return begin_capture(rt ? rt->cudaStreamBeginCaptureToGraph : nullptr, stream, stream, graph,
                       dependencies, dependencyData, numDependencies, mode);
}

CUDAPOOL_EXPORT cudaError_t cudaStreamBeginCaptureToGraph_ptsz(
    cudaStream_t stream, cudaGraph_t graph, const cudaGraphNode_t* dependencies,
    const cudaGraphEdgeData* dependencyData, size_t numDependencies, cudaStreamCaptureMode mode) {
  const RealRuntime* rt = real_runtime();
  return begin_capture(rt ? rt->cudaStreamBeginCaptureToGraph_ptsz : nullptr, per_thread(stream),
                       stream, graph, dependencies, dependencyData, numDependencies, mode);
}

CUDAPOOL_EXPORT cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* pGraph) {
  const RealRuntime* rt = real_runtime();
  return end_capture(rt ? rt->cudaStreamEndCapture : nullptr, stream, stream, pGraph);
}

CUDAPOOL_EXPORT cudaError_t cudaStreamEndCapture_ptsz(cudaStream_t stream, cudaGraph_t* pGraph) {
  const RealRuntime* rt = real_runtime();
  return end_capture(rt ? rt->cudaStreamEndCapture_ptsz : nullptr, per_thread(stream), stream,
                     pGraph);
}
