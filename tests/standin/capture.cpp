// Stream capture and graphs.
//
// A capturing stream records each op as a graph node instead of queueing it. A stream joins a
// capture when it waits on an event recorded into that capture (fork/join); the graph is the
// nodes in the order they were recorded, which is one valid serialisation of the captured DAG.
// cudaGraphLaunch queues one op that runs the nodes in order; a graph keeps the addresses it
// captured, so a replay after the memory was freed faults.
//
// Unsafe calls (CUDA's capture-mode rules, see cudaThreadExchangeStreamCaptureMode): a thread
// whose mode is not Relaxed may not call cudaMalloc/cudaFree while it has a non-relaxed capture
// of its own, nor (mode Global) while another thread has a Global capture. Such a call fails with
// cudaErrorStreamCaptureUnsupported and invalidates the captures that forbade it; EndCapture then
// returns cudaErrorStreamCaptureInvalidated.
#include <algorithm>
#include <cstring>

#include "standin_internal.h"

namespace standin {

cudaError_t record_node(const std::shared_ptr<Capture>& c, std::function<void()> work,
                        bool counted) {
  Runtime& r = rt();
  std::lock_guard g(r.capture_mu);
  if (c->invalidated) return cudaErrorStreamCaptureInvalidated;
  c->graph->nodes.push_back(GraphNode{std::move(work), counted});
  return cudaSuccess;
}

bool unsafe_call_prohibited(int device) {
  Runtime& r = rt();
  if (r.active_capture_count.load(std::memory_order_acquire) == 0) return false;
  const cudaStreamCaptureMode mode = tls().capture_mode;
  if (mode == cudaStreamCaptureModeRelaxed) return false;
  const std::thread::id me = std::this_thread::get_id();
  bool prohibited = false;
  {
    std::lock_guard g(r.capture_mu);
    for (auto& c : r.active_captures) {
      const bool mine = c->thread == me;
      if ((mine && c->mode != cudaStreamCaptureModeRelaxed) ||
          (!mine && mode == cudaStreamCaptureModeGlobal &&
           c->mode == cudaStreamCaptureModeGlobal)) {
        c->invalidated = true;
        prohibited = true;
      }
    }
  }
  if (prohibited)
    if (Device* d = r.device(device)) d->counters.capture_violations.fetch_add(1);
  return prohibited;
}

void invalidate_capture(const std::shared_ptr<Capture>& c) {
  std::lock_guard g(rt().capture_mu);
  c->invalidated = true;
}

bool invalidate_captures(int device, const std::shared_ptr<Stream>& s) {
  Runtime& r = rt();
  bool any = false;
  if (s) {
    std::shared_ptr<Capture> c;
    {
      std::lock_guard g(s->mu);
      c = s->capture;
    }
    if (c) {
      invalidate_capture(c);
      any = true;
    }
  } else if (r.active_capture_count.load(std::memory_order_acquire) != 0) {
    std::lock_guard g(r.capture_mu);
    for (auto& c : r.active_captures) {
      if (c->device != device) continue;
      c->invalidated = true;
      any = true;
    }
  }
  if (any)
    if (Device* d = r.device(device)) d->counters.capture_violations.fetch_add(1);
  return any;
}

namespace {}  // namespace

// Ends a capture: it leaves the active list and every member stream stops recording.
void end_capture(const std::shared_ptr<Capture>& c) {
  Runtime& r = rt();
  std::vector<std::weak_ptr<Stream>> members;
  {
    std::lock_guard g(r.capture_mu);
    if (c->ended) return;
    c->ended = true;
    r.active_captures.remove(c);
    r.active_capture_count.fetch_sub(1, std::memory_order_release);
    members = c->members;
  }
  for (auto& w : members) {
    if (auto m = w.lock()) {
      std::lock_guard g(m->mu);
      if (m->capture == c) m->capture = nullptr;
    }
  }
}

namespace {

cudaGraph_t graph_handle(uint64_t id) {
  return to_handle<cudaGraph_t>(id);
}
uint64_t id_of(const void* h) {
  return reinterpret_cast<uintptr_t>(h);
}

cudaError_t begin_capture(cudaStream_t h, cudaStreamCaptureMode mode, bool ptd) {
  STANDIN_ENTER();
  if (mode != cudaStreamCaptureModeGlobal && mode != cudaStreamCaptureModeThreadLocal &&
      mode != cudaStreamCaptureModeRelaxed)
    return ret(cudaErrorInvalidValue);
  std::shared_ptr<Stream> s;
  if (cudaError_t e = resolve_stream(h, ptd, &s)) return ret(e);
  if (s->kind == StreamKind::kLegacy) return ret(cudaErrorStreamCaptureUnsupported);
  Runtime& r = rt();
  auto c = std::make_shared<Capture>();
  c->id = r.next_capture_id.fetch_add(1);
  c->mode = mode;
  c->thread = std::this_thread::get_id();
  c->device = s->device;
  c->graph = std::make_shared<Graph>();
  c->origin = s;
  c->members.push_back(s);
  std::lock_guard g(s->mu);
  if (s->capture) return ret(cudaErrorIllegalState);
  c->graph_handle = r.graphs.add(c->graph, r.new_handle());
  s->capture = c;
  std::lock_guard cg(r.capture_mu);
  r.active_captures.push_back(c);
  r.active_capture_count.fetch_add(1, std::memory_order_release);
  return cudaSuccess;
}

cudaError_t end_capture_api(cudaStream_t h, cudaGraph_t* graph, bool ptd) {
  STANDIN_ENTER();
  if (!graph) return ret(cudaErrorInvalidValue);
  std::shared_ptr<Stream> s;
  if (cudaError_t e = resolve_stream(h, ptd, &s)) return ret(e);
  std::shared_ptr<Capture> c;
  {
    std::lock_guard g(s->mu);
    c = s->capture;
  }
  if (!c) return ret(cudaErrorIllegalState);
  if (c->origin != s) return ret(cudaErrorStreamCaptureUnmatched);
  if (c->mode != cudaStreamCaptureModeRelaxed && c->thread != std::this_thread::get_id())
    return ret(cudaErrorStreamCaptureWrongThread);
  end_capture(c);
  Runtime& r = rt();
  bool invalidated;
  {
    std::lock_guard g(r.capture_mu);
    invalidated = c->invalidated;
  }
  if (invalidated) {
    r.graphs.remove(c->graph_handle);
    *graph = nullptr;
    return ret(cudaErrorStreamCaptureInvalidated);
  }
  *graph = graph_handle(c->graph_handle);
  return cudaSuccess;
}

cudaError_t capture_status(cudaStream_t h, bool ptd, cudaStreamCaptureStatus* status,
                           std::shared_ptr<Capture>* out) {
  std::shared_ptr<Stream> s;
  if (cudaError_t e = resolve_stream(h, ptd, &s)) return e;
  std::shared_ptr<Capture> c;
  {
    std::lock_guard g(s->mu);
    c = s->capture;
  }
  *status = cudaStreamCaptureStatusNone;
  if (c) {
    std::lock_guard g(rt().capture_mu);
    *status = c->invalidated ? cudaStreamCaptureStatusInvalidated : cudaStreamCaptureStatusActive;
  }
  if (out) *out = std::move(c);
  return cudaSuccess;
}

cudaError_t is_capturing(cudaStream_t h, cudaStreamCaptureStatus* status, bool ptd) {
  STANDIN_ENTER();
  if (!status) return ret(cudaErrorInvalidValue);
  return ret(capture_status(h, ptd, status, nullptr));
}

cudaError_t get_capture_info(cudaStream_t h, cudaStreamCaptureStatus* status,
                             unsigned long long* id, cudaGraph_t* graph,
                             const cudaGraphNode_t** deps, const cudaGraphEdgeData** edges,
                             size_t* num_deps, bool ptd) {
  STANDIN_ENTER();
  if (!status) return ret(cudaErrorInvalidValue);
  std::shared_ptr<Capture> c;
  if (cudaError_t e = capture_status(h, ptd, status, &c)) return ret(e);
  // Nodes are not exposed as handles: an active capture reports no dependency nodes.
  if (id) *id = c ? c->id : 0;
  if (graph) *graph = c ? graph_handle(c->graph_handle) : nullptr;
  if (deps) *deps = nullptr;
  if (edges) *edges = nullptr;
  if (num_deps) *num_deps = 0;
  return cudaSuccess;
}

cudaError_t graph_launch(cudaGraphExec_t exec, cudaStream_t h, bool ptd) {
  STANDIN_ENTER();
  auto e = rt().graph_execs.get(id_of(exec));
  if (!e) return ret(cudaErrorInvalidResourceHandle);
  std::shared_ptr<Stream> s;
  if (cudaError_t err = resolve_stream(h, ptd, &s)) return ret(err);
  auto nodes = e->nodes;
  SubmitResult res = submit(s, [nodes] {
    for (const GraphNode& n : *nodes)
      if (n.work) n.work();
  });
  return ret(res.error);
}

cudaError_t instantiate(cudaGraphExec_t* exec, cudaGraph_t graph) {
  STANDIN_ENTER();
  if (!exec) return ret(cudaErrorInvalidValue);
  Runtime& r = rt();
  auto g = r.graphs.get(id_of(graph));
  if (!g) return ret(cudaErrorInvalidValue);
  auto x = std::make_shared<GraphExec>();
  {
    std::lock_guard lk(r.capture_mu);
    x->nodes = std::make_shared<const std::vector<GraphNode>>(g->nodes);
  }
  *exec = to_handle<cudaGraphExec_t>(r.graph_execs.add(x, r.new_handle()));
  return cudaSuccess;
}

cudaError_t graph_upload(cudaGraphExec_t exec, cudaStream_t h, bool ptd) {
  STANDIN_ENTER();
  if (!rt().graph_execs.get(id_of(exec))) return ret(cudaErrorInvalidResourceHandle);
  std::shared_ptr<Stream> s;
  return ret(resolve_stream(h, ptd, &s));
}

cudaError_t instantiate_with_params(cudaGraphExec_t* exec, cudaGraph_t graph,
                                    cudaGraphInstantiateParams* params) {
  if (!params) {
    STANDIN_ENTER();
    return ret(cudaErrorInvalidValue);
  }
  const cudaError_t e = instantiate(exec, graph);
  params->errNode_out = nullptr;
  params->result_out = e == cudaSuccess ? cudaGraphInstantiateSuccess : cudaGraphInstantiateError;
  return e;
}

}  // namespace

void drop_captures(int device) {
  Runtime& r = rt();
  std::vector<std::shared_ptr<Capture>> captures;
  {
    std::lock_guard g(r.capture_mu);
    for (auto& c : r.active_captures)
      if (c->device == device) {
        c->invalidated = true;
        captures.push_back(c);
      }
  }
  for (auto& c : captures)
    end_capture(c);
}

}  // namespace standin

