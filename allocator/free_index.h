// FreeIndex: the free blocks of one size class, ordered by (size, address) for best fit.
//
// A std::set whose nodes are recycled through a private free list, so that inserting and erasing
// in steady state allocates no host memory (the hot path's rule). Lookup and update are
// O(log n); ties in size go to the lowest address, which keeps allocations packed at the start of
// segments and leaves later segments wholly free.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <set>
#include <utility>

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

// `Block` needs `size` and `addr` members.
template <typename Block>
class FreeIndex {
 public:
  FreeIndex() : set_(Less{}, RecyclingAllocator<Block*>(&cache_)) {}

  void insert(Block* b) { set_.insert(b); }
  void erase(Block* b) { set_.erase(b); }
  bool empty() const { return set_.empty(); }
  std::size_t size() const { return set_.size(); }
  void clear() { set_.clear(); }

  // The smallest block of at least `size` bytes (lowest address among equals), or null.
  Block* best_fit(std::size_t size) const {
    auto it = set_.lower_bound(Key{size, 0});
    return it == set_.end() ? nullptr : *it;
  }

 private:
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

  NodeCache cache_;  // declared before set_: outlives it
  std::set<Block*, Less, RecyclingAllocator<Block*>> set_;
};

}  // namespace cudapool
