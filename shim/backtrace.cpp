#include "shim/backtrace.h"

#include <cxxabi.h>
#include <dlfcn.h>
#include <execinfo.h>
#include <link.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace cudapool {
namespace {

int self_marker;  // an address inside this library

struct SelfRange {
  std::uintptr_t lo = 0, hi = 0;
};

int find_self(struct dl_phdr_info* info, size_t, void* data) {
  auto* range = static_cast<SelfRange*>(data);
  const auto marker = reinterpret_cast<std::uintptr_t>(&self_marker);
  std::uintptr_t lo = UINTPTR_MAX, hi = 0;
  bool contains_marker = false;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD) continue;
    const std::uintptr_t start = info->dlpi_addr + ph.p_vaddr;
    const std::uintptr_t end = start + ph.p_memsz;
    lo = std::min(lo, start);
    hi = std::max(hi, end);
    if (marker >= start && marker < end) contains_marker = true;
  }
  if (!contains_marker) return 0;
  range->lo = lo;
  range->hi = hi;
  return 1;
}

std::uint64_t hash_frames(const std::uintptr_t* pcs, int n) {
  std::uint64_t h = 0xcbf29ce484222325ull ^ static_cast<std::uint64_t>(n);
  for (int i = 0; i < n; ++i) {
    h ^= pcs[i];
    h *= 0x100000001b3ull;
    h ^= h >> 29;
  }
  return h;
}

const char* base_name(const char* path) {
  const char* slash = std::strrchr(path, '/');
  return slash != nullptr ? slash + 1 : path;
}

}  // namespace

// ---- StackUnwinder -----------------------------------------------------------------------------

std::string StackUnwinder::load() {
  SelfRange self;
  dl_iterate_phdr(&find_self, &self);
  self_lo_ = self.lo;
  self_hi_ = self.hi;
  // RTLD_LOCAL: libunwind's _Unwind_* must not join the global scope, where they could take over
  // the host's exceptions. RTLD_NOW: no lazy binding later, on the allocation path.
  for (const char* name : {"libunwind.so.8", "libunwind.so"}) {
    void* handle = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) continue;
    auto fn = reinterpret_cast<BacktraceFn>(dlsym(handle, "unw_backtrace"));
    if (fn == nullptr) {
      dlclose(handle);
      continue;
    }
    unw_backtrace_ = fn;  // the handle stays open for the life of the process
    return std::string("libunwind (") + name + ")";
  }
  glibc_backtrace_ = &::backtrace;
  void* warm[4];
  ::backtrace(warm, 4);  // glibc loads its unwinder at the first call: do it here, not later
  return "glibc backtrace (libunwind.so.8 not found)";
}

int StackUnwinder::capture(std::uintptr_t* pcs, int max) const {
  constexpr int kSlack = 8;  // frames of this library, dropped below
  void* raw[kMaxStackFrames + kSlack];
  const int want = std::min(max, kMaxStackFrames) + kSlack;
  int n = 0;
  if (unw_backtrace_ != nullptr) {
    n = unw_backtrace_(raw, want);
  } else if (glibc_backtrace_ != nullptr) {
    n = glibc_backtrace_(raw, want);
  }
  int first = 0;
  while (first < n && reinterpret_cast<std::uintptr_t>(raw[first]) >= self_lo_ &&
         reinterpret_cast<std::uintptr_t>(raw[first]) < self_hi_)
    ++first;
  const int count = std::min(n - first, max);
  for (int i = 0; i < count; ++i)
    pcs[i] = reinterpret_cast<std::uintptr_t>(raw[first + i]);
  return std::max(count, 0);
}

// ---- StackTable --------------------------------------------------------------------------------