using namespace standin;

extern "C" {

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, enum cudaStreamCaptureMode mode) {
  return begin_capture(stream, mode, false);
}
cudaError_t cudaStreamBeginCapture_ptsz(cudaStream_t stream, enum cudaStreamCaptureMode mode) {
  return begin_capture(stream, mode, true);
}

cudaError_t cudaStreamBeginCaptureToGraph(cudaStream_t, cudaGraph_t, const cudaGraphNode_t*,
                                          const cudaGraphEdgeData*, size_t,
                                          enum cudaStreamCaptureMode) {
  STANDIN_ENTER();
  return ret(cudaErrorNotSupported);
}
cudaError_t cudaStreamBeginCaptureToGraph_ptsz(cudaStream_t, cudaGraph_t, const cudaGraphNode_t*,
                                               const cudaGraphEdgeData*, size_t,
                                               enum cudaStreamCaptureMode) {
  STANDIN_ENTER();
  return ret(cudaErrorNotSupported);
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* pGraph) {
  return end_capture_api(stream, pGraph, false);
}
cudaError_t cudaStreamEndCapture_ptsz(cudaStream_t stream, cudaGraph_t* pGraph) {
  return end_capture_api(stream, pGraph, true);
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, enum cudaStreamCaptureStatus* status) {
  return is_capturing(stream, status, false);
}
cudaError_t cudaStreamIsCapturing_ptsz(cudaStream_t stream, enum cudaStreamCaptureStatus* status) {
  return is_capturing(stream, status, true);
}

