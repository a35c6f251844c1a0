// The definition of a symbol in one loaded library, read from that library's own dynamic symbol
// table. The tools measure the device as the driver sees it (what nvidia-smi shows); with
// libcudapool.so preloaded, dlsym on the driver's handle answers cudaMalloc-like driver calls
// (cuMemGetInfo_v2 among them) with cudapool's functions, whose answers count the pool's idle
// memory as free (docs/driver-api.md). This lookup bypasses any dlsym.
#pragma once

#include <elf.h>
#include <link.h>

#include <cstring>

namespace cudapool::tools {

namespace detail {

struct NativeLookup {
  const char* library;  // file name prefix, e.g. "libcuda.so"
  const char* name;
  void* found = nullptr;
};

inline int find_native_symbol(dl_phdr_info* info, size_t, void* data) {
  auto* q = static_cast<NativeLookup*>(data);
  if (info->dlpi_name == nullptr) return 0;
  const char* base = std::strrchr(info->dlpi_name, '/');
  base = base != nullptr ? base + 1 : info->dlpi_name;
  if (std::strncmp(base, q->library, std::strlen(q->library)) != 0) return 0;
  const ElfW(Dyn)* dyn = nullptr;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    if (info->dlpi_phdr[i].p_type == PT_DYNAMIC)
      dyn = reinterpret_cast<const ElfW(Dyn)*>(info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
  }
  if (dyn == nullptr) return 0;
  // The loader relocates these entries in place on most targets; not on all.
  auto address = [&](ElfW(Addr) a) { return a < info->dlpi_addr ? a + info->dlpi_addr : a; };
  const ElfW(Sym)* symtab = nullptr;
  const char* strtab = nullptr;
  const std::uint32_t* hash = nullptr;
  const std::uint32_t* gnu_hash = nullptr;
  for (; dyn->d_tag != DT_NULL; ++dyn) {
    if (dyn->d_tag == DT_SYMTAB)
      symtab = reinterpret_cast<const ElfW(Sym)*>(address(dyn->d_un.d_ptr));
    if (dyn->d_tag == DT_STRTAB) strtab = reinterpret_cast<const char*>(address(dyn->d_un.d_ptr));
    if (dyn->d_tag == DT_HASH)
      hash = reinterpret_cast<const std::uint32_t*>(address(dyn->d_un.d_ptr));
    if (dyn->d_tag == DT_GNU_HASH)
      gnu_hash = reinterpret_cast<const std::uint32_t*>(address(dyn->d_un.d_ptr));
  }
  if (symtab == nullptr || strtab == nullptr || (hash == nullptr && gnu_hash == nullptr)) return 0;
  // The number of symbols: DT_HASH says it; with GNU hash only, the end of the last chain.
  std::uint32_t count = 0;
  if (hash != nullptr) {
    count = hash[1];
  } else {
    const std::uint32_t nbuckets = gnu_hash[0], symoffset = gnu_hash[1], bloom = gnu_hash[2];
    const std::uint32_t* buckets =
        gnu_hash + 4 + bloom * (sizeof(ElfW(Addr)) / sizeof(std::uint32_t));
    const std::uint32_t* chain = buckets + nbuckets;
    for (std::uint32_t b = 0; b < nbuckets; ++b)
      count = buckets[b] > count ? buckets[b] : count;
    if (count >= symoffset) {
      while ((chain[count - symoffset] & 1) == 0)
        ++count;
      ++count;
    }
  }
  for (std::uint32_t i = 0; i < count; ++i) {
    const ElfW(Sym)& s = symtab[i];
    if (s.st_shndx == SHN_UNDEF || ELF64_ST_TYPE(s.st_info) != STT_FUNC) continue;
    if (std::strcmp(strtab + s.st_name, q->name) == 0) {
      q->found = reinterpret_cast<void*>(info->dlpi_addr + s.st_value);
      return 1;
    }
  }
  return 0;
}

}  // namespace detail

// `name` as defined by the first loaded library whose file name starts with `library`, or null.
inline void* native_symbol(const char* library, const char* name) {
  detail::NativeLookup q{library, name};
  dl_iterate_phdr(&detail::find_native_symbol, &q);
  return q.found;
}

}  // namespace cudapool::tools
