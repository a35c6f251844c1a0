// Internal types of the stand-in CUDA runtime. See runtime.cpp for the design overview.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

// The driver API's types (the driver's functions are called through pointers only). Included
// before __CUDA_API_VERSION_INTERNAL is set, so it declares the current (_v2) names only.
#include <cuda.h>

// Declare every entry point the real runtime exports: the plain names and the per-thread
// default-stream variants (_ptds/_ptsz) that programs built with CUDA_API_PER_THREAD_DEFAULT_STREAM
// reference. The declarations get default visibility; everything else is hidden
// (-fvisibility=hidden) and the version script exports only cuda* and standin*.
#define __CUDA_API_VERSION_INTERNAL 1
#pragma GCC visibility push(default)
#include <cuda_runtime_api.h>
#include "cuda_standin.h"
#pragma GCC visibility pop

struct StandinDriverTable;  // driver_table.h

namespace standin {

// The call kinds of the virtual memory management API that failure injection names
// (STANDIN_FAIL_VMM, standinInjectVmmFailures): "create", "release", ...
enum VmmKind {
  kVmmCreate,
  kVmmRelease,
  kVmmReserve,
  kVmmAddressFree,
  kVmmMap,
  kVmmUnmap,
  kVmmSetAccess,
  kVmmKindCount
};
inline constexpr const char* kVmmKindNames[kVmmKindCount] = {
    "create", "release", "reserve", "address_free", "map", "unmap", "set_access"};

// ---------------------------------------------------------------------------------------------
// Configuration (config.cpp): read once from the environment at the first API call.
struct Config {
  int device_count = 1;
  uint64_t device_memory = 16ull << 30;
  uint64_t other_memory = 0;
  uint64_t malloc_latency_us = 0;
  uint64_t free_latency_us = 0;
  std::vector<uint64_t> fail_malloc_at;  // 1-based call numbers
  double fail_malloc_rate = 0;
  uint64_t seed = 0;
  std::vector<uint64_t> fail_free_at;  // 1-based call numbers
  bool no_driver = false;
  bool driver_library = true;  // load the stand-in libcuda.so.1 beside this library
  uint64_t async_delay_us = 0;
  uint64_t latency_jitter_us = 0;         // extra random 0..N us per malloc, free and stream op
  bool vmm = true;                        // the driver's VMM API (STANDIN_VMM=0: not supported)
  uint64_t vmm_granularity = 2ull << 20;  // cuMemGetAllocationGranularity (a power of two)
  std::vector<uint64_t> fail_vmm_at[kVmmKindCount];  // 1-based call numbers per kind
};
Config load_config();
// "1024", "64K", "64KiB", "1.5GiB", "2G" (binary units; B, KB, MB... also mean binary).
bool parse_size(const char* text, uint64_t* out);
void warn(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// ---------------------------------------------------------------------------------------------
// Errors (errors.cpp).
const char* error_name(cudaError_t e);  // nullptr for an unknown code

// ---------------------------------------------------------------------------------------------
// Per-thread state.
class Stream;
struct ThreadState {
  cudaError_t last_error = cudaSuccess;
  int device = 0;
  cudaStreamCaptureMode capture_mode = cudaStreamCaptureModeGlobal;
  bool in_worker = false;  // stream worker threads may not call the API
  // The driver's context stack (device ordinals of primary contexts; the back is current). When
  // not empty, `device` equals its back: the runtime's current device and the driver's current
  // context agree (contexts.cpp).
  std::vector<int> ctx_stack;
  // Set while the runtime calls the driver for its own cudaMalloc/cudaFree (memory.cpp): such
  // allocations count as runtime calls (mallocs, frees), not driver_mallocs/driver_frees.
  bool runtime_driver_call = false;
  std::vector<std::shared_ptr<Stream>> per_thread_streams;  // index: device
  ~ThreadState();
};
ThreadState& tls();

// Records `e` as the calling thread's last error (unless success / not-ready) and returns it.
inline cudaError_t ret(cudaError_t e) {
  if (e != cudaSuccess && e != cudaErrorNotReady) tls().last_error = e;
  return e;
}

// ---------------------------------------------------------------------------------------------
// Streams (stream_engine.cpp).
enum class StreamKind { kLegacy, kPerThread, kUser };

struct Capture;

struct Dep {
  std::shared_ptr<Stream> stream;
  uint64_t seq;
};

struct Op {
  uint64_t seq = 0;
  std::vector<Dep> deps;       // run only after each (stream, seq) completed
  std::function<void()> work;  // empty: a pure ordering marker
  bool counted = true;         // counts in async_ops
};

class Stream {
 public:
  Stream(uint64_t id, int device, StreamKind kind, unsigned flags, int priority)
      : id(id), device(device), kind(kind), flags(flags), priority(priority) {}
  // Blocking streams order with the legacy stream (per-thread default streams do too).
  bool blocking() const {
    return kind == StreamKind::kPerThread ||
           (kind == StreamKind::kUser && !(flags & cudaStreamNonBlocking));
  }

  const uint64_t id;  // the handle value for user streams
  const int device;
  const StreamKind kind;
  const unsigned flags;
  const int priority;

  std::mutex mu;
  std::condition_variable work_cv;   // worker: queue not empty / closing / shutdown
  std::condition_variable done_cv;   // waiters: last_completed advanced / shutdown
  std::deque<Op> queue;              // guarded by mu
  uint64_t last_enqueued = 0;        // guarded by mu
  uint64_t last_completed = 0;       // guarded by mu
  bool worker_running = false;       // guarded by mu
  bool closing = false;              // guarded by mu: destroyed, drain then stop
  std::shared_ptr<Capture> capture;  // guarded by mu: the capture this stream records into
};

struct SubmitResult {
  cudaError_t error = cudaSuccess;
  uint64_t seq = 0;                   // sequence number of the queued op (0 when captured)
  std::shared_ptr<Capture> captured;  // set when the op was recorded into a capture
};

struct SubmitOptions {
  bool counted = true;                // counts in async_ops when it runs
  bool record_when_capturing = true;  // false: drop (do not record) when the stream captures
  std::vector<Dep> extra_deps;
};

// Queues `work` on `s` (or records it into s's capture), with the legacy/blocking ordering deps.
SubmitResult submit(const std::shared_ptr<Stream>& s, std::function<void()> work,
                    SubmitOptions opts = {});
// Waits until `s` completed op `seq` (or the runtime shuts down).
void wait_for(Stream& s, uint64_t seq);
bool is_done(Stream& s, uint64_t seq);
// Waits for all work queued so far on every stream of a device.
void drain_device(int device);
// True when every stream of `device` (legacy: plus its blocking streams) has no pending work.
bool stream_idle(const std::shared_ptr<Stream>& s);
// Marks a stream destroyed: queued work still runs, then its worker exits.
void close_stream(const std::shared_ptr<Stream>& s);
// Registers a new stream with its device.
std::shared_ptr<Stream> make_stream(int device, StreamKind kind, unsigned flags, int priority);
// Stops every worker (at exit): queued work is dropped.
void shutdown_workers();

// Resolves a stream handle. per_thread_default: the _ptsz entry points, where 0 means
// cudaStreamPerThread.
cudaError_t resolve_stream(cudaStream_t h, bool per_thread_default, std::shared_ptr<Stream>* out);

// ---------------------------------------------------------------------------------------------
// Capture and graphs (capture.cpp).
struct GraphNode {
  std::function<void()> work;
  bool counted = true;
};
struct Graph {
  std::vector<GraphNode> nodes;  // guarded by Runtime::capture_mu
};
struct Capture {
  uint64_t id = 0;
  cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
  std::thread::id thread;
  int device = 0;
  uint64_t graph_handle = 0;
  std::shared_ptr<Graph> graph;
  std::shared_ptr<Stream> origin;
  // guarded by Runtime::capture_mu:
  bool invalidated = false;
  bool ended = false;
  std::vector<std::weak_ptr<Stream>> members;
};
// Appends a node to an active capture; cudaErrorStreamCaptureInvalidated if invalidated.
cudaError_t record_node(const std::shared_ptr<Capture>& c, std::function<void()> work,
                        bool counted);
// For cudaMalloc/cudaFree: true (and invalidates the offending captures, counts a violation on
// `device`) when the calling thread may not make unsafe calls now.
bool unsafe_call_prohibited(int device);
// Invalidates every active capture of a device (or of one stream when s != nullptr); returns
// whether there was one. Counts a violation on `device` when there was.
bool invalidate_captures(int device, const std::shared_ptr<Stream>& s);
void invalidate_capture(const std::shared_ptr<Capture>& c);
// Ends a capture (no graph is returned): it stops restricting calls, its streams stop recording.
void end_capture(const std::shared_ptr<Capture>& c);
// Ends every capture of a device without a graph (cudaDeviceReset).
void drop_captures(int device);

// ---------------------------------------------------------------------------------------------
// Memory (memory.cpp).
enum class AllocApi { kMalloc = 1, kPitch = 2, kManaged = 3, kAsync = 4, kDriver = 6 };
struct Allocation {
  size_t size = 0;       // as requested
  size_t mapped = 0;     // bytes mmapped
  size_t accounted = 0;  // size rounded up to 512
  int device = 0;
  AllocApi api = AllocApi::kMalloc;
  uint64_t serial = 0;
  bool free_pending = false;  // cudaFree waiting or cudaFreeAsync queued
};
struct HostAllocation {
  size_t size = 0;
  bool registered = false;  // cudaHostRegister (not ours to free)
  unsigned flags = 0;
  int device = 0;
};
// Finds the device allocation containing [p, p+n) (n may be 0). false when none.
bool find_device_range(const void* p, size_t n, Allocation* out, uintptr_t* base);
// True when [p, p+n) lies in a device allocation or in pinned/registered host memory.
bool known_range(const void* p, size_t n);
// Frees every non-stream-ordered allocation of a device without counting frees.
void release_device_allocations(int device);
// cudaFree's work after its entry checks (driver_api: count driver_frees, else frees).
cudaError_t free_device(void* p, bool driver_api);
// cudaMemGetInfo of a valid device.
void mem_get_info(int device, size_t* free, size_t* total);

// ---------------------------------------------------------------------------------------------
// Virtual memory management: the driver's cuMemCreate/cuMemMap family (vmm.cpp).
enum class VmmAccess {
  kNotVmm,        // not in any VMM reservation
  kAccessible,    // every byte mapped, with the access asked for
  kInaccessible,  // in a reservation, but some byte unmapped or without that access
};
// A range of VMM memory that queued work will touch, as it was mapped when the work was queued.
struct VmmRange {
  uintptr_t addr = 0;
  size_t size = 0;
  bool write = false;
  std::vector<uint64_t> mappings;  // serials of the mappings that covered it
};
// Classifies [p, p+n) (n 0 counts as 1 byte). write: some device may write every byte, else some
// device may read every byte. When accessible, *out describes the range for vmm_run_guarded.
VmmAccess vmm_check(const void* p, size_t n, bool write, VmmRange* out);
// Runs `work` (holding the VMM registry shared, so no range is unmapped while it runs) unless a
// range is no longer mapped as it was when queued (unmapped, remapped or made inaccessible): then
// skips it and counts one unmapped_accesses on `device`.
void vmm_run_guarded(int device, const std::vector<VmmRange>& ranges,
                     const std::function<void()>& work);
struct VmmMappingInfo {
  uintptr_t base = 0;  // the mapping (one cuMemMap call) containing the address
  size_t size = 0;
  int device = 0;           // of its physical memory
  bool accessible = false;  // some device may read its granule
};
bool vmm_find_mapping(const void* p, VmmMappingInfo* out);
// The table the runtime hands the stand-in driver (driver.cpp).
const StandinDriverTable* driver_table();
// Its entries for contexts (contexts.cpp) and device memory (memory.cpp): driver_table.h.
void ctx_get_current(int* ordinal);
CUresult ctx_set_current(int ordinal);
CUresult ctx_push(int ordinal);
CUresult ctx_pop(int* ordinal);
CUresult primary_retain(int ordinal);
CUresult primary_release(int ordinal);
CUresult primary_reset(int ordinal);
CUresult primary_state(int ordinal, unsigned* flags, int* active);
CUresult ctx_destroy(int ordinal);
CUresult ctx_synchronize(int ordinal);
CUresult driver_mem_alloc(CUdeviceptr* dptr, size_t bytesize, int ordinal);
CUresult driver_mem_alloc_pitch(CUdeviceptr* dptr, size_t* pitch, size_t width, size_t height,
                                unsigned element_size, int ordinal);
CUresult driver_mem_alloc_managed(CUdeviceptr* dptr, size_t bytesize, unsigned flags, int ordinal);
CUresult driver_mem_alloc_async(CUdeviceptr* dptr, size_t bytesize, CUstream stream,
                                bool per_thread);
CUresult driver_mem_free(CUdeviceptr dptr);
CUresult driver_mem_free_async(CUdeviceptr dptr, CUstream stream, bool per_thread);
CUresult driver_mem_get_info(size_t* free, size_t* total, int ordinal);
CUresult driver_mem_get_address_range(CUdeviceptr* base, size_t* size, CUdeviceptr dptr);
CUresult driver_ipc_get_mem_handle(CUipcMemHandle* handle, CUdeviceptr dptr);
cudaError_t ipc_get_handle(cudaIpcMemHandle_t* handle, void* devPtr);

// ---------------------------------------------------------------------------------------------
// Handles: opaque values that never repeat, so a stale handle is always detected.
template <typename T>
class HandleTable {
 public:
  uint64_t add(std::shared_ptr<T> obj, uint64_t id);
  std::shared_ptr<T> get(uint64_t id) const {
    std::shared_lock lk(mu_);
    auto it = map_.find(id);
    return it == map_.end() ? nullptr : it->second;
  }
  std::shared_ptr<T> remove(uint64_t id) {
    std::unique_lock lk(mu_);
    auto it = map_.find(id);
    if (it == map_.end()) return nullptr;
    auto obj = std::move(it->second);
    map_.erase(it);
    return obj;
  }
  // Removes and returns every object for which pred(obj) holds.
  template <typename F>
  std::vector<std::shared_ptr<T>> take_if(F pred) {
    std::vector<std::shared_ptr<T>> taken;
    std::unique_lock lk(mu_);
    for (auto it = map_.begin(); it != map_.end();) {
      if (pred(*it->second)) {
        taken.push_back(std::move(it->second));
        it = map_.erase(it);
      } else {
        ++it;
      }
    }
    return taken;
  }

 private:
  mutable std::shared_mutex mu_;
  std::unordered_map<uint64_t, std::shared_ptr<T>> map_;
};
template <typename T>
uint64_t HandleTable<T>::add(std::shared_ptr<T> obj, uint64_t id) {
  std::unique_lock lk(mu_);
  map_.emplace(id, std::move(obj));
  return id;
}

struct RecordPoint {
  std::shared_ptr<Stream> stream;  // written before publication, then read-only
  uint64_t seq = 0;
  double time_ms = 0;  // written by the worker before it completes `seq`
};
struct Event {
  unsigned flags = 0;
  int device = 0;
  std::mutex mu;
  std::shared_ptr<RecordPoint> point;    // guarded by mu: last real record
  std::shared_ptr<Capture> captured_in;  // guarded by mu: last record was into this capture
};
struct GraphExec {
  std::shared_ptr<const std::vector<GraphNode>> nodes;
};
struct MemPool {
  int device = 0;
};

// ---------------------------------------------------------------------------------------------
// Devices and the process-wide runtime (runtime.cpp).
struct Counters {
  std::atomic<uint64_t> mallocs{0}, malloc_failures{0}, frees{0}, free_failures{0},
      peak_bytes_held{0}, device_syncs{0}, implicit_syncs{0}, stream_syncs{0},
      capture_violations{0}, get_device_calls{0}, async_ops{0}, driver_mallocs{0}, driver_frees{0};
};

struct VmmCounters {  // StandinVmmCounters (cuda_standin.h)
  std::atomic<uint64_t> creates{0}, create_failures{0}, releases{0}, maps{0}, unmaps{0},
      set_access_calls{0}, reserves{0}, address_frees{0}, other_failures{0}, unmapped_accesses{0};
  std::atomic<uint64_t> bytes_physical{0}, pages_mapped{0};  // live figures
};

struct Device {
  int index = 0;
  uint64_t capacity = 0;
  std::atomic<uint64_t> other_bytes{0};
  std::atomic<uint64_t> held_bytes{0};
  std::atomic<unsigned> flags{0};
  Counters counters;
  VmmCounters vmm;
  std::shared_ptr<MemPool> default_pool;
  uint64_t default_pool_handle = 0;
  std::mutex streams_mu;
  std::vector<std::shared_ptr<Stream>> streams;  // guarded by streams_mu: every stream with
                                                 // possibly pending work (legacy included)
  std::shared_ptr<Stream> legacy;
  // The primary context (contexts.cpp): active while retained through the driver or used by the
  // runtime (since its start or the last reset).
  std::atomic<int> primary_retains{0};
  std::atomic<bool> primary_runtime_active{false};
};

struct WorkerSlot {
  std::thread thread;
  bool done = false;  // guarded by Runtime::workers_mu
};

struct Runtime {
  Config config;
  std::vector<std::unique_ptr<Device>> devices;
  void* driver_handle = nullptr;           // the stand-in libcuda.so.1 the runtime loaded, if any
  std::atomic<bool> shutting_down{false};  // after the atexit teardown: calls return Unloading
  std::atomic<bool> forked_child{false};   // in a fork child: calls return InitializationError

  std::atomic<uint64_t> next_handle{0x10000};
  uint64_t new_handle() { return next_handle.fetch_add(0x10); }

  HandleTable<Stream> streams;
  HandleTable<Event> events;
  HandleTable<Graph> graphs;
  HandleTable<GraphExec> graph_execs;
  HandleTable<MemPool> mem_pools;

  // Memory registry.
  std::mutex alloc_mu;
  std::map<uintptr_t, Allocation> allocations;           // guarded by alloc_mu
  std::map<uintptr_t, HostAllocation> host_allocations;  // guarded by alloc_mu
  std::map<uintptr_t, int> ipc_opened;                   // guarded by alloc_mu: base -> count
  std::atomic<uint64_t> alloc_serial{1};
  std::atomic<uint64_t> malloc_calls{0};
  std::atomic<uint64_t> free_calls{0};
  std::atomic<int64_t> injected_malloc_failures{0};
  std::atomic<uint64_t> injected_faults{0};  // failures caused by injection (malloc, free, VMM)

  // Captures.
  std::mutex capture_mu;
  std::list<std::shared_ptr<Capture>> active_captures;  // guarded by capture_mu
  std::atomic<int> active_capture_count{0};
  std::atomic<uint64_t> next_capture_id{1};

  // Stream workers.
  std::mutex workers_mu;
  std::condition_variable workers_cv;
  std::list<WorkerSlot> workers;  // guarded by workers_mu

  Device* device(int i) {
    return i >= 0 && i < static_cast<int>(devices.size()) ? devices[i].get() : nullptr;
  }
};

Runtime& rt();
// Common checks at the start of every API call: fork child, no driver, unloading, no device,
// called from a stream callback.
cudaError_t enter();
// Sleeps (or spins, for short waits) `us` microseconds.
void delay_us(uint64_t us);
// delay_us(base + a random 0..STANDIN_LATENCY_JITTER_US).
void delay_with_jitter_us(uint64_t base);
void note_held_peak(Device& d, uint64_t held);
// The current context's device, for the stand-in driver. 0 or a CUresult.
int driver_current_device(int* device);
// Makes the primary context of the runtime's current device current when the thread has no
// current context, and marks it used by the runtime (every runtime call, from enter()).
inline void bind_runtime_context(ThreadState& t, Device& d) {
  if (t.ctx_stack.empty()) t.ctx_stack.push_back(t.device);
  if (!d.primary_runtime_active.load(std::memory_order_relaxed))
    d.primary_runtime_active.store(true, std::memory_order_relaxed);
}
// The runtime's current device changes (cudaSetDevice): its primary context becomes current.
void set_runtime_device(int device);
// cudaDeviceReset of a valid device: drains it, destroys its streams, frees its allocations
// (not stream-ordered ones), clears its flags; the primary context is no longer used.
void reset_device(int device);
// The driver functions the runtime calls for cudaMalloc, cudaFree, cudaMemGetInfo and
// cudaDeviceSynchronize, obtained through the driver's cuGetProcAddress_v2 (cudaVersion 13000)
// at the first such call, as NVIDIA's runtime obtains its driver functions. Null members (no
// driver library): the runtime calls its own implementation directly.
struct DriverFunctions {
  CUresult (*mem_alloc)(CUdeviceptr* dptr, size_t bytesize) = nullptr;  // cuMemAlloc_v2
  CUresult (*mem_free)(CUdeviceptr dptr) = nullptr;                     // cuMemFree_v2
  CUresult (*mem_get_info)(size_t* free, size_t* total) = nullptr;      // cuMemGetInfo_v2
  CUresult (*ctx_synchronize)(CUcontext ctx) = nullptr;  // cuCtxSynchronize_v2 (13000's)
};
const DriverFunctions& driver_functions();
// While alive, driver calls of this thread are the runtime's own
// (ThreadState::runtime_driver_call).
class RuntimeDriverCall {
 public:
  RuntimeDriverCall() : saved_(tls().runtime_driver_call) { tls().runtime_driver_call = true; }
  ~RuntimeDriverCall() { tls().runtime_driver_call = saved_; }
  RuntimeDriverCall(const RuntimeDriverCall&) = delete;
  RuntimeDriverCall& operator=(const RuntimeDriverCall&) = delete;

 private:
  bool saved_;
};
// An attribute of a valid device as cudaDeviceGetAttribute answers it; false if unknown.
bool device_attribute(int attr, int device, int* value);

// Handles and addresses kept as integers, turned back into the API's pointer types.
template <typename H>
H to_handle(uint64_t id) {
  return reinterpret_cast<H>(static_cast<uintptr_t>(id));  // NOLINT(performance-no-int-to-ptr)
}

}  // namespace standin

// Start of every API entry point: returns the runtime's refusal, if any, as the call's error.
#define STANDIN_ENTER()                                                                 \
  do {                                                                                  \
    if (cudaError_t enter_err_ = ::standin::enter()) return ::standin::ret(enter_err_); \
  } while (0)