cudaError_t cudaStreamGetCaptureInfo(cudaStream_t stream,
                                     enum cudaStreamCaptureStatus* captureStatus_out,
                                     unsigned long long* id_out, cudaGraph_t* graph_out,
                                     const cudaGraphNode_t** dependencies_out,
                                     const cudaGraphEdgeData** edgeData_out,
                                     size_t* numDependencies_out) {
  return get_capture_info(stream, captureStatus_out, id_out, graph_out, dependencies_out,
                          edgeData_out, numDependencies_out, false);
}
cudaError_t cudaStreamGetCaptureInfo_ptsz(cudaStream_t stream,
                                          enum cudaStreamCaptureStatus* captureStatus_out,
                                          unsigned long long* id_out, cudaGraph_t* graph_out,
                                          const cudaGraphNode_t** dependencies_out,
                                          const cudaGraphEdgeData** edgeData_out,
                                          size_t* numDependencies_out) {
  return get_capture_info(stream, captureStatus_out, id_out, graph_out, dependencies_out,
                          edgeData_out, numDependencies_out, true);
}

cudaError_t cudaThreadExchangeStreamCaptureMode(enum cudaStreamCaptureMode* mode) {
  STANDIN_ENTER();
  if (!mode) return ret(cudaErrorInvalidValue);
  int raw;  // read as int: a caller's out-of-range value must not be loaded as the enum
  memcpy(&raw, mode, sizeof raw);
  if (raw != cudaStreamCaptureModeGlobal && raw != cudaStreamCaptureModeThreadLocal &&
      raw != cudaStreamCaptureModeRelaxed)
    return ret(cudaErrorInvalidValue);
  const auto m = static_cast<cudaStreamCaptureMode>(raw);
  ThreadState& t = tls();
  *mode = t.capture_mode;
  t.capture_mode = m;
  return cudaSuccess;
}

