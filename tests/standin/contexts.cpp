// Contexts: the runtime side of the driver's primary contexts and per-thread context stacks.
//
// Each device has one primary context (the driver hands out an opaque CUcontext for it). Each
// thread has a stack of current contexts, device ordinals in ThreadState::ctx_stack; its back is
// the thread's current context. The runtime's current device (ThreadState::device) and the
// driver's current context agree, as on NVIDIA's stack:
// - every runtime call makes the primary context of the runtime's current device current when
//   the thread has no current context (enter(), bind_runtime_context);
// - cudaSetDevice(d) replaces the top of the stack with d's primary context (or pushes it);
// - cuCtxSetCurrent, cuCtxPushCurrent and cuCtxPopCurrent move the runtime's current device to
//   the new top (an empty stack leaves it; the next runtime call binds it again).
// A primary context is active while it is retained (cuDevicePrimaryCtxRetain) or the runtime uses
// it (since the runtime's start or the device's last reset). Its last release resets the device
// (frees its allocations, as cudaDeviceReset does) unless the runtime uses it, since NVIDIA's
// runtime holds a retain of its own. Resets keep the retain count and the context handle.
#include "driver_table.h"
#include "standin_internal.h"

namespace standin {
namespace {

// Callers (the driver) pass valid ordinals.
Device& dev(int ordinal) {
  return *rt().device(ordinal);
}

CUresult refused() {
  return tls().in_worker ? CUDA_ERROR_NOT_PERMITTED : CUDA_SUCCESS;
}

void follow_top(ThreadState& t) {
  if (!t.ctx_stack.empty()) t.device = t.ctx_stack.back();
}

}  // namespace

void set_runtime_device(int device) {
  ThreadState& t = tls();
  t.device = device;
  if (t.ctx_stack.empty())
    t.ctx_stack.push_back(device);
  else
    t.ctx_stack.back() = device;
  dev(device).primary_runtime_active.store(true, std::memory_order_relaxed);
}

void reset_device(int device) {
  Runtime& r = rt();
  drop_captures(device);
  drain_device(device);
  // The device's streams (and their handles) are gone; the legacy and per-thread default streams
  // are implicit and stay usable.
  for (auto& s : r.streams.take_if([&](Stream& s) { return s.device == device; }))
    close_stream(s);
  release_device_allocations(device);  // not counted as frees; stream-ordered memory survives
  Device& d = dev(device);
  d.flags.store(0);
  d.primary_runtime_active.store(false, std::memory_order_relaxed);
}

void ctx_get_current(int* ordinal) {
  const ThreadState& t = tls();
  *ordinal = t.ctx_stack.empty() ? -1 : t.ctx_stack.back();
}

CUresult ctx_set_current(int ordinal) {
  ThreadState& t = tls();
  if (ordinal < 0) {
    if (!t.ctx_stack.empty()) t.ctx_stack.pop_back();
  } else if (t.ctx_stack.empty()) {
    t.ctx_stack.push_back(ordinal);
  } else {
    t.ctx_stack.back() = ordinal;
  }
  follow_top(t);
  return CUDA_SUCCESS;
}

CUresult ctx_push(int ordinal) {
  ThreadState& t = tls();
  t.ctx_stack.push_back(ordinal);
  follow_top(t);
  return CUDA_SUCCESS;
}

CUresult ctx_pop(int* ordinal) {
  ThreadState& t = tls();
  if (t.ctx_stack.empty()) return CUDA_ERROR_INVALID_CONTEXT;
  *ordinal = t.ctx_stack.back();
  t.ctx_stack.pop_back();
  follow_top(t);
  return CUDA_SUCCESS;
}

CUresult primary_retain(int ordinal) {
  dev(ordinal).primary_retains.fetch_add(1);
  return CUDA_SUCCESS;
}

CUresult primary_release(int ordinal) {
  if (CUresult e = refused()) return e;
  Device& d = dev(ordinal);
  int n = d.primary_retains.load();
  do {
    if (n == 0) return CUDA_ERROR_INVALID_CONTEXT;
  } while (!d.primary_retains.compare_exchange_weak(n, n - 1));
  if (n == 1 && !d.primary_runtime_active.load(std::memory_order_relaxed)) reset_device(ordinal);
  return CUDA_SUCCESS;
}

CUresult primary_reset(int ordinal) {
  if (CUresult e = refused()) return e;
  reset_device(ordinal);
  return CUDA_SUCCESS;
}

CUresult primary_state(int ordinal, unsigned* flags, int* active) {
  Device& d = dev(ordinal);
  *flags = d.flags.load();
  *active = d.primary_retains.load() > 0 || d.primary_runtime_active.load() ? 1 : 0;
  return CUDA_SUCCESS;
}

CUresult ctx_destroy(int ordinal) {
  if (CUresult e = refused()) return e;
  reset_device(ordinal);
  ThreadState& t = tls();
  if (!t.ctx_stack.empty() && t.ctx_stack.back() == ordinal) {
    t.ctx_stack.pop_back();
    follow_top(t);
  }
  return CUDA_SUCCESS;
}

CUresult ctx_synchronize(int ordinal) {
  if (CUresult e = refused()) return e;
  // Every capture mode forbids it: the capture is invalidated and the call fails.
  if (invalidate_captures(ordinal, nullptr)) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  drain_device(ordinal);
  dev(ordinal).counters.device_syncs.fetch_add(1);
  return CUDA_SUCCESS;
}

}  // namespace standin
