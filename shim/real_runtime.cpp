#include "shim/real_runtime.h"

#include <dlfcn.h>
#include <link.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <new>
#include <string>

namespace cudapool {

namespace {

std::mutex g_resolve_mutex;

template <typename Fn>
void bind(void* handle, const char* name, Fn*& slot) {
  slot = reinterpret_cast<Fn*>(dlsym(handle, name));
}

void bind_all(void* handle, RealRuntime* rt) {
  bind(handle, "cudaMalloc", rt->cudaMalloc);
  bind(handle, "cudaFree", rt->cudaFree);
  bind(handle, "cudaMemGetInfo", rt->cudaMemGetInfo);
  bind(handle, "cudaDeviceReset", rt->cudaDeviceReset);
  bind(handle, "cudaIpcGetMemHandle", rt->cudaIpcGetMemHandle);
  bind(handle, "cudaStreamBeginCapture", rt->cudaStreamBeginCapture);
  bind(handle, "cudaStreamBeginCapture_ptsz", rt->cudaStreamBeginCapture_ptsz);
  bind(handle, "cudaStreamBeginCaptureToGraph", rt->cudaStreamBeginCaptureToGraph);
  bind(handle, "cudaStreamBeginCaptureToGraph_ptsz", rt->cudaStreamBeginCaptureToGraph_ptsz);
  bind(handle, "cudaStreamEndCapture", rt->cudaStreamEndCapture);
  bind(handle, "cudaStreamEndCapture_ptsz", rt->cudaStreamEndCapture_ptsz);
  bind(handle, "cudaStreamIsCapturing", rt->cudaStreamIsCapturing);
  bind(handle, "cudaGetDevice", rt->cudaGetDevice);
  bind(handle, "cudaSetDevice", rt->cudaSetDevice);
  bind(handle, "cudaGetDeviceCount", rt->cudaGetDeviceCount);
  bind(handle, "cudaDeviceSynchronize", rt->cudaDeviceSynchronize);
  bind(handle, "cudaGetLastError", rt->cudaGetLastError);
  bind(handle, "cudaDeviceEnablePeerAccess", rt->cudaDeviceEnablePeerAccess);
  bind(handle, "cudaDeviceDisablePeerAccess", rt->cudaDeviceDisablePeerAccess);
}

// Stand-ins for the functions a partial runtime lacks (DESIGN §4.1: pass through, never crash).
template <typename Fn>
struct Missing;
template <typename... Args>
struct Missing<cudaError_t(Args...)> {
  static cudaError_t call(Args...) { return cudaErrorInsufficientDriver; }
};

template <typename Fn>
void stub_if_missing(Fn*& slot, const char* name, RealRuntime* rt) {
  if (slot != nullptr) return;
  slot = &Missing<Fn>::call;
  if (rt->first_missing == nullptr) rt->first_missing = name;
}

// A runtime that has cudaMalloc but not everything else the pool needs: pass-through only.
void make_passthrough_only(RealRuntime* rt) {
  rt->passthrough_only = true;
  rt->origin = "an incomplete CUDA runtime (pass-through only)";
  stub_if_missing(rt->cudaFree, "cudaFree", rt);
  stub_if_missing(rt->cudaMemGetInfo, "cudaMemGetInfo", rt);
  stub_if_missing(rt->cudaDeviceReset, "cudaDeviceReset", rt);
  stub_if_missing(rt->cudaIpcGetMemHandle, "cudaIpcGetMemHandle", rt);
  stub_if_missing(rt->cudaStreamEndCapture, "cudaStreamEndCapture", rt);
  stub_if_missing(rt->cudaStreamIsCapturing, "cudaStreamIsCapturing", rt);
  stub_if_missing(rt->cudaGetDevice, "cudaGetDevice", rt);
  stub_if_missing(rt->cudaSetDevice, "cudaSetDevice", rt);
  stub_if_missing(rt->cudaGetDeviceCount, "cudaGetDeviceCount", rt);
  stub_if_missing(rt->cudaDeviceSynchronize, "cudaDeviceSynchronize", rt);
  stub_if_missing(rt->cudaGetLastError, "cudaGetLastError", rt);
}

// Address of this library, to skip it when scanning loaded objects.
int self_marker;

struct LoadedRuntime {
  std::string path;
};

int find_loaded_runtime(struct dl_phdr_info* info, size_t, void* data) {
  auto* found = static_cast<LoadedRuntime*>(data);
  if (info->dlpi_name == nullptr || info->dlpi_name[0] == '\0') return 0;
  const char* base = std::strrchr(info->dlpi_name, '/');
  base = base != nullptr ? base + 1 : info->dlpi_name;
  if (std::strncmp(base, "libcudart.so", 12) != 0) return 0;
  // Skip ourselves should someone name the shim libcudart.
  auto self = reinterpret_cast<ElfW(Addr)>(&self_marker);
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD) continue;
    ElfW(Addr) start = info->dlpi_addr + ph.p_vaddr;
    if (self >= start && self < start + ph.p_memsz) return 0;
  }
  found->path = info->dlpi_name;
  return 1;
}

const RealRuntime* resolve() {
  auto* rt = new RealRuntime();  // lives for the process: late calls at exit still use it
  bind_all(RTLD_NEXT, rt);
  if (rt->complete()) {
    rt->origin = "the next library in link order";
    return rt;
  }
  RealRuntime next_in_order = *rt;
  LoadedRuntime loaded;
  dl_iterate_phdr(find_loaded_runtime, &loaded);
  if (!loaded.path.empty()) {
    // RTLD_NOLOAD: take a reference to the copy already loaded, never load a new one.
    if (void* handle = dlopen(loaded.path.c_str(), RTLD_LAZY | RTLD_NOLOAD)) {
      *rt = RealRuntime();
      bind_all(handle, rt);
      if (rt->complete()) {
        rt->origin = "a libcudart.so loaded privately (RTLD_LOCAL)";
        return rt;
      }
    }
  }
  if (next_in_order.cudaMalloc != nullptr) {  // the program's runtime, partly missing
    *rt = next_in_order;
    make_passthrough_only(rt);
    return rt;
  }
  delete rt;
  return nullptr;
}

}  // namespace

bool shared_runtime_loaded() {
  LoadedRuntime loaded;
  dl_iterate_phdr(find_loaded_runtime, &loaded);
  return !loaded.path.empty();
}

bool RealRuntime::complete() const {
  return cudaMalloc && cudaFree && cudaMemGetInfo && cudaDeviceReset && cudaIpcGetMemHandle &&
         cudaStreamEndCapture && cudaStreamIsCapturing && cudaGetDevice && cudaSetDevice &&
         cudaGetDeviceCount && cudaDeviceSynchronize && cudaGetLastError;
}

std::atomic<const RealRuntime*> g_real_runtime{nullptr};

const RealRuntime* resolve_real_runtime() {
  std::lock_guard lock(g_resolve_mutex);
  if (const RealRuntime* rt = g_real_runtime.load(std::memory_order_relaxed)) return rt;
  const RealRuntime* rt = resolve();
  g_real_runtime.store(rt, std::memory_order_release);
  return rt;
}

void reset_real_runtime_after_fork() {
  // The mutex may have been held by a thread that does not exist in the child.
  new (&g_resolve_mutex) std::mutex();
}

}  // namespace cudapool