cudaError_t cudaGraphCreate(cudaGraph_t* pGraph, unsigned int flags) {
  STANDIN_ENTER();
  if (!pGraph || flags != 0) return ret(cudaErrorInvalidValue);
  Runtime& r = rt();
  *pGraph = graph_handle(r.graphs.add(std::make_shared<Graph>(), r.new_handle()));
  return cudaSuccess;
}

cudaError_t cudaGraphGetNodes(cudaGraph_t graph, cudaGraphNode_t* nodes, size_t* numNodes) {
  STANDIN_ENTER();
  if (!numNodes) return ret(cudaErrorInvalidValue);
  Runtime& r = rt();
  auto g = r.graphs.get(id_of(graph));
  if (!g) return ret(cudaErrorInvalidValue);
  size_t count;
  {
    std::lock_guard lk(r.capture_mu);
    count = g->nodes.size();
  }
  if (!nodes) {
    *numNodes = count;
    return cudaSuccess;
  }
  // Nodes have no handles of their own here: placeholders, unique per graph and index.
  const size_t n = std::min(count, *numNodes);
  for (size_t i = 0; i < *numNodes; ++i)
    nodes[i] = i < n ? to_handle<cudaGraphNode_t>(id_of(graph) + ((i + 1) << 20)) : nullptr;
  *numNodes = n;
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* pGraphExec, cudaGraph_t graph,
                                 unsigned long long) {
  return instantiate(pGraphExec, graph);
}

cudaError_t cudaGraphInstantiateWithFlags(cudaGraphExec_t* pGraphExec, cudaGraph_t graph,
                                          unsigned long long) {
  return instantiate(pGraphExec, graph);
}

cudaError_t cudaGraphInstantiateWithParams(cudaGraphExec_t* pGraphExec, cudaGraph_t graph,
                                           cudaGraphInstantiateParams* instantiateParams) {
  return instantiate_with_params(pGraphExec, graph, instantiateParams);
}
cudaError_t cudaGraphInstantiateWithParams_ptsz(cudaGraphExec_t* pGraphExec, cudaGraph_t graph,
                                                cudaGraphInstantiateParams* instantiateParams) {
  return instantiate_with_params(pGraphExec, graph, instantiateParams);
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t graphExec, cudaStream_t stream) {
  return graph_launch(graphExec, stream, false);
}
cudaError_t cudaGraphLaunch_ptsz(cudaGraphExec_t graphExec, cudaStream_t stream) {
  return graph_launch(graphExec, stream, true);
}

cudaError_t cudaGraphUpload(cudaGraphExec_t graphExec, cudaStream_t stream) {
  return graph_upload(graphExec, stream, false);
}
cudaError_t cudaGraphUpload_ptsz(cudaGraphExec_t graphExec, cudaStream_t stream) {
  return graph_upload(graphExec, stream, true);
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t graphExec) {
  STANDIN_ENTER();
  if (!rt().graph_execs.remove(id_of(graphExec))) return ret(cudaErrorInvalidValue);
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  STANDIN_ENTER();
  if (!rt().graphs.remove(id_of(graph))) return ret(cudaErrorInvalidValue);
  return cudaSuccess;
}

}  // extern "C"
