// Memset and memcpy, synchronous and stream-ordered. All memory is host-addressable, so every copy
// kind is a memmove run by the stream's worker. Checks at the call (like the driver's pointer
// checks): a memset target must lie in a device allocation or pinned host memory; a pointer on the
// device side of a copy kind must too; a pointer inside a device allocation must not run past its
// end. So queueing work on freed device memory fails with cudaErrorInvalidValue, and work that
// runs after the memory was freed (a pool reusing memory too early) faults or corrupts visibly.
//
// Synchronous cudaMemset/cudaMemcpy queue on the legacy stream (the per-thread default stream for
// the _ptds entry points) and wait for the op.
//
// VMM memory (cuMemMap, vmm.cpp) counts as device memory where it is mapped with access (write
// access for a memset target or copy destination); in VMM address space without it the call
// fails with cudaErrorInvalidValue. Work on VMM memory is checked again when it runs: if the
// memory was unmapped (or remapped) in between, it is skipped and counted (unmapped_accesses).
#include <cstring>

#include "standin_internal.h"

namespace standin {
namespace {

bool inside_device_allocation(const void* p) {
  return find_device_range(p, 0, nullptr, nullptr);
}

// VMM memory: accessible ranges join `guarded` (checked again when the work runs).
VmmAccess check_vmm(const void* p, size_t n, bool write, std::vector<VmmRange>* guarded) {
  VmmRange r;
  const VmmAccess a = vmm_check(p, n, write, &r);
  if (a == VmmAccess::kAccessible) guarded->push_back(std::move(r));
  return a;
}

// A pointer that is in a device allocation must hold [p, p+n); one in VMM address space must be
// mapped with access; one on the device side of the copy kind must be device or pinned memory.
cudaError_t check_side(const void* p, size_t n, bool device_side, bool write,
                       std::vector<VmmRange>* guarded) {
  if (inside_device_allocation(p))
    return find_device_range(p, n, nullptr, nullptr) ? cudaSuccess : cudaErrorInvalidValue;
  switch (check_vmm(p, n, write, guarded)) {
    case VmmAccess::kAccessible:
      return cudaSuccess;
    case VmmAccess::kInaccessible:
      return cudaErrorInvalidValue;
    case VmmAccess::kNotVmm:
      break;
  }
  if (device_side && !known_range(p, n)) return cudaErrorInvalidValue;
  return cudaSuccess;
}

// A memset target: device, pinned or accessible VMM memory.
cudaError_t check_target(const void* p, size_t n, std::vector<VmmRange>* guarded) {
  switch (check_vmm(p, n, true, guarded)) {
    case VmmAccess::kAccessible:
      return cudaSuccess;
    case VmmAccess::kInaccessible:
      return cudaErrorInvalidValue;
    case VmmAccess::kNotVmm:
      break;
  }
  return known_range(p, n) ? cudaSuccess : cudaErrorInvalidValue;
}

cudaError_t check_kind(cudaMemcpyKind kind, bool* dst_device, bool* src_device) {
  switch (kind) {
    case cudaMemcpyHostToHost:
      *dst_device = false, *src_device = false;
      return cudaSuccess;
    case cudaMemcpyHostToDevice:
      *dst_device = true, *src_device = false;
      return cudaSuccess;
    case cudaMemcpyDeviceToHost:
      *dst_device = false, *src_device = true;
      return cudaSuccess;
    case cudaMemcpyDeviceToDevice:
      *dst_device = true, *src_device = true;
      return cudaSuccess;
    case cudaMemcpyDefault:
      *dst_device = false, *src_device = false;
      return cudaSuccess;
  }
  return cudaErrorInvalidMemcpyDirection;
}

// Queues `work` on the stream; with `sync`, waits for it (a capturing stream refuses a
// synchronous call: it would have to wait for work that is only being recorded). `guarded`: the
// VMM ranges it touches, which must still be mapped when it runs.
cudaError_t run(cudaStream_t h, bool ptd, bool sync, std::function<void()> work,
                std::vector<VmmRange> guarded = {}) {
  std::shared_ptr<Stream> s;
  if (cudaError_t e = resolve_stream(h, ptd, &s)) return e;
  if (sync && invalidate_captures(s->device, s)) return cudaErrorStreamCaptureUnsupported;
  if (work && !guarded.empty()) {
    work = [device = s->device, guarded = std::move(guarded), inner = std::move(work)] {
      vmm_run_guarded(device, guarded, inner);
    };
  }
  SubmitOptions opts;
  opts.counted = static_cast<bool>(work);  // a prefetch is an ordering point only
  SubmitResult res = submit(s, std::move(work), std::move(opts));
  if (res.error || !sync || res.captured) return res.error;
  wait_for(*s, res.seq);
  return cudaSuccess;
}

// A prefetch target: device, pinned or accessible VMM memory (an ordering point only).
bool prefetchable(const void* p, size_t n) {
  switch (vmm_check(p, n, false, nullptr)) {
    case VmmAccess::kAccessible:
      return true;
    case VmmAccess::kInaccessible:
      return false;
    case VmmAccess::kNotVmm:
      break;
  }
  return known_range(p, n);
}

cudaError_t memset_impl(void* dst, int value, size_t count, cudaStream_t h, bool ptd, bool sync) {
  STANDIN_ENTER();
  if (count == 0) return cudaSuccess;
  std::vector<VmmRange> guarded;
  if (!dst) return ret(cudaErrorInvalidValue);
  if (cudaError_t e = check_target(dst, count, &guarded)) return ret(e);
  return ret(run(
      h, ptd, sync, [dst, value, count] { memset(dst, value, count); }, std::move(guarded)));
}

cudaError_t memset2d_impl(void* dst, size_t pitch, int value, size_t width, size_t height,
                          cudaStream_t h, bool ptd, bool sync) {
  STANDIN_ENTER();
  if (width == 0 || height == 0) return cudaSuccess;
  if (width > pitch) return ret(cudaErrorInvalidPitchValue);
  std::vector<VmmRange> guarded;
  if (!dst || pitch > (SIZE_MAX - width) / height) return ret(cudaErrorInvalidValue);
  if (cudaError_t e = check_target(dst, pitch * (height - 1) + width, &guarded)) return ret(e);
  auto* base = static_cast<char*>(dst);
  return ret(run(
      h, ptd, sync,
      [base, pitch, value, width, height] {
        for (size_t row = 0; row < height; ++row)
          memset(base + row * pitch, value, width);
      },
      std::move(guarded)));
}

cudaError_t memcpy_impl(void* dst, const void* src, size_t count, cudaMemcpyKind kind,
                        cudaStream_t h, bool ptd, bool sync) {
  STANDIN_ENTER();
  bool dst_device = false, src_device = false;
  if (cudaError_t e = check_kind(kind, &dst_device, &src_device)) return ret(e);
  if (count == 0) return cudaSuccess;
  if (!dst || !src) return ret(cudaErrorInvalidValue);
  std::vector<VmmRange> guarded;
  if (cudaError_t e = check_side(dst, count, dst_device, true, &guarded)) return ret(e);
  if (cudaError_t e = check_side(src, count, src_device, false, &guarded)) return ret(e);
  return ret(run(
      h, ptd, sync, [dst, src, count] { memmove(dst, src, count); }, std::move(guarded)));
}

cudaError_t memcpy2d_impl(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width,
                          size_t height, cudaMemcpyKind kind, cudaStream_t h, bool ptd, bool sync) {
  STANDIN_ENTER();
  bool dst_device = false, src_device = false;
  if (cudaError_t e = check_kind(kind, &dst_device, &src_device)) return ret(e);
  if (width == 0 || height == 0) return cudaSuccess;
  if (width > dpitch || width > spitch) return ret(cudaErrorInvalidPitchValue);
  if (!dst || !src || dpitch > (SIZE_MAX - width) / height || spitch > (SIZE_MAX - width) / height)
    return ret(cudaErrorInvalidValue);
  std::vector<VmmRange> guarded;
  if (cudaError_t e = check_side(dst, dpitch * (height - 1) + width, dst_device, true, &guarded))
    return ret(e);
  if (cudaError_t e = check_side(src, spitch * (height - 1) + width, src_device, false, &guarded))
    return ret(e);
  auto* d = static_cast<char*>(dst);
  auto* s = static_cast<const char*>(src);
  return ret(run(
      h, ptd, sync,
      [d, dpitch, s, spitch, width, height] {
        for (size_t row = 0; row < height; ++row)
          memmove(d + row * dpitch, s + row * spitch, width);
      },
      std::move(guarded)));
}

}  // namespace
}  // namespace standin

