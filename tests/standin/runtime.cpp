// cudapool stand-in CUDA runtime: libcudart.so.13 for machines without a GPU.
//
// What it is. A test double for NVIDIA's runtime, built as libcudart.so.13 with the same versioned
// symbols (cudaMalloc@@libcudart.so.13, ...), so test programs link and bind as against the real
// one and the cudapool shim interposes it unchanged. Signatures come from the real CUDA 13 headers.
//
// Model.
// - Devices (runtime.cpp, devices.cpp): STANDIN_DEVICE_COUNT devices, each with a capacity, bytes
//   held, bytes "other processes" use, and counters (StandinCounters) that tests read through
//   cuda_standin.h. Per-thread current device, last error and capture mode live in ThreadState.
// - Memory (memory.cpp): a device allocation is its own anonymous mmap (MAP_NORESERVE: an 80 GiB
//   device costs nothing untouched; munmap on free, so a use after free faults). A registry maps
//   base -> {size, device, API, serial}. Capacity is a lock-free compare-and-swap on held bytes.
// - Streams (stream_engine.cpp): every stream (user, the legacy stream of each device, the
//   per-thread default stream of each thread and device) owns a FIFO of ops and a worker thread,
//   started at its first op. Ordering uses dependency tickets, not a global lock: an op gets the
//   stream's next sequence number and a list of (stream, seq) it must wait for, taken when it is
//   queued. A legacy-stream op depends on the last op of every blocking stream of its device; an
//   op on a blocking stream (the per-thread default stream counts as one) depends on the last
//   legacy op. Non-blocking streams get no implicit deps. Deps only name ops queued earlier, so
//   the graph is acyclic and every wait ends. Events are (stream, seq) record points;
//   cudaStreamWaitEvent queues a marker op with the event's point as dep.
// - Capture (capture.cpp): a capturing stream records ops into a graph instead of queueing them;
//   a graph launch queues one op that replays the nodes. Unsafe calls (cudaMalloc, cudaFree,
//   synchronisation, implicit legacy-stream waits) follow the CUDA capture-mode rules: they fail
//   with cudaErrorStreamCaptureUnsupported (or ...Implicit), invalidate the capture and count a
//   capture violation.
// - Driver (driver.cpp, contexts.cpp, vmm.cpp): the runtime loads the stand-in libcuda.so.1 at its
//   start and hands it a table of functions (driver_table.h); the driver's cu* entry points
//   forward there. Like NVIDIA's runtime, the runtime reaches the driver's memory functions
//   through cuGetProcAddress_v2: cudaMalloc, cudaFree, cudaMemGetInfo and cudaDeviceSynchronize
//   call cuMemAlloc_v2, cuMemFree_v2, cuMemGetInfo_v2 and cuCtxSynchronize_v2 through pointers it
//   looked up at its first such call, so an interposer that answers cuGetProcAddress with its own
//   functions sees the runtime's allocations. Those calls count as runtime calls (mallocs, frees):
//   the runtime marks its thread while it calls (ThreadState::runtime_driver_call) and the
//   driver side counts driver_mallocs/driver_frees only for other callers. Contexts: one primary
//   context per device and a per-thread context stack (ThreadState::ctx_stack); every runtime
//   call makes the primary context of the runtime's current device current when the thread has
//   none, cudaSetDevice replaces the top, and driver calls that change the stack move the
//   runtime's current device with it. A program that loads only the driver gets the runtime
//   too: the driver's cuInit loads it (RTLD_LOCAL) and calls standinDriverStart.
//   Virtual memory management (cuMemCreate, cuMemMap, ...) lives in vmm.cpp: physical memory is
//   memfd-backed and counts on the same held bytes as cudaMalloc; mapped, accessible VMM memory is
//   device memory to copies.cpp and memory.cpp; queued work that finds its VMM memory unmapped
//   when it runs is skipped and counted (a reuse violation) instead of faulting.
// - Lifetime: the Runtime is created at the first call and never destroyed (late calls from
//   static destructors stay safe). An atexit teardown stops the workers (queued work is dropped,
//   as when a real process exits) and from then on calls return cudaErrorCudartUnloading, as
//   NVIDIA's runtime does. In a fork child of an initialised process calls return
//   cudaErrorInitializationError. Stream callbacks may not call the API (cudaErrorNotPermitted).
//
// Configuration: STANDIN_* environment variables, see config.cpp and tests/standin/README.md.
#include <dlfcn.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>
#include <type_traits>

