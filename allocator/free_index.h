// FreeIndex: the free blocks of one size class, for best fit.
//
// Small and medium blocks: exact-size bins and a bitmap (O(1)); large blocks: a std::set whose
// nodes are recycled through a private free list, so that inserting and erasing in steady state
// allocates no host memory (the hot path's rule). See FreeIndex below.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <new>
#include <set>
#include <utility>
#include <vector>

namespace cudapool {

// Recycles the set's nodes; all nodes of one set have the same size.
class NodeCache {
 public:
  NodeCache() = default;
  NodeCache(const NodeCache&) = delete;
  NodeCache& operator=(const NodeCache&) = delete;
  ~NodeCache() {
    while (head_ != nullptr) {
      Node* next = head_->next;
      ::operator delete(head_);
      head_ = next;
    }
  }
  void* take(std::size_t bytes) {
    if (head_ == nullptr || bytes != node_bytes_) return ::operator new(bytes);
    Node* node = head_;
    head_ = node->next;
    return node;
  }
  void give(void* p, std::size_t bytes) {
    if (node_bytes_ == 0) node_bytes_ = bytes;
    if (bytes != node_bytes_ || bytes < sizeof(Node)) {
      ::operator delete(p);
      return;
    }
    head_ = new (p) Node{head_};
  }

 private:
  struct Node {
    Node* next;
  };
  Node* head_ = nullptr;
  std::size_t node_bytes_ = 0;
};

template <typename T>
struct RecyclingAllocator {
  using value_type = T;
  NodeCache* cache;

  explicit RecyclingAllocator(NodeCache* c) : cache(c) {}
  template <typename U>
  RecyclingAllocator(const RecyclingAllocator<U>& other) : cache(other.cache) {}  // NOLINT

  T* allocate(std::size_t n) { return static_cast<T*>(cache->take(n * sizeof(T))); }
  void deallocate(T* p, std::size_t n) { cache->give(p, n * sizeof(T)); }
  template <typename U>
  bool operator==(const RecyclingAllocator<U>& other) const {
    return cache == other.cache;
  }
};

// The free blocks of one size class.
//
// Blocks of at most `binned_max` bytes (the small and medium classes: sizes are multiples of
// kBinUnit) sit in exact-size bins: intrusive doubly linked lists, one per size, and a two-level
// bitmap of the non-empty bins. Insert, erase and best fit are O(1): the best fit is the head of
// the first non-empty bin at or above the request (a bit scan); ties in size go to the block
// inserted last. Larger blocks (the large class: few, never on the hot path) sit in an ordered set,
// best fit by (size, address), ties to the lowest address.
//
// `Block` needs `size`, `addr`, and `free_prev`/`free_next` pointers (used while in a bin).
template <typename Block>
class FreeIndex {
 public:
  static constexpr std::size_t kBinUnit = 512;

  explicit FreeIndex(std::size_t binned_max = 0)
      : bins_(binned_max / kBinUnit),
        binned_max_(bins_ * kBinUnit),
        heads_(bins_, nullptr),
        words_((bins_ + 63) / 64, 0),
        summary_((words_.size() + 63) / 64, 0),
        set_(Less{}, RecyclingAllocator<Block*>(&cache_)) {}
  FreeIndex(const FreeIndex&) = delete;
  FreeIndex& operator=(const FreeIndex&) = delete;

  void insert(Block* b) {
    ++count_;
    if (!binned(b->size)) {
      set_.insert(b);
      return;
    }
    std::size_t i = bin_of(b->size);
    b->free_prev = nullptr;
    b->free_next = heads_[i];
    if (heads_[i] != nullptr) {
      heads_[i]->free_prev = b;
    } else {
      mark(i);
    }
    heads_[i] = b;
  }

  void erase(Block* b) {
    --count_;
    if (!binned(b->size)) {
      set_.erase(b);
      return;
    }
    std::size_t i = bin_of(b->size);
    if (b->free_prev != nullptr) {
      b->free_prev->free_next = b->free_next;
    } else {
      heads_[i] = b->free_next;
      if (heads_[i] == nullptr) unmark(i);
    }
    if (b->free_next != nullptr) b->free_next->free_prev = b->free_prev;
  }

  bool empty() const { return count_ == 0; }
  std::size_t size() const { return count_; }
  void clear() {
    std::fill(heads_.begin(), heads_.end(), nullptr);
    std::fill(words_.begin(), words_.end(), 0);
    std::fill(summary_.begin(), summary_.end(), 0);
    set_.clear();
    count_ = 0;
  }