using namespace standin;

extern "C" {

cudaError_t cudaMemset(void* devPtr, int value, size_t count) {
  return memset_impl(devPtr, value, count, nullptr, false, true);
}
cudaError_t cudaMemset_ptds(void* devPtr, int value, size_t count) {
  return memset_impl(devPtr, value, count, nullptr, true, true);
}
cudaError_t cudaMemsetAsync(void* devPtr, int value, size_t count, cudaStream_t stream) {
  return memset_impl(devPtr, value, count, stream, false, false);
}
cudaError_t cudaMemsetAsync_ptsz(void* devPtr, int value, size_t count, cudaStream_t stream) {
  return memset_impl(devPtr, value, count, stream, true, false);
}

cudaError_t cudaMemset2D(void* devPtr, size_t pitch, int value, size_t width, size_t height) {
  return memset2d_impl(devPtr, pitch, value, width, height, nullptr, false, true);
}
cudaError_t cudaMemset2D_ptds(void* devPtr, size_t pitch, int value, size_t width, size_t height) {
  return memset2d_impl(devPtr, pitch, value, width, height, nullptr, true, true);
}
cudaError_t cudaMemset2DAsync(void* devPtr, size_t pitch, int value, size_t width, size_t height,
                              cudaStream_t stream) {
  return memset2d_impl(devPtr, pitch, value, width, height, stream, false, false);
}
cudaError_t cudaMemset2DAsync_ptsz(void* devPtr, size_t pitch, int value, size_t width,
                                   size_t height, cudaStream_t stream) {
  return memset2d_impl(devPtr, pitch, value, width, height, stream, true, false);
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, enum cudaMemcpyKind kind) {
  return memcpy_impl(dst, src, count, kind, nullptr, false, true);
}
cudaError_t cudaMemcpy_ptds(void* dst, const void* src, size_t count, enum cudaMemcpyKind kind) {
  return memcpy_impl(dst, src, count, kind, nullptr, true, true);
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, enum cudaMemcpyKind kind,
                            cudaStream_t stream) {
  return memcpy_impl(dst, src, count, kind, stream, false, false);
}
cudaError_t cudaMemcpyAsync_ptsz(void* dst, const void* src, size_t count, enum cudaMemcpyKind kind,
                                 cudaStream_t stream) {
  return memcpy_impl(dst, src, count, kind, stream, true, false);
}

cudaError_t cudaMemcpy2D(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width,
                         size_t height, enum cudaMemcpyKind kind) {
  return memcpy2d_impl(dst, dpitch, src, spitch, width, height, kind, nullptr, false, true);
}
cudaError_t cudaMemcpy2D_ptds(void* dst, size_t dpitch, const void* src, size_t spitch,
                              size_t width, size_t height, enum cudaMemcpyKind kind) {
  return memcpy2d_impl(dst, dpitch, src, spitch, width, height, kind, nullptr, true, true);
}
cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch,
                              size_t width, size_t height, enum cudaMemcpyKind kind,
                              cudaStream_t stream) {
  return memcpy2d_impl(dst, dpitch, src, spitch, width, height, kind, stream, false, false);
}
cudaError_t cudaMemcpy2DAsync_ptsz(void* dst, size_t dpitch, const void* src, size_t spitch,
                                   size_t width, size_t height, enum cudaMemcpyKind kind,
                                   cudaStream_t stream) {
  return memcpy2d_impl(dst, dpitch, src, spitch, width, height, kind, stream, true, false);
}