#include "driver_table.h"
#include "standin_internal.h"

namespace standin {
namespace {

pid_t g_init_pid = 0;

void on_fork_child() {
  rt().forked_child.store(true);
}

void teardown() {
  Runtime& r = rt();
  if (r.forked_child.load() || getpid() != g_init_pid) return;
  r.shutting_down.store(true);
  shutdown_workers();
}

// Like NVIDIA's runtime, which loads libcuda.so.1 at its start: the stand-in driver library in
// driver/ beside this one, handed the table of runtime functions it forwards to (vmm.cpp).
void* load_driver_library() {
  Dl_info self{};
  if (dladdr(reinterpret_cast<void*>(&on_fork_child), &self) == 0 || !self.dli_fname)
    return nullptr;
  std::string path = self.dli_fname;
  path = path.substr(0, path.rfind('/') + 1) + "driver/libcuda.so.1";
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (h == nullptr) {
    warn("stand-in driver library not loaded: %s", dlerror());
    return nullptr;
  }
  using Attach = void (*)(const StandinDriverTable*);
  auto attach = reinterpret_cast<Attach>(dlsym(h, "standinDriverAttach"));
  if (attach == nullptr) return nullptr;
  attach(driver_table());
  return h;
}

// NVIDIA's runtime gets its driver entry points from cuGetProcAddress; so does this one, with
// the cudaVersion it was built for (13000: cuCtxSynchronize is then the _v2 taking a context).
// Found by dlsym on the driver's handle, so that an interposed dlsym or cuGetProcAddress sees
// the lookups. Not at the runtime's creation: an interposer's answer may call the runtime.
DriverFunctions bind_driver_functions(void* driver) {
  DriverFunctions f;
  if (driver == nullptr) return f;
  using GetProcAddress =
      CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*);
  auto get = reinterpret_cast<GetProcAddress>(dlsym(driver, "cuGetProcAddress_v2"));
  if (get == nullptr) return f;
  auto lookup = [&](const char* name, auto* slot) {
    void* fn = nullptr;
    CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    if (get(name, &fn, CUDART_VERSION, CU_GET_PROC_ADDRESS_DEFAULT, &status) == CUDA_SUCCESS)
      *slot = reinterpret_cast<std::remove_pointer_t<decltype(slot)>>(fn);
  };
  DriverFunctions all;
  lookup("cuMemAlloc", &all.mem_alloc);
  lookup("cuMemFree", &all.mem_free);
  lookup("cuMemGetInfo", &all.mem_get_info);
  lookup("cuCtxSynchronize", &all.ctx_synchronize);
  if (all.mem_alloc && all.mem_free && all.mem_get_info && all.ctx_synchronize) f = all;
  return f;
}

Runtime* create_runtime() {
  auto* r = new Runtime();  // never destroyed: calls after exit() must stay safe
  r->config = load_config();
  const int n = r->config.device_count;
  for (int i = 0; i < n; ++i) {
    auto d = std::make_unique<Device>();
    d->index = i;
    d->capacity = r->config.device_memory;
    d->other_bytes.store(r->config.other_memory);
    d->default_pool = std::make_shared<MemPool>();
    d->default_pool->device = i;
    d->default_pool_handle = r->mem_pools.add(d->default_pool, r->new_handle());
    d->legacy = std::make_shared<Stream>(r->new_handle(), i, StreamKind::kLegacy, 0, 0);
    d->streams.push_back(d->legacy);
    r->devices.push_back(std::move(d));
  }
  if (r->config.driver_library && !r->config.no_driver) r->driver_handle = load_driver_library();
  g_init_pid = getpid();
  atexit(teardown);
  pthread_atfork(nullptr, nullptr, on_fork_child);
  return r;
}

}  // namespace

Runtime& rt() {
  static Runtime* runtime = create_runtime();
  return *runtime;
}

const DriverFunctions& driver_functions() {
  static const DriverFunctions functions = bind_driver_functions(rt().driver_handle);
  return functions;
}

int driver_current_device(int* device) {
  Runtime& r = rt();
  if (r.forked_child.load(std::memory_order_relaxed) ||
      r.shutting_down.load(std::memory_order_acquire))
    return CUDA_ERROR_DEINITIALIZED;
  const ThreadState& t = tls();
  if (t.ctx_stack.empty() || r.device(t.ctx_stack.back()) == nullptr)
    return CUDA_ERROR_INVALID_CONTEXT;
  *device = t.ctx_stack.back();
  return 0;
}

