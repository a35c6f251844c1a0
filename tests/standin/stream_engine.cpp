// Stream engine: per-stream FIFOs run by one worker thread per stream, ordered by dependency
// tickets (see runtime.cpp for the model).
//
// Lock order: Device::streams_mu -> Stream::mu -> Runtime::capture_mu -> Runtime::workers_mu.
// No code waits on a condition variable while holding a lock other than the one the wait releases.
#include <algorithm>
#include <chrono>

#include "standin_internal.h"

namespace standin {
namespace {

void remove_from_device(const std::shared_ptr<Stream>& s) {
  Device* d = rt().device(s->device);
  if (!d) return;
  std::lock_guard g(d->streams_mu);
  auto it = std::find(d->streams.begin(), d->streams.end(), s);
  if (it != d->streams.end()) d->streams.erase(it);
}

void worker_main(std::shared_ptr<Stream> s, WorkerSlot* slot) {
  tls().in_worker = true;
  Runtime& r = rt();
  Device& dev = *r.device(s->device);
  const uint64_t delay = r.config.async_delay_us;
  bool drained = false;
  for (;;) {
    Op op;
    {
      std::unique_lock lk(s->mu);
      s->work_cv.wait(lk,
                      [&] { return !s->queue.empty() || s->closing || r.shutting_down.load(); });
      if (r.shutting_down.load()) break;  // exiting process: queued work is dropped
      if (s->queue.empty()) {             // destroyed and drained
        drained = true;
        break;
      }
      op = std::move(s->queue.front());
      s->queue.pop_front();
    }
    for (const Dep& d : op.deps)
      wait_for(*d.stream, d.seq);
    op.deps.clear();
    if (r.shutting_down.load()) break;
    delay_with_jitter_us(delay);
    if (op.work) op.work();
    if (op.counted) dev.counters.async_ops.fetch_add(1, std::memory_order_relaxed);
    op.work = nullptr;
    {
      std::lock_guard g(s->mu);
      s->last_completed = op.seq;
    }
    s->done_cv.notify_all();
  }
  {
    std::lock_guard g(s->mu);
    s->worker_running = false;
  }
  if (drained) remove_from_device(s);
  s.reset();
  {
    std::lock_guard g(r.workers_mu);
    slot->done = true;  // the slot may be reaped (and freed) from here on
  }
  r.workers_cv.notify_all();
}

// Called with s->mu held. Joins workers that have finished, then starts one for `s`.
bool start_worker(const std::shared_ptr<Stream>& s) {
  Runtime& r = rt();
  std::lock_guard g(r.workers_mu);
  for (auto it = r.workers.begin(); it != r.workers.end();) {
    if (it->done) {
      if (it->thread.joinable()) it->thread.join();
      it = r.workers.erase(it);
    } else {
      ++it;
    }
  }
  r.workers.emplace_back();
  WorkerSlot* slot = &r.workers.back();
  try {
    slot->thread = std::thread(worker_main, s, slot);
  } catch (...) {
    r.workers.pop_back();
    return false;
  }
  return true;
}

std::shared_ptr<Stream> per_thread_stream(int device) {
  auto& v = tls().per_thread_streams;
  if (v.size() <= static_cast<size_t>(device)) v.resize(device + 1);
  if (!v[device]) v[device] = make_stream(device, StreamKind::kPerThread, 0, 0);
  return v[device];
}

}  // namespace

std::shared_ptr<Stream> make_stream(int device, StreamKind kind, unsigned flags, int priority) {
  Runtime& r = rt();
  auto s = std::make_shared<Stream>(r.new_handle(), device, kind, flags, priority);
  Device* d = r.device(device);
  std::lock_guard g(d->streams_mu);
  d->streams.push_back(s);
  return s;
}

cudaError_t resolve_stream(cudaStream_t h, bool per_thread_default, std::shared_ptr<Stream>* out) {
  Runtime& r = rt();
  const int cur = tls().device;
  if (h == nullptr) h = per_thread_default ? cudaStreamPerThread : cudaStreamLegacy;
  if (h == cudaStreamLegacy) {
    *out = r.devices[cur]->legacy;
    return cudaSuccess;
  }
  if (h == cudaStreamPerThread) {
    *out = per_thread_stream(cur);
    return cudaSuccess;
  }
  auto s = r.streams.get(reinterpret_cast<uintptr_t>(h));
  if (!s) return cudaErrorInvalidResourceHandle;
  *out = std::move(s);
  return cudaSuccess;
}

SubmitResult submit(const std::shared_ptr<Stream>& s, std::function<void()> work,
                    SubmitOptions opts) {
  Runtime& r = rt();
  Device& dev = *r.device(s->device);
  SubmitResult res;
  {
    std::unique_lock lk(s->mu);
    if (s->capture) {
      res.captured = s->capture;
      lk.unlock();
      if (opts.record_when_capturing)
        res.error = record_node(res.captured, std::move(work), opts.counted);
      return res;
    }
  }
  // Implicit ordering with the legacy stream, taken before this op gets its own ticket.
  std::vector<Dep> deps = std::move(opts.extra_deps);
  std::vector<std::shared_ptr<Capture>> capturing_blockers;
  if (s->kind == StreamKind::kLegacy) {
    std::lock_guard g(dev.streams_mu);
    for (auto& t : dev.streams) {
      if (t == s || !t->blocking()) continue;
      std::lock_guard tg(t->mu);
      if (t->capture) {
        capturing_blockers.push_back(t->capture);
        continue;
      }
      if (t->last_enqueued > t->last_completed) deps.push_back({t, t->last_enqueued});
    }
  } else if (s->blocking()) {
    Stream& legacy = *dev.legacy;
    std::lock_guard g(legacy.mu);
    if (legacy.last_enqueued > legacy.last_completed)
      deps.push_back({dev.legacy, legacy.last_enqueued});
  }
  if (!capturing_blockers.empty()) {
    // The legacy stream would wait for a capturing blocking stream: not allowed.
    for (auto& c : capturing_blockers)
      invalidate_capture(c);
    dev.counters.capture_violations.fetch_add(1);
    res.error = cudaErrorStreamCaptureImplicit;
    return res;
  }
  {
    std::lock_guard lk(s->mu);
    if (r.shutting_down.load()) {
      res.error = cudaErrorCudartUnloading;
      return res;
    }
    if (s->closing) {
      res.error = cudaErrorInvalidResourceHandle;
      return res;
    }
    Op op;
    op.seq = s->last_enqueued + 1;
    op.deps = std::move(deps);
    op.work = std::move(work);
    op.counted = opts.counted;
    if (!s->worker_running) {
      s->worker_running = true;
      if (!start_worker(s)) {
        s->worker_running = false;
        res.error = cudaErrorMemoryAllocation;
        return res;
      }
    }
    s->queue.push_back(std::move(op));
    s->last_enqueued += 1;
    res.seq = s->last_enqueued;
  }
  s->work_cv.notify_one();
  return res;
}

void wait_for(Stream& s, uint64_t seq) {
  Runtime& r = rt();
  std::unique_lock lk(s.mu);
  s.done_cv.wait(lk, [&] { return s.last_completed >= seq || r.shutting_down.load(); });
}

bool is_done(Stream& s, uint64_t seq) {
  std::lock_guard g(s.mu);
  return s.last_completed >= seq;
}

void drain_device(int device) {
  Device* d = rt().device(device);
  if (!d) return;
  std::vector<Dep> pending;
  {
    std::lock_guard g(d->streams_mu);
    for (auto& s : d->streams) {
      std::lock_guard sg(s->mu);
      if (s->last_enqueued > s->last_completed) pending.push_back({s, s->last_enqueued});
    }
  }
  for (auto& p : pending)
    wait_for(*p.stream, p.seq);
}

bool stream_idle(const std::shared_ptr<Stream>& s) {
  auto idle = [](Stream& t) {
    std::lock_guard g(t.mu);
    return t.last_completed >= t.last_enqueued;
  };
  if (!idle(*s)) return false;
  if (s->kind != StreamKind::kLegacy) return true;
  Device* d = rt().device(s->device);
  std::lock_guard g(d->streams_mu);
  for (auto& t : d->streams)
    if (t->blocking() && !idle(*t)) return false;
  return true;
}

void close_stream(const std::shared_ptr<Stream>& s) {
  bool running;
  {
    std::lock_guard g(s->mu);
    s->closing = true;
    running = s->worker_running;
  }
  s->work_cv.notify_all();
  if (!running) remove_from_device(s);  // else the worker removes it once drained
}

void shutdown_workers() {
  Runtime& r = rt();
  // Wake every worker and every waiter; they see shutting_down and return.
  for (auto& d : r.devices) {
    std::vector<std::shared_ptr<Stream>> streams;
    {
      std::lock_guard g(d->streams_mu);
      streams = d->streams;
    }
    for (auto& s : streams) {
      { std::lock_guard g(s->mu); }
      s->work_cv.notify_all();
      s->done_cv.notify_all();
    }
  }
  std::unique_lock lk(r.workers_mu);
  // A worker inside a long host function gets two seconds, then is left behind (detached).
  r.workers_cv.wait_for(lk, std::chrono::seconds(2), [&] {
    return std::all_of(r.workers.begin(), r.workers.end(), [](auto& w) { return w.done; });
  });
  for (auto it = r.workers.begin(); it != r.workers.end();) {
    if (it->done) {
      it->thread.join();
      it = r.workers.erase(it);
    } else {
      it->thread.detach();  // keeps its slot: it still writes `done` when it ends
      ++it;
    }
  }
}

}  // namespace standin
