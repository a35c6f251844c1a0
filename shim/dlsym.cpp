// dlsym, interposed (docs/driver-api.md): a program that resolves a pooled name through a handle
// of the CUDA driver or runtime (numba and cuda-python: dlsym on libcuda.so.1; the static runtime,
// CuPy and XLA: dlsym of cuGetProcAddress on it, then lookups through that; Python's ctypes on
// libcudart.so) gets cudapool's function, as entry_points.cpp answers cuGetProcAddress. Every
// other lookup gets the real answer, exactly.
//
// RTLD_NEXT means "after the object that called dlsym", which glibc finds from its caller's return
// address: an interposer that called the real dlsym itself would move that point to itself. So
// dlsym is a few instructions (x86-64) that jump to the real dlsym for RTLD_NEXT and RTLD_DEFAULT
// (where cudapool's exports are found first anyway), leaving the return address as it was, and to
// the hook for every other handle with the caller's return address as a third argument. The real
// dlsym is found with dlvsym, which cudapool does not interpose, under glibc's versions of it
// (GLIBC_2.34, where dlsym moved into libc, then GLIBC_2.2.5), on first use: the sanitizers'
// runtimes call dlsym before any constructor of this library runs.
#include <dlfcn.h>

#include <atomic>

#include "shim/driver_runtime.h"
#include "shim/entry_points.h"

#if defined(__x86_64__)

namespace cudapool {
namespace {

using DlsymFn = void* (*)(void*, const char*);

}  // namespace
}  // namespace cudapool

extern "C" {

__attribute__((visibility("hidden"))) void* cudapool_real_dlsym = nullptr;

// Finds the real dlsym (first RTLD_NEXT or RTLD_DEFAULT lookup, or the hook's first call). The
// sanitizers' runtimes look their functions up this way before they are initialised: no
// instrumentation here.
__attribute__((visibility("hidden"), no_sanitize("address", "thread", "undefined"))) void*
cudapool_resolve_dlsym() {
  void* real = __atomic_load_n(&cudapool_real_dlsym, __ATOMIC_ACQUIRE);
  if (real != nullptr) return real;
  real = dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34");
  if (real == nullptr) real = dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.2.5");
  __atomic_store_n(&cudapool_real_dlsym, real, __ATOMIC_RELEASE);
  return real;
}

__attribute__((visibility("hidden"))) void* cudapool_dlsym_hook(void* handle, const char* name,
                                                                const void* caller) {
  auto real = reinterpret_cast<cudapool::DlsymFn>(cudapool_resolve_dlsym());
  if (real == nullptr) return nullptr;
  void* found = real(handle, name);
  if (found != nullptr && cudapool::substitute_entry_point(&found, caller))
    cudapool::g_dlsym_lookups.fetch_add(1, std::memory_order_relaxed);
  return found;
}

}  // extern "C"

// void* dlsym(void* handle, const char* name)
asm(R"(
    .text
    .globl dlsym
    .type dlsym, @function
dlsym:
    .cfi_startproc
    cmpq $-1, %rdi                      # RTLD_NEXT
    je 0f
    testq %rdi, %rdi                    # RTLD_DEFAULT: cudapool's exports come first anyway
    jne 2f
0:
    movq cudapool_real_dlsym(%rip), %rax
    testq %rax, %rax
    jz 1f
    jmp *%rax
1:  pushq %rdi
    .cfi_adjust_cfa_offset 8
    pushq %rsi
    .cfi_adjust_cfa_offset 8
    subq $8, %rsp
    .cfi_adjust_cfa_offset 8
    call cudapool_resolve_dlsym
    addq $8, %rsp
    .cfi_adjust_cfa_offset -8
    popq %rsi
    .cfi_adjust_cfa_offset -8
    popq %rdi
    .cfi_adjust_cfa_offset -8
    testq %rax, %rax
    jz 3f
    jmp *%rax
2:  movq (%rsp), %rdx                   # the caller's return address
    jmp cudapool_dlsym_hook
3:  ret                                 # no real dlsym: null
    .cfi_endproc
    .size dlsym, .-dlsym
)");

#endif  // __x86_64__