cudaError_t enter() {
  ThreadState& t = tls();
  if (t.in_worker) return cudaErrorNotPermitted;
  Runtime& r = rt();
  if (r.forked_child.load(std::memory_order_relaxed)) return cudaErrorInitializationError;
  if (r.config.no_driver) return cudaErrorInsufficientDriver;
  if (r.shutting_down.load(std::memory_order_acquire)) return cudaErrorCudartUnloading;
  if (r.devices.empty()) return cudaErrorNoDevice;
  bind_runtime_context(t, *r.devices[t.device]);
  return cudaSuccess;
}

void delay_us(uint64_t us) {
  if (us == 0) return;
  if (us < 200) {  // short: spin, sleep granularity is too coarse
    timespec start{}, now{};
    clock_gettime(CLOCK_MONOTONIC, &start);
    do {
      clock_gettime(CLOCK_MONOTONIC, &now);
    } while (static_cast<uint64_t>((now.tv_sec - start.tv_sec) * 1000000000LL +
                                   (now.tv_nsec - start.tv_nsec)) < us * 1000);
    return;
  }
  std::this_thread::sleep_for(std::chrono::microseconds(us));
}

void delay_with_jitter_us(uint64_t base) {
  const uint64_t jitter = rt().config.latency_jitter_us;
  if (jitter == 0) {
    delay_us(base);
    return;
  }
  // Per-thread generator: no shared state, different sequences per thread.
  thread_local uint64_t state =
      rt().config.seed ^ (reinterpret_cast<uintptr_t>(&state) * 0x9E3779B97F4A7C15ull);
  state = state * 6364136223846793005ull + 1442695040888963407ull;
  delay_us(base + (state >> 33) % (jitter + 1));
}

void note_held_peak(Device& d, uint64_t held) {
  uint64_t peak = d.counters.peak_bytes_held.load(std::memory_order_relaxed);
  while (held > peak &&
         !d.counters.peak_bytes_held.compare_exchange_weak(peak, held, std::memory_order_relaxed)) {
  }
}

ThreadState::~ThreadState() {
  // The thread's per-thread default streams end with it; queued work still runs.
  for (auto& s : per_thread_streams)
    if (s) close_stream(s);
}

