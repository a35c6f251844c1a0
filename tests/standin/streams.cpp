// Stream and event entry points (the engine is in stream_engine.cpp). Every function that takes a
// stream exists twice: the plain name (stream 0 = legacy stream) and the _ptsz name that programs
// built with per-thread default streams call (stream 0 = cudaStreamPerThread).
#include <algorithm>
#include <chrono>

#include "standin_internal.h"

namespace standin {
namespace {

constexpr int kLeastPriority = 0;
constexpr int kGreatestPriority = -5;

uint64_t id_of(const void* h) {
  return reinterpret_cast<uintptr_t>(h);
}

double now_ms() {
  using namespace std::chrono;
  return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

cudaError_t create_stream(cudaStream_t* out, unsigned flags, int priority) {
  STANDIN_ENTER();
  if (!out || (flags & ~static_cast<unsigned>(cudaStreamNonBlocking)))
    return ret(cudaErrorInvalidValue);
  priority = std::clamp(priority, kGreatestPriority, kLeastPriority);
  Runtime& r = rt();
  auto s = make_stream(tls().device, StreamKind::kUser, flags, priority);
  r.streams.add(s, s->id);
  *out = to_handle<cudaStream_t>(s->id);
  return cudaSuccess;
}

cudaError_t stream_sync(cudaStream_t h, bool ptd) {
  STANDIN_ENTER();
  std::shared_ptr<Stream> s;
  if (cudaError_t e = resolve_stream(h, ptd, &s)) return ret(e);
  // Synchronising a capturing stream is illegal and ends the capture's usefulness.
  if (invalidate_captures(s->device, s)) return ret(cudaErrorStreamCaptureUnsupported);
  uint64_t seq;
  if (s->kind == StreamKind::kLegacy) {
    // The legacy stream's "all prior work" includes the blocking streams: a marker op carries
    // exactly those deps.
    SubmitOptions opts;
    opts.counted = false;
    SubmitResult res = submit(s, nullptr, std::move(opts));
    if (res.error) return ret(res.error);
    seq = res.seq;
  } else {
    std::lock_guard g(s->mu);
    seq = s->last_enqueued;
  }
  wait_for(*s, seq);
  rt().device(s->device)->counters.stream_syncs.fetch_add(1);
  return cudaSuccess;
}

cudaError_t stream_query(cudaStream_t h, bool ptd) {
  STANDIN_ENTER();
  std::shared_ptr<Stream> s;
  if (cudaError_t e = resolve_stream(h, ptd, &s)) return ret(e);
  if (invalidate_captures(s->device, s)) return ret(cudaErrorStreamCaptureUnsupported);
  return stream_idle(s) ? cudaSuccess : cudaErrorNotReady;
}

template <typename F>
cudaError_t with_stream(cudaStream_t h, bool ptd, F&& f) {
  STANDIN_ENTER();
  std::shared_ptr<Stream> s;
  if (cudaError_t e = resolve_stream(h, ptd, &s)) return ret(e);
  return ret(f(*s));
}

cudaError_t get_flags(cudaStream_t h, unsigned* flags, bool ptd) {
  STANDIN_ENTER();
  if (!flags) return ret(cudaErrorInvalidValue);
  return with_stream(h, ptd, [&](Stream& s) {
    *flags = s.flags;
    return cudaSuccess;
  });
}

cudaError_t get_priority(cudaStream_t h, int* priority, bool ptd) {
  STANDIN_ENTER();
  if (!priority) return ret(cudaErrorInvalidValue);
  return with_stream(h, ptd, [&](Stream& s) {
    *priority = s.priority;
    return cudaSuccess;
  });
}

cudaError_t get_device(cudaStream_t h, int* device, bool ptd) {
  STANDIN_ENTER();
  if (!device) return ret(cudaErrorInvalidValue);
  return with_stream(h, ptd, [&](Stream& s) {
    *device = s.device;
    return cudaSuccess;
  });
}

cudaError_t get_id(cudaStream_t h, unsigned long long* id, bool ptd) {
  STANDIN_ENTER();
  if (!id) return ret(cudaErrorInvalidValue);
  return with_stream(h, ptd, [&](Stream& s) {
    *id = s.id;
    return cudaSuccess;
  });
}

cudaError_t enqueue_work(cudaStream_t h, bool ptd, std::function<void()> work) {
  STANDIN_ENTER();
  std::shared_ptr<Stream> s;
  if (cudaError_t e = resolve_stream(h, ptd, &s)) return ret(e);
  return ret(submit(s, std::move(work)).error);
}

cudaError_t launch_host_func(cudaStream_t h, cudaHostFn_t fn, void* user, bool ptd) {
  if (!fn) {
    STANDIN_ENTER();
    return ret(cudaErrorInvalidValue);
  }
  return enqueue_work(h, ptd, [fn, user] { fn(user); });
}

cudaError_t add_callback(cudaStream_t h, cudaStreamCallback_t cb, void* user, unsigned flags,
                         bool ptd) {
  if (!cb || flags != 0) {
    STANDIN_ENTER();
    return ret(cudaErrorInvalidValue);
  }
  return enqueue_work(h, ptd, [cb, h, user] { cb(h, cudaSuccess, user); });
}

cudaError_t event_record(cudaEvent_t event, cudaStream_t h, unsigned flags, bool ptd) {
  STANDIN_ENTER();
  if (flags & ~static_cast<unsigned>(cudaEventRecordExternal)) return ret(cudaErrorInvalidValue);
  auto ev = rt().events.get(id_of(event));
  if (!ev) return ret(cudaErrorInvalidResourceHandle);
  std::shared_ptr<Stream> s;
  if (cudaError_t e = resolve_stream(h, ptd, &s)) return ret(e);
  auto point = std::make_shared<RecordPoint>();
  SubmitResult res = submit(s, [point] { point->time_ms = now_ms(); });
  if (res.error) return ret(res.error);
  std::lock_guard g(ev->mu);
  if (res.captured) {
    ev->captured_in = res.captured;
    return cudaSuccess;
  }
  point->stream = s;
  point->seq = res.seq;
  ev->point = std::move(point);
  ev->captured_in = nullptr;
  return cudaSuccess;
}

cudaError_t stream_wait_event(cudaStream_t h, cudaEvent_t event, unsigned flags, bool ptd) {
  STANDIN_ENTER();
  if (flags & ~static_cast<unsigned>(cudaEventWaitExternal)) return ret(cudaErrorInvalidValue);
  Runtime& r = rt();
  auto ev = r.events.get(id_of(event));
  if (!ev) return ret(cudaErrorInvalidResourceHandle);
  std::shared_ptr<Stream> s;
  if (cudaError_t e = resolve_stream(h, ptd, &s)) return ret(e);
  std::shared_ptr<RecordPoint> point;
  std::shared_ptr<Capture> captured;
  {
    std::lock_guard g(ev->mu);
    point = ev->point;
    captured = ev->captured_in;
  }
  if (captured) {
    // Waiting on an event recorded into an active capture joins the capture (fork).
    std::lock_guard g(s->mu);
    std::lock_guard cg(r.capture_mu);
    if (!captured->ended) {
      if (!s->capture) {
        captured->members.push_back(s);
        s->capture = captured;
      }
      return cudaSuccess;
    }
  }
  if (!point) return cudaSuccess;  // never recorded: nothing to wait for
  SubmitOptions opts;
  opts.counted = false;
  opts.record_when_capturing = false;  // inside a capture the order is already serial
  opts.extra_deps.push_back({point->stream, point->seq});
  return ret(submit(s, nullptr, std::move(opts)).error);
}

cudaError_t create_event(cudaEvent_t* event, unsigned flags) {
  STANDIN_ENTER();
  constexpr unsigned kKnown =
      cudaEventBlockingSync | cudaEventDisableTiming | cudaEventInterprocess;
  if (!event || (flags & ~kKnown)) return ret(cudaErrorInvalidValue);
  if ((flags & cudaEventInterprocess) && !(flags & cudaEventDisableTiming))
    return ret(cudaErrorInvalidValue);
  Runtime& r = rt();
  auto ev = std::make_shared<Event>();
  ev->flags = flags;
  ev->device = tls().device;
  *event = to_handle<cudaEvent_t>(r.events.add(ev, r.new_handle()));
  return cudaSuccess;
}

std::shared_ptr<Event> find_event(cudaEvent_t e) {
  return rt().events.get(id_of(e));
}

}  // namespace
}  // namespace standin

using namespace standin;

extern "C" {

cudaError_t cudaStreamCreate(cudaStream_t* pStream) {
  return create_stream(pStream, 0, 0);
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* pStream, unsigned int flags) {
  return create_stream(pStream, flags, 0);
}

cudaError_t cudaStreamCreateWithPriority(cudaStream_t* pStream, unsigned int flags, int priority) {
  return create_stream(pStream, flags, priority);
}

cudaError_t cudaDeviceGetStreamPriorityRange(int* leastPriority, int* greatestPriority) {
  STANDIN_ENTER();
  if (leastPriority) *leastPriority = kLeastPriority;
  if (greatestPriority) *greatestPriority = kGreatestPriority;
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  STANDIN_ENTER();
  auto s = rt().streams.remove(id_of(stream));
  if (!s) return ret(cudaErrorInvalidResourceHandle);
  std::shared_ptr<Capture> c;
  {
    std::lock_guard g(s->mu);
    c = s->capture;
  }
  if (c) {
    // Destroying a capturing stream abandons the capture; its origin ends it for good.
    invalidate_capture(c);
    if (c->origin == s) end_capture(c);
  }
  close_stream(s);  // queued work still runs
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  return stream_sync(stream, false);
}
cudaError_t cudaStreamSynchronize_ptsz(cudaStream_t stream) {
  return stream_sync(stream, true);
}

cudaError_t cudaStreamQuery(cudaStream_t stream) {
  return stream_query(stream, false);
}
cudaError_t cudaStreamQuery_ptsz(cudaStream_t stream) {
  return stream_query(stream, true);
}

cudaError_t cudaStreamGetFlags(cudaStream_t hStream, unsigned int* flags) {
  return get_flags(hStream, flags, false);
}
cudaError_t cudaStreamGetFlags_ptsz(cudaStream_t hStream, unsigned int* flags) {
  return get_flags(hStream, flags, true);
}

cudaError_t cudaStreamGetPriority(cudaStream_t hStream, int* priority) {
  return get_priority(hStream, priority, false);
}
cudaError_t cudaStreamGetPriority_ptsz(cudaStream_t hStream, int* priority) {
  return get_priority(hStream, priority, true);
}

cudaError_t cudaStreamGetDevice(cudaStream_t hStream, int* device) {
  return get_device(hStream, device, false);
}
cudaError_t cudaStreamGetDevice_ptsz(cudaStream_t hStream, int* device) {
  return get_device(hStream, device, true);
}

cudaError_t cudaStreamGetId(cudaStream_t hStream, unsigned long long* streamId) {
  return get_id(hStream, streamId, false);
}
cudaError_t cudaStreamGetId_ptsz(cudaStream_t hStream, unsigned long long* streamId) {
  return get_id(hStream, streamId, true);
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
  return stream_wait_event(stream, event, flags, false);
}
cudaError_t cudaStreamWaitEvent_ptsz(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
  return stream_wait_event(stream, event, flags, true);
}

cudaError_t cudaStreamAddCallback(cudaStream_t stream, cudaStreamCallback_t callback,
                                  void* userData, unsigned int flags) {
  return add_callback(stream, callback, userData, flags, false);
}
cudaError_t cudaStreamAddCallback_ptsz(cudaStream_t stream, cudaStreamCallback_t callback,
                                       void* userData, unsigned int flags) {
  return add_callback(stream, callback, userData, flags, true);
}

cudaError_t cudaLaunchHostFunc(cudaStream_t stream, cudaHostFn_t fn, void* userData) {
  return launch_host_func(stream, fn, userData, false);
}
cudaError_t cudaLaunchHostFunc_ptsz(cudaStream_t stream, cudaHostFn_t fn, void* userData) {
  return launch_host_func(stream, fn, userData, true);
}

cudaError_t cudaStreamAttachMemAsync(cudaStream_t stream, void*, size_t, unsigned int) {
  return with_stream(stream, false, [](Stream&) { return cudaSuccess; });
}
cudaError_t cudaStreamAttachMemAsync_ptsz(cudaStream_t stream, void*, size_t, unsigned int) {
  return with_stream(stream, true, [](Stream&) { return cudaSuccess; });
}

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  return create_event(event, 0);
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags) {
  return create_event(event, flags);
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  return event_record(event, stream, 0, false);
}
cudaError_t cudaEventRecord_ptsz(cudaEvent_t event, cudaStream_t stream) {
  return event_record(event, stream, 0, true);
}
cudaError_t cudaEventRecordWithFlags(cudaEvent_t event, cudaStream_t stream, unsigned int flags) {
  return event_record(event, stream, flags, false);
}
cudaError_t cudaEventRecordWithFlags_ptsz(cudaEvent_t event, cudaStream_t stream,
                                          unsigned int flags) {
  return event_record(event, stream, flags, true);
}

cudaError_t cudaEventQuery(cudaEvent_t event) {
  STANDIN_ENTER();
  auto ev = find_event(event);
  if (!ev) return ret(cudaErrorInvalidResourceHandle);
  std::shared_ptr<RecordPoint> point;
  {
    std::lock_guard g(ev->mu);
    point = ev->point;
  }
  if (!point) return cudaSuccess;
  return is_done(*point->stream, point->seq) ? cudaSuccess : cudaErrorNotReady;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  STANDIN_ENTER();
  auto ev = find_event(event);
  if (!ev) return ret(cudaErrorInvalidResourceHandle);
  std::shared_ptr<RecordPoint> point;
  {
    std::lock_guard g(ev->mu);
    point = ev->point;
  }
  if (point) wait_for(*point->stream, point->seq);
  const int device = point ? point->stream->device : ev->device;
  rt().device(device)->counters.stream_syncs.fetch_add(1);
  return cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  STANDIN_ENTER();
  if (!ms) return ret(cudaErrorInvalidValue);
  auto a = find_event(start);
  auto b = find_event(end);
  if (!a || !b) return ret(cudaErrorInvalidResourceHandle);
  if ((a->flags | b->flags) & cudaEventDisableTiming) return ret(cudaErrorInvalidResourceHandle);
  std::shared_ptr<RecordPoint> pa, pb;
  {
    std::lock_guard g(a->mu);
    pa = a->point;
  }
  {
    std::lock_guard g(b->mu);
    pb = b->point;
  }
  if (!pa || !pb) return ret(cudaErrorInvalidResourceHandle);
  // is_done() takes the stream lock the worker released after writing time_ms.
  if (!is_done(*pa->stream, pa->seq) || !is_done(*pb->stream, pb->seq)) return cudaErrorNotReady;
  *ms = static_cast<float>(pb->time_ms - pa->time_ms);
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  STANDIN_ENTER();
  if (!rt().events.remove(id_of(event))) return ret(cudaErrorInvalidResourceHandle);
  return cudaSuccess;
}

}  // extern "C"
