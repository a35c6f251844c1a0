/* cuda_standin.h: extension API of the cudapool stand-in CUDA runtime (libcudart.so.13 for tests).
 *
 * Tests and tools call these to read counters and steer the stand-in. A program that may run
 * against either runtime finds them with dlsym(RTLD_DEFAULT, "standinIsStandin"): NVIDIA's
 * runtime does not export them. Plain C, no CUDA header needed. All functions are thread-safe.
 */
#ifndef CUDAPOOL_CUDA_STANDIN_H_
#define CUDAPOOL_CUDA_STANDIN_H_

#if defined(__GNUC__)
#define STANDIN_API __attribute__((visibility("default")))
#else
#define STANDIN_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef struct StandinCounters {
  unsigned long long mallocs;         /* successful device allocations (cudaMalloc, Pitch, Managed,
                                         MallocAsync, MallocFromPoolAsync) */
  unsigned long long malloc_failures; /* failed cudaMalloc* calls (out of memory or injected) */
  unsigned long long frees;           /* successful cudaFree/cudaFreeAsync of device allocations */
  unsigned long long free_failures; /* failed cudaFree/cudaFreeAsync (unknown pointer, injected) */
  unsigned long long bytes_held;    /* bytes currently allocated on the device (sizes as requested,
                                       rounded up to 512) */
  unsigned long long peak_bytes_held; /* highest bytes_held since start or standinResetCounters */
  unsigned long long device_syncs;    /* explicit cudaDeviceSynchronize calls that synchronized */
  unsigned long long implicit_syncs;  /* waits cudaFree performed for queued work (one per
                                         successful cudaFree of a non-stream-ordered allocation) */
  unsigned long long stream_syncs;    /* cudaStreamSynchronize + cudaEventSynchronize calls */
  unsigned long long capture_violations; /* unsafe calls made while a capture was active (sync,
                                            malloc, free, implicit legacy-stream sync) that
                                            invalidated a capture */
  unsigned long long get_device_calls;   /* cudaGetDevice calls, on the caller's current device */
  unsigned long long async_ops; /* operations executed by stream workers (memset, memcpy, host
                                   function, callback, event record, graph launch, free) */
  /* Appended fields (the ones above keep their offsets). */
  unsigned long long driver_mallocs; /* successful device allocations made through the driver API
                                        by a caller other than the stand-in runtime
                                        (cuMemAlloc_v2, cuMemAllocPitch_v2, cuMemAllocManaged,
                                        cuMemAllocAsync); the runtime's own cuMemAlloc_v2 calls
                                        for cudaMalloc count in mallocs */
  unsigned long long driver_frees;   /* successful cuMemFree_v2/cuMemFreeAsync of such callers
                                        (of any device allocation, whichever API made it) */
} StandinCounters;

/* Which API made a device allocation (StandinAllocationInfo.api). */
enum {
  STANDIN_API_MALLOC = 1,
  STANDIN_API_MALLOC_PITCH = 2,
  STANDIN_API_MALLOC_MANAGED = 3,
  STANDIN_API_MALLOC_ASYNC = 4, /* cudaMallocAsync and cudaMallocFromPoolAsync */
  STANDIN_API_VMM = 5,          /* a cuMemMap mapping (base and size: the mapping's) */
  STANDIN_API_DRIVER = 6        /* cuMemAlloc_v2 or cuMemAllocPitch_v2 called by a program (the
                                   driver's managed and async allocations: 3 and 4) */
};

typedef struct StandinAllocationInfo {
  unsigned long long base; /* start of the allocation */
  unsigned long long size; /* size as requested */
  int device;
  int api; /* STANDIN_API_* */
} StandinAllocationInfo;

/* Counters of the driver's virtual memory management API (cuMemCreate, cuMemMap, ...). Each
 * counts successful calls, on the device of the physical memory involved (reserves and
 * address_frees: the calling thread's current device). */
typedef struct StandinVmmCounters {
  unsigned long long creates;           /* cuMemCreate */
  unsigned long long create_failures;   /* failed cuMemCreate (arguments, capacity, injected) */
  unsigned long long releases;          /* cuMemRelease */
  unsigned long long maps;              /* cuMemMap */
  unsigned long long unmaps;            /* cuMemUnmap */
  unsigned long long set_access_calls;  /* cuMemSetAccess */
  unsigned long long reserves;          /* cuMemAddressReserve */
  unsigned long long address_frees;     /* cuMemAddressFree */
  unsigned long long other_failures;    /* failed VMM calls other than cuMemCreate (invalid
                                           arguments or state, injected), on the current device */
  unsigned long long bytes_physical;    /* live: bytes of cuMemCreate memory not yet freed (a
                                           released handle's memory lives until its last unmap);
                                           also counted in StandinCounters.bytes_held */
  unsigned long long pages_mapped;      /* live: granules (cuMemGetAllocationGranularity) mapped */
  unsigned long long unmapped_accesses; /* queued memset/memcpy work skipped because VMM memory it
                                           touches was unmapped, remapped or made inaccessible
                                           after it was queued (a reuse violation), on the
                                           stream's device */
} StandinVmmCounters;

/* Counters of one device, or summed over all devices for device -1. 0 on success, -1 for an
 * invalid device or a null out. */
STANDIN_API int standinGetCounters(int device, StandinCounters* out);
/* VMM counters of one device, or summed over all devices for device -1. 0 on success, -1 for an
 * invalid device or a null out. standinResetCounters zeroes all but the live figures. */
STANDIN_API int standinGetVmmCounters(int device, StandinVmmCounters* out);
/* The next `count` calls of one VMM kind ("create", "release", "reserve", "address_free", "map",
 * "unmap", "set_access") that would succeed fail instead, doing nothing: create, reserve and map
 * with CUDA_ERROR_OUT_OF_MEMORY (2), the others with CUDA_ERROR_UNKNOWN (999). Replaces the
 * pending count of that kind; 0 cancels it. An unknown kind is ignored with a warning. */
STANDIN_API void standinInjectVmmFailures(const char* kind, int count);
/* Zeroes every counter of every device except bytes_held; peak_bytes_held := bytes_held. */
STANDIN_API void standinResetCounters(void);
/* Returns 1. */
STANDIN_API int standinIsStandin(void);
/* Bytes "other processes" use on a device (-1: every device): lowers cudaMemGetInfo's free and
 * the capacity left to cudaMalloc. Replaces STANDIN_OTHER_MEMORY. */
STANDIN_API void standinSetOtherMemory(int device, unsigned long long bytes);
/* The next `count` cudaMalloc* calls (that would allocate) fail with cudaErrorMemoryAllocation. */
STANDIN_API void standinInjectMallocFailures(int count);
/* Failures the stand-in injected so far (STANDIN_FAIL_MALLOC_AT/RATE, standinInjectMallocFailures,
 * STANDIN_FAIL_FREE_AT, STANDIN_FAIL_VMM, standinInjectVmmFailures), all devices. */
STANDIN_API unsigned long long standinInjectedFaults(void);
/* 0 and *out filled when ptr lies inside a live device allocation or a cuMemMap mapping
 * (api STANDIN_API_VMM), else -1. */
STANDIN_API int standinGetAllocationInfo(const void* ptr, StandinAllocationInfo* out);

#ifdef __cplusplus
}
#endif

#endif /* CUDAPOOL_CUDA_STANDIN_H_ */
