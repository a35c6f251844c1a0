// Allocation stacks (CUDAPOOL_BACKTRACE): who allocated each live block.
//
//   StackUnwinder  captures the caller's program counters. It uses libunwind's unw_backtrace,
//                  loaded at run time with dlopen(RTLD_LOCAL): libunwind also defines _Unwind_*
//                  (the C++ exception unwinder's entry points), and a private load keeps them out
//                  of the global scope, so the host's exceptions keep unwinding through its own
//                  libgcc_s. Without libunwind it falls back to glibc's backtrace().
//   StackTable     deduplicates stacks: each distinct stack is stored once and named by a 32-bit
//                  id (1, 2, ...; 0 = none). Bounded: when full, new stacks get id 0.
//   LiveStacks     block address -> (stack id, size) for every live block that has a stack; a
//                  side table of the shim, so the pool's Block stays as it is.
//
// Capture costs one unw_backtrace (see the README for the measured cost), one hash and one short
// critical section per allocation, and only when BACKTRACE is on. Symbolisation (dladdr,
// demangling) runs only when a report is asked for.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace cudapool {

inline constexpr int kMaxStackFrames = 32;

class StackUnwinder {
 public:
  // Loads libunwind (or settles for glibc's backtrace). Returns a short description of the
  // source for the log: "libunwind (libunwind.so.8)" or "glibc backtrace (libunwind not found)".
  std::string load();
  // The program counters of the calling thread's stack, innermost first, without the frames of
  // this library (the caller of cudaMalloc comes first). Returns the number written.
  int capture(std::uintptr_t* pcs, int max) const;
  bool uses_libunwind() const { return unw_backtrace_ != nullptr; }

 private:
  using BacktraceFn = int (*)(void**, int);
  BacktraceFn unw_backtrace_ = nullptr;
  BacktraceFn glibc_backtrace_ = nullptr;
  std::uintptr_t self_lo_ = 0, self_hi_ = 0;  // this library's code, to drop its own frames
};

class StackTable {
 public:
  explicit StackTable(std::size_t max_stacks = 65536) : max_stacks_(max_stacks) {}
  // The id of this stack (adding it when new); 0 when n == 0 or the table is full.
  std::uint32_t intern(const std::uintptr_t* pcs, int n);
  // The frames of stack `id`; empty for 0 or an unknown id.
  std::vector<std::uintptr_t> frames(std::uint32_t id) const;
  std::size_t size() const;
  std::size_t dropped() const;  // stacks refused because the table was full

 private:
  struct Entry {
    std::uint64_t hash = 0;
    std::uint32_t offset = 0;  // into frames_
    std::uint8_t count = 0;
  };
  mutable std::mutex mutex_;
  std::size_t max_stacks_;
  std::unordered_multimap<std::uint64_t, std::uint32_t> by_hash_;  // hash -> id
  std::vector<Entry> entries_;                                     // id - 1 -> entry
  std::vector<std::uintptr_t> frames_;
  std::size_t dropped_ = 0;
};

struct LiveBlock {
  std::uint32_t stack = 0;
  std::uint64_t size = 0;
};

class LiveStacks {
 public:
  void insert(const void* ptr, LiveBlock block);
  void erase(const void* ptr);
  // Every entry, copied out (for reports).
  std::vector<std::pair<std::uintptr_t, LiveBlock>> all() const;

 private:
  static constexpr int kShards = 64;
  struct alignas(64) Shard {
    mutable std::mutex mutex;
    std::unordered_map<std::uintptr_t, LiveBlock> blocks;
  };
  Shard& shard(const void* ptr) {
    return shards_[(reinterpret_cast<std::uintptr_t>(ptr) >> 9) % kShards];
  }
  Shard shards_[kShards];
};

// Names program counters, for reports only (slow: dladdr, reading symbol tables, demangling):
// "function+0x1c (libfoo.so)" with a demangled name, or "libfoo.so+0x1234" where the object has
// no symbol for the address, or "0x7f..." where no object maps it. Functions that are not in the
// dynamic symbol table (a program built without -rdynamic) are looked up in the object file's
// own symbol table (.symtab) when it is not stripped. Keeps what it read for its lifetime.
class Symbolizer {
 public:
  Symbolizer();
  ~Symbolizer();
  Symbolizer(const Symbolizer&) = delete;
  Symbolizer& operator=(const Symbolizer&) = delete;
  std::string describe(std::uintptr_t pc);
  // The demangled function name alone, or "" when unknown.
  std::string function(std::uintptr_t pc);

 private:
  struct ObjectSymbols;
  const ObjectSymbols* symbols_of(const std::string& path);
  std::unordered_map<std::string, ObjectSymbols*> objects_;
};

}  // namespace cudapool