namespace {

void read_counters(Device& d, StandinCounters* c) {
  const Counters& k = d.counters;
  c->mallocs = k.mallocs.load();
  c->malloc_failures = k.malloc_failures.load();
  c->frees = k.frees.load();
  c->free_failures = k.free_failures.load();
  c->bytes_held = d.held_bytes.load();
  c->peak_bytes_held = k.peak_bytes_held.load();
  c->device_syncs = k.device_syncs.load();
  c->implicit_syncs = k.implicit_syncs.load();
  c->stream_syncs = k.stream_syncs.load();
  c->capture_violations = k.capture_violations.load();
  c->get_device_calls = k.get_device_calls.load();
  c->async_ops = k.async_ops.load();
  c->driver_mallocs = k.driver_mallocs.load();
  c->driver_frees = k.driver_frees.load();
}

void add_counters(StandinCounters* sum, const StandinCounters& c) {
  sum->mallocs += c.mallocs;
  sum->malloc_failures += c.malloc_failures;
  sum->frees += c.frees;
  sum->free_failures += c.free_failures;
  sum->bytes_held += c.bytes_held;
  sum->peak_bytes_held += c.peak_bytes_held;
  sum->device_syncs += c.device_syncs;
  sum->implicit_syncs += c.implicit_syncs;
  sum->stream_syncs += c.stream_syncs;
  sum->capture_violations += c.capture_violations;
  sum->get_device_calls += c.get_device_calls;
  sum->async_ops += c.async_ops;
  sum->driver_mallocs += c.driver_mallocs;
  sum->driver_frees += c.driver_frees;
}

// STANDIN_COUNTERS_FILE: the device-summed counters, one line of key=value pairs, at exit.
std::string* g_counters_path = nullptr;
pid_t g_counters_pid = 0;

void sum_counters(StandinCounters* sum) {
  *sum = StandinCounters{};
  for (auto& d : rt().devices) {
    StandinCounters c{};
    read_counters(*d, &c);
    add_counters(sum, c);
  }
}

void write_counters_file() {
  if (!g_counters_path || getpid() != g_counters_pid) return;
  StandinCounters c{};
  sum_counters(&c);
  StandinVmmCounters v{};
  standinGetVmmCounters(-1, &v);
  const std::string tmp = *g_counters_path + ".tmp." + std::to_string(getpid());
  FILE* f = fopen(tmp.c_str(), "w");
  if (!f) {
    warn("cannot write STANDIN_COUNTERS_FILE %s", g_counters_path->c_str());
    return;
  }
  fprintf(f,
          "mallocs=%llu malloc_failures=%llu frees=%llu free_failures=%llu bytes_held=%llu "
          "peak_bytes_held=%llu device_syncs=%llu implicit_syncs=%llu stream_syncs=%llu "
          "capture_violations=%llu get_device_calls=%llu async_ops=%llu vmm_creates=%llu "
          "vmm_create_failures=%llu vmm_releases=%llu vmm_maps=%llu vmm_unmaps=%llu "
          "vmm_set_access_calls=%llu vmm_reserves=%llu vmm_address_frees=%llu "
          "vmm_other_failures=%llu vmm_bytes_physical=%llu vmm_pages_mapped=%llu "
          "vmm_unmapped_accesses=%llu driver_mallocs=%llu driver_frees=%llu\n",
          c.mallocs, c.malloc_failures, c.frees, c.free_failures, c.bytes_held, c.peak_bytes_held,
          c.device_syncs, c.implicit_syncs, c.stream_syncs, c.capture_violations,
          c.get_device_calls, c.async_ops, v.creates, v.create_failures, v.releases, v.maps,
          v.unmaps, v.set_access_calls, v.reserves, v.address_frees, v.other_failures,
          v.bytes_physical, v.pages_mapped, v.unmapped_accesses, c.driver_mallocs, c.driver_frees);
  const bool ok = fclose(f) == 0;
  if (!ok || rename(tmp.c_str(), g_counters_path->c_str()) != 0) {
    warn("cannot write STANDIN_COUNTERS_FILE %s", g_counters_path->c_str());
    unlink(tmp.c_str());
  }
}

// Registered at load time (not at the first call) so that a program that never calls CUDA still
// leaves a file, and so that it runs after the teardown registered at the first call.
__attribute__((constructor)) void register_counters_file() {
  const char* path = getenv("STANDIN_COUNTERS_FILE");
  if (!path || !*path) return;
  g_counters_path = new std::string(path);
  g_counters_pid = getpid();
  atexit(write_counters_file);
}

}  // namespace
}  // namespace standin

using namespace standin;

extern "C" {

int standinGetCounters(int device, StandinCounters* out) {
  if (!out) return -1;
  StandinCounters sum{};
  if (device == -1) {
    sum_counters(&sum);
  } else {
    Device* d = rt().device(device);
    if (!d) return -1;
    read_counters(*d, &sum);
  }
  *out = sum;
  return 0;
}

void standinResetCounters(void) {
  for (auto& d : rt().devices) {
    Counters& k = d->counters;
    for (auto* a : {&k.mallocs, &k.malloc_failures, &k.frees, &k.free_failures, &k.device_syncs,
                    &k.implicit_syncs, &k.stream_syncs, &k.capture_violations, &k.get_device_calls,
                    &k.async_ops, &k.driver_mallocs, &k.driver_frees})
      a->store(0);
    k.peak_bytes_held.store(d->held_bytes.load());
    VmmCounters& v = d->vmm;  // bytes_physical and pages_mapped are live figures
    for (auto* a :
         {&v.creates, &v.create_failures, &v.releases, &v.maps, &v.unmaps, &v.set_access_calls,
          &v.reserves, &v.address_frees, &v.other_failures, &v.unmapped_accesses})
      a->store(0);
  }
}

int standinIsStandin(void) {
  return 1;
}

// The stand-in driver's cuInit, in a process where the runtime had not attached it: the runtime
// starts and hands `attach` its table (unless STANDIN_NO_DRIVER: no driver may work).
int standinDriverStart(void (*attach)(const StandinDriverTable*)) {
  Runtime& r = rt();
  if (r.config.no_driver || attach == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  attach(driver_table());
  return 0;
}

void standinSetOtherMemory(int device, unsigned long long bytes) {
  Runtime& r = rt();
  for (auto& d : r.devices)
    if (device == -1 || d->index == device) d->other_bytes.store(bytes);
}

unsigned long long standinInjectedFaults(void) {
  return rt().injected_faults.load();
}

void standinInjectMallocFailures(int count) {
  rt().injected_malloc_failures.store(count > 0 ? count : 0);
}

}  // extern "C"