  // The smallest block of at least `size` bytes, or null.
  Block* best_fit(std::size_t size) const {
    if (binned(size)) {
      std::size_t i = first_bin_from(bin_of_request(size));
      if (i != kNone) return heads_[i];
    }
    auto it = set_.lower_bound(Key{size, 0});
    return it == set_.end() ? nullptr : *it;
  }

  // Calls visit(block) for the unbinned blocks of at least `size` bytes, smallest first, while it
  // returns true.
  template <typename Visit>
  void visit_fits(std::size_t size, Visit&& visit) const {
    for (auto it = set_.lower_bound(Key{size, 0}); it != set_.end(); ++it)
      if (!visit(*it)) return;
  }

  // Removes and returns the best fit for `size` if it is at most `max_size` bytes, else null.
  Block* take_best_fit(std::size_t size, std::size_t max_size) {
    if (binned(size)) {
      std::size_t i = first_bin_from(bin_of_request(size));
      if (i != kNone) {
        Block* b = heads_[i];
        if (b->size > max_size) return nullptr;
        erase(b);
        return b;
      }
    }
    auto it = set_.lower_bound(Key{size, 0});
    if (it == set_.end() || (*it)->size > max_size) return nullptr;
    Block* b = *it;
    set_.erase(it);
    --count_;
    return b;
  }

 private:
  static constexpr std::size_t kNone = SIZE_MAX;

  bool binned(std::size_t size) const { return size - 1 < binned_max_; }  // 0 < size <= max
  static std::size_t bin_of(std::size_t size) { return size / kBinUnit - 1; }
  static std::size_t bin_of_request(std::size_t size) {
    return (size + kBinUnit - 1) / kBinUnit - 1;
  }

  void mark(std::size_t i) {
    words_[i / 64] |= std::uint64_t{1} << (i % 64);
    summary_[i / 4096] |= std::uint64_t{1} << (i / 64 % 64);
  }
  void unmark(std::size_t i) {
    std::uint64_t& w = words_[i / 64];
    w &= ~(std::uint64_t{1} << (i % 64));
    if (w == 0) summary_[i / 4096] &= ~(std::uint64_t{1} << (i / 64 % 64));
  }
  // The first non-empty bin at or above `i`, or kNone.
  std::size_t first_bin_from(std::size_t i) const {
    if (i >= bins_) return kNone;
    std::size_t w = i / 64;
    std::uint64_t bits = words_[w] & (~std::uint64_t{0} << (i % 64));
    if (bits != 0) return w * 64 + static_cast<std::size_t>(__builtin_ctzll(bits));
    // Later words, through the summary (one bit per word).
    std::size_t next = w + 1;
    for (std::size_t s = next / 64; s < summary_.size(); ++s) {
      std::uint64_t sbits = summary_[s];
      if (s == next / 64)
        sbits &= next % 64 == 0 ? ~std::uint64_t{0} : ~std::uint64_t{0} << (next % 64);
      if (sbits == 0) continue;
      std::size_t word = s * 64 + static_cast<std::size_t>(__builtin_ctzll(sbits));
      return word * 64 + static_cast<std::size_t>(__builtin_ctzll(words_[word]));
    }
    return kNone;
  }

  struct Key {
    std::size_t size;
    std::uintptr_t addr;
  };
  struct Less {
    using is_transparent = void;
    static Key key(const Block* b) { return Key{b->size, b->addr}; }
    static Key key(const Key& k) { return k; }
    template <typename A, typename B>
    bool operator()(const A& a, const B& b) const {
      Key ka = key(a), kb = key(b);
      return ka.size != kb.size ? ka.size < kb.size : ka.addr < kb.addr;
    }
  };

  std::size_t bins_;
  std::size_t binned_max_;              // bins_ * kBinUnit
  std::vector<Block*> heads_;           // bin i: blocks of (i + 1) * kBinUnit bytes
  std::vector<std::uint64_t> words_;    // bit i: bin i is not empty
  std::vector<std::uint64_t> summary_;  // bit w: words_[w] != 0
  std::size_t count_ = 0;
  NodeCache cache_;  // declared before set_: outlives it
  std::set<Block*, Less, RecyclingAllocator<Block*>> set_;
};

}  // namespace cudapool