std::uint32_t StackTable::intern(const std::uintptr_t* pcs, int n) {
  if (n <= 0) return 0;
  n = std::min(n, kMaxStackFrames);
  const std::uint64_t h = hash_frames(pcs, n);
  std::lock_guard lock(mutex_);
  auto [first, last] = by_hash_.equal_range(h);
  for (auto it = first; it != last; ++it) {
    const Entry& e = entries_[it->second - 1];
    if (e.count == n && std::equal(pcs, pcs + n, frames_.begin() + e.offset)) return it->second;
  }
  if (entries_.size() >= max_stacks_) {
    ++dropped_;
    return 0;
  }
  Entry e;
  e.hash = h;
  e.offset = static_cast<std::uint32_t>(frames_.size());
  e.count = static_cast<std::uint8_t>(n);
  frames_.insert(frames_.end(), pcs, pcs + n);
  entries_.push_back(e);
  const auto id = static_cast<std::uint32_t>(entries_.size());
  by_hash_.emplace(h, id);
  return id;
}

std::vector<std::uintptr_t> StackTable::frames(std::uint32_t id) const {
  std::lock_guard lock(mutex_);
  if (id == 0 || id > entries_.size()) return {};
  const Entry& e = entries_[id - 1];
  return {frames_.begin() + e.offset, frames_.begin() + e.offset + e.count};
}

std::size_t StackTable::size() const {
  std::lock_guard lock(mutex_);
  return entries_.size();
}

std::size_t StackTable::dropped() const {
  std::lock_guard lock(mutex_);
  return dropped_;
}

// ---- LiveStacks --------------------------------------------------------------------------------

void LiveStacks::insert(const void* ptr, LiveBlock block) {
  Shard& s = shard(ptr);
  std::lock_guard lock(s.mutex);
  s.blocks[reinterpret_cast<std::uintptr_t>(ptr)] = block;
}

void LiveStacks::erase(const void* ptr) {
  Shard& s = shard(ptr);
  std::lock_guard lock(s.mutex);
  s.blocks.erase(reinterpret_cast<std::uintptr_t>(ptr));
}

std::vector<std::pair<std::uintptr_t, LiveBlock>> LiveStacks::all() const {
  std::vector<std::pair<std::uintptr_t, LiveBlock>> out;
  for (const Shard& s : shards_) {
    std::lock_guard lock(s.mutex);
    out.insert(out.end(), s.blocks.begin(), s.blocks.end());
  }
  return out;
}

// ---- Symbolizer -------------------------------------------------------------------------------

// Function symbols of one object file's .symtab, sorted by address (link-time addresses).
struct Symbolizer::ObjectSymbols {
  struct Function {
    std::uintptr_t start = 0, size = 0;
    std::string name;
  };
  std::vector<Function> functions;
};

Symbolizer::Symbolizer() = default;

Symbolizer::~Symbolizer() {
  for (auto& [path, symbols] : objects_)
    delete symbols;
}

const Symbolizer::ObjectSymbols* Symbolizer::symbols_of(const std::string& path) {
  auto [it, added] = objects_.emplace(path, nullptr);
  if (!added) return it->second;
  auto* symbols = new ObjectSymbols;
  it->second = symbols;
  std::FILE* f = std::fopen(path.c_str(), "rbe");
  if (f == nullptr) return symbols;
  std::vector<char> data;
  char chunk[65536];
  for (std::size_t got; (got = std::fread(chunk, 1, sizeof chunk, f)) > 0;) {
    data.insert(data.end(), chunk, chunk + got);
    if (data.size() > (std::size_t{1} << 30)) break;  // no symbol hunt in gigantic files
  }
  std::fclose(f);
  auto in_file = [&](std::uint64_t offset, std::uint64_t size) {
    return offset <= data.size() && size <= data.size() - offset;
  };
  if (!in_file(0, sizeof(ElfW(Ehdr))) || std::memcmp(data.data(), ELFMAG, SELFMAG) != 0)
    return symbols;
  ElfW(Ehdr) eh;
  std::memcpy(&eh, data.data(), sizeof eh);
  if (eh.e_shentsize != sizeof(ElfW(Shdr)) ||
      !in_file(eh.e_shoff, std::uint64_t{eh.e_shnum} * sizeof(ElfW(Shdr))))
    return symbols;
  std::vector<ElfW(Shdr)> sections(eh.e_shnum);
  std::memcpy(sections.data(), data.data() + eh.e_shoff, sections.size() * sizeof(ElfW(Shdr)));
  for (const ElfW(Shdr) & sh : sections) {
    if (sh.sh_type != SHT_SYMTAB || sh.sh_link >= sections.size()) continue;
    const ElfW(Shdr)& strtab = sections[sh.sh_link];
    if (!in_file(sh.sh_offset, sh.sh_size) || !in_file(strtab.sh_offset, strtab.sh_size)) continue;
    const std::size_t count = sh.sh_size / sizeof(ElfW(Sym));
    for (std::size_t i = 0; i < count; ++i) {
      ElfW(Sym) sym;
      std::memcpy(&sym, data.data() + sh.sh_offset + i * sizeof(ElfW(Sym)), sizeof sym);
      if (ELF64_ST_TYPE(sym.st_info) != STT_FUNC || sym.st_value == 0) continue;
      if (sym.st_name >= strtab.sh_size) continue;
      const char* name = data.data() + strtab.sh_offset + sym.st_name;
      const std::size_t max_len = strtab.sh_size - sym.st_name;
      symbols->functions.push_back(
          {sym.st_value, sym.st_size, std::string(name, strnlen(name, max_len))});
    }
  }
  std::sort(symbols->functions.begin(), symbols->functions.end(),
            [](const auto& a, const auto& b) { return a.start < b.start; });
  return symbols;
}