cudaError_t cudaMemcpyPeer(void* dst, int dstDevice, const void* src, int srcDevice, size_t count) {
  STANDIN_ENTER();
  if (!rt().device(dstDevice) || !rt().device(srcDevice)) return ret(cudaErrorInvalidDevice);
  return memcpy_impl(dst, src, count, cudaMemcpyDeviceToDevice, nullptr, false, true);
}
cudaError_t cudaMemcpyPeerAsync(void* dst, int dstDevice, const void* src, int srcDevice,
                                size_t count, cudaStream_t stream) {
  STANDIN_ENTER();
  if (!rt().device(dstDevice) || !rt().device(srcDevice)) return ret(cudaErrorInvalidDevice);
  return memcpy_impl(dst, src, count, cudaMemcpyDeviceToDevice, stream, false, false);
}

cudaError_t cudaMemPrefetchAsync(const void* devPtr, size_t count, struct cudaMemLocation,
                                 unsigned int, cudaStream_t stream) {
  STANDIN_ENTER();
  if (!devPtr || !prefetchable(devPtr, count)) return ret(cudaErrorInvalidValue);
  return ret(run(stream, false, false, nullptr));
}
cudaError_t cudaMemPrefetchAsync_ptsz(const void* devPtr, size_t count, struct cudaMemLocation,
                                      unsigned int, cudaStream_t stream) {
  STANDIN_ENTER();
  if (!devPtr || !prefetchable(devPtr, count)) return ret(cudaErrorInvalidValue);
  return ret(run(stream, true, false, nullptr));
}

}  // extern "C"
