// PtrMap: address -> block, for the cudaFree hot path.
//
// Open addressing with linear probing and backward-shift deletion: a lookup is one hash and
// usually one cache line; insert and erase allocate nothing unless the table grows (load > 1/2),
// which happens O(log n) times over a process's life. Keys are non-zero addresses.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace cudapool {

template <typename Value>
class PtrMap {
 public:
  PtrMap() { rehash(1024); }

  Value* find(std::uintptr_t key) const {
    for (std::size_t i = slot_of(key);; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return slots_[i].value;
      if (slots_[i].key == 0) return nullptr;
    }
  }

  void insert(std::uintptr_t key, Value* value) {
    if ((size_ + 1) * 2 > capacity_) rehash(capacity_ * 2);
    place(key, value);
    ++size_;
  }

  // Removes `key` if present.
  void erase(std::uintptr_t key) {
    std::size_t i = slot_of(key);
    while (slots_[i].key != key) {
      if (slots_[i].key == 0) return;
      i = (i + 1) & mask_;
    }
    // Backward-shift: pull later entries of the probe run into the hole.
    for (std::size_t j = (i + 1) & mask_; slots_[j].key != 0; j = (j + 1) & mask_) {
      std::size_t home = slot_of(slots_[j].key);
      bool movable = (j > i) ? (home <= i || home > j) : (home <= i && home > j);
      if (movable) {
        slots_[i] = slots_[j];
        i = j;
      }
    }
    slots_[i] = Slot{};
    --size_;
  }

  void clear() {
    slots_.reset();  // drop every entry: rehash() would carry the old ones over
    rehash(1024);
  }
  std::size_t size() const { return size_; }
  template <typename F>
  void for_each(F&& f) const {
    for (std::size_t i = 0; i < capacity_; ++i)
      if (slots_[i].key != 0) f(slots_[i].key, slots_[i].value);
  }

 private:
  struct Slot {
    std::uintptr_t key = 0;
    Value* value = nullptr;
  };

  std::size_t slot_of(std::uintptr_t key) const {
    // Fibonacci hashing; block addresses are multiples of 512, so the low bits carry nothing.
    return static_cast<std::size_t>((key * 0x9E3779B97F4A7C15ull) >> shift_) & mask_;
  }

  void place(std::uintptr_t key, Value* value) {
    std::size_t i = slot_of(key);
    while (slots_[i].key != 0)
      i = (i + 1) & mask_;
    slots_[i] = Slot{key, value};
  }

  void rehash(std::size_t capacity) {
    std::unique_ptr<Slot[]> old = std::move(slots_);
    std::size_t old_capacity = old ? capacity_ : 0;
    slots_ = std::make_unique<Slot[]>(capacity);
    capacity_ = capacity;
    mask_ = capacity - 1;
    shift_ = 64 - __builtin_ctzll(capacity);
    size_ = 0;
    for (std::size_t i = 0; i < old_capacity; ++i) {
      if (old[i].key != 0) {
        place(old[i].key, old[i].value);
        ++size_;
      }
    }
  }

  std::unique_ptr<Slot[]> slots_;
  std::size_t capacity_ = 0;
  std::size_t mask_ = 0;
  unsigned shift_ = 0;
  std::size_t size_ = 0;
};

}  // namespace cudapool