namespace {

std::string demangle(const char* name) {
  int status = -1;
  char* demangled = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string out = (status == 0 && demangled != nullptr) ? demangled : name;
  std::free(demangled);
  return out;
}

std::string hex(std::uintptr_t value) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%zx", static_cast<std::size_t>(value));
  return buf;
}

}  // namespace

std::string Symbolizer::describe(std::uintptr_t pc) {
  // A return address points after the call; pc - 1 is inside the calling instruction, so a call
  // that ends a function is still attributed to it.
  const std::uintptr_t lookup = pc > 0 ? pc - 1 : pc;
  Dl_info info{};
  link_map* map = nullptr;
  if (dladdr1(reinterpret_cast<void*>(lookup), &info, reinterpret_cast<void**>(&map),
              RTLD_DL_LINKMAP) == 0 ||
      info.dli_fname == nullptr)
    return hex(pc);
  std::string path = info.dli_fname;
  std::string object = base_name(path.c_str());
  if (map != nullptr && (map->l_name == nullptr || map->l_name[0] == '\0')) {
    path = "/proc/self/exe";  // the main program: its link map has no name
    if (object.empty()) object = "(program)";
  }
  if (info.dli_sname != nullptr && info.dli_saddr != nullptr)
    return demangle(info.dli_sname) + "+" +
           hex(pc - reinterpret_cast<std::uintptr_t>(info.dli_saddr)) + " (" + object + ")";
  // Not in the dynamic symbol table: the file's own .symtab, at link-time addresses.
  const std::uintptr_t bias = map != nullptr ? map->l_addr : 0;
  if (const ObjectSymbols* symbols = symbols_of(path)) {
    const std::uintptr_t at = lookup - bias;
    auto it = std::upper_bound(symbols->functions.begin(), symbols->functions.end(), at,
                               [](std::uintptr_t a, const auto& fn) { return a < fn.start; });
    if (it != symbols->functions.begin()) {
      --it;
      if (at < it->start + std::max<std::uintptr_t>(it->size, 1))
        return demangle(it->name.c_str()) + "+" + hex(pc - bias - it->start) + " (" + object + ")";
    }
  }
  return object + "+" + hex(pc - reinterpret_cast<std::uintptr_t>(info.dli_fbase));
}

std::string Symbolizer::function(std::uintptr_t pc) {
  std::string text = describe(pc);
  const std::size_t paren = text.rfind(" (");
  if (paren == std::string::npos) return "";
  const std::size_t plus = text.rfind("+0x", paren);
  if (plus == std::string::npos) return "";
  return text.substr(0, plus);
}

}  // namespace cudapool
