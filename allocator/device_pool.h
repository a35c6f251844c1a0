// DevicePool: the pool of one device.
//
// Two layouts, chosen when the pool is built (Policy::vmm and Backend::page_size()):
//   segments  each segment is one driver allocation, returned only when wholly free;
//   pages     each segment is an address range the pool reserved, backed by physical pages only
//             where blocks need them (docs/pages.md). Addresses no block needs are holes
//             (unmapped); idle pages return to the driver, or move to another range, wherever
//             they are.
//
// Data structures (all guarded by mutex_):
//   segments_   address -> Segment, every segment (range) this pool holds;
//   live_       block address -> Block, every block in use (the cudaFree lookup);
//   free_[k]    free blocks of size class k, for best fit (free_index.h);
//   holes_      (pages) unmapped runs of every range, for placing new pages;
//   pending     FIFO of freed blocks waiting for a fence, each stamped with a sequence number.
// Invariants:
//   - the blocks of a segment tile it exactly, in address order (prev/next links), and no two
//     adjacent blocks are both free or both holes (they are coalesced);
//   - held == sum of segment sizes (segments) or pages owned * page size (pages); in_use == sum
//     of live block sizes; pending == sum of pending block sizes; a segment's busy bytes == its
//     in-use + pending bytes, and (segments) it can be released exactly when busy == 0;
//   - (pages) holes are page-aligned; a page of a range is mapped exactly when a block that is
//     not a hole overlaps it, and then by exactly one page the pool owns (Segment::pages);
//   - a pending block becomes free only after a fence that began after the block was freed
//     (or at once under ReuseMode::kImmediate when no capture is active); a page is unmapped
//     only when wholly inside a free block and after a fence that followed every free on it.
//
// Thread caches (docs/thread-caches.md). Once a second thread allocates on the pool (until then
// the one thread's calls take mutex_ uncontended), each thread that allocates gets a cache of its
// own (ThreadCache, found through a thread-local pointer): exact-size bins of free, fenced blocks
// (requests up to kCacheMax), a map of the blocks it handed out, and a list of blocks it freed
// that wait for a fence. A hit pops a bin and a free of its own block pushes the pending list,
// both under the cache's own lock only, so the common case writes no line another thread uses.
// To the pool a block in a cache (binned, in use through it, or pending in it) is in use: it is
// in no index and not in live_, and stats_ counts it in in_use; stats() subtracts what the caches
// hold, so every reported figure is exact. More invariants:
//   - a binned block is free: carved from the pool's free memory, or freed under
//     ReuseMode::kImmediate with no capture active (its cache then marks itself unfenced, and
//     draining or fencing it counts as an unfenced free); a cache's pending blocks never reach a
//     bin, they become free only through the pool's pending list;
//   - a cache holds at most kCacheBytes in bins and flushes its pending list to the pool's once it
//     holds kFlushBlocks blocks or kFlushBytes; every fence first flushes every cache's list, so
//     it covers every free made before it;
//   - every release, trim, limit or out-of-memory retry, growth (after the miss path's fence) and
//     device reset first drains every cache (bins become free, pending blocks join the pool's
//     pending list), and so does a thread's exit (its live blocks move to live_) and the release
//     thread for a cache no call touched for a tick.
// Locking: mutex_ guards the structures above and is held only for bookkeeping, never across a
// Backend call. A cache's lock is taken by its thread on the hot path and by others (drains,
// reports, a free of its block from another thread) only with mutex_ held: the order is mutex_,
// then a cache's lock; nobody holding a cache's lock waits for mutex_. release_mutex_ serialises
// releases with each other and with drop_all(), so that a segment being returned cannot outlive a
// device reset; with pages it also serialises growth (every change to holes and page mappings
// happens under it).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

#include "allocator/backend.h"
#include "allocator/free_index.h"
#include "allocator/pool_mutex.h"
#include "allocator/ptr_map.h"
#include "allocator/size_classes.h"
#include "allocator/sync_gate.h"
#include "allocator/types.h"

namespace cudapool {

// Receives the pool's rare events (releases, driver failures), e.g. to log them. Called without
// the pool's lock held.
class PoolObserver {
 public:
  virtual ~PoolObserver() = default;
  virtual void on_release(int device, ReleaseReason reason, std::uint64_t bytes,
                          std::uint64_t segments) = 0;
  virtual void on_driver_error(int device, const char* operation, Status status) = 0;
};

// A copy of one segment and its blocks, for reports (DevicePool::segments()).
struct SegmentView {
  enum class BlockState : std::uint8_t { kFree, kInUse, kPending, kHole };  // hole: unmapped
  struct BlockView {
    std::uintptr_t addr = 0;
    std::uint64_t size = 0;
    BlockState state = BlockState::kFree;
  };
  std::uintptr_t base = 0;
  std::uint64_t size = 0;
  PoolKind kind = PoolKind::kSmall;
  std::vector<BlockView> blocks;  // in address order; they tile the segment
  // Pages (0 with segments): mapped pages that a live or pending block touches, and mapped pages
  // wholly inside free blocks. The range's other pages are unmapped (holes).
  std::uint64_t pages_in_use = 0;
  std::uint64_t pages_idle = 0;
};

class DevicePool {
 public:
  // Thread caches: requests up to this size are cached; what one cache may keep.
  static constexpr std::size_t kCacheMax = kMediumMax;
  static constexpr std::size_t kCacheBytes = 16 * kMiB;  // free blocks in bins
  static constexpr std::uint32_t kBinBlocks = 16;        // per exact size
  static constexpr std::uint32_t kFlushBlocks = 64;      // pending blocks before a flush
  static constexpr std::size_t kFlushBytes = 16 * kMiB;  // pending bytes before a flush
  static constexpr std::size_t kRefillBytes = 2 * kMiB;  // at most carved at once for a bin
  static constexpr std::uint32_t kRefillBlocks = 8;
  struct ThreadCache;  // device_pool.cpp

  DevicePool(int device, Backend& backend, SyncGate& gate, const Policy& policy,
             PoolObserver* observer = nullptr);
  ~DevicePool();
  DevicePool(const DevicePool&) = delete;
  DevicePool& operator=(const DevicePool&) = delete;

  int device() const { return device_; }

  // Serves `size` (> 0) bytes. kOutOfMemory when neither the pool nor the driver can.
  Status allocate(std::size_t size, void** ptr);
  // Frees a block. kNotOwned: the pointer is not in this pool (the caller forwards it);
  // kInvalidValue: inside a segment but not a live block's start. Sets *wake_releaser when idle
  // memory crossed the high watermark.
  Status free(void* ptr, bool* wake_releaser);
  // The part of free() that needs no pool lock: a block this thread's cache handed out. kNotOwned
  // when it is not one (free() then knows). For callers that try several pools.
  Status free_cached(void* ptr, bool* wake_releaser);
  // True once a second thread allocated (free_cached() then has something to look at).
  bool caches_started() const { return caches_on_.load(std::memory_order_relaxed); }
  // The rest of free(): under the pool's lock (after free_cached() said kNotOwned).
  Status free_shared(void* ptr, bool* wake_releaser);
  // kOk if `ptr` is a live block that starts its segment, kInvalidValue if it is inside a segment
  // otherwise (always, with pages: mapped memory cannot be exported), kNotOwned if not ours.
  Status check_ipc_base(void* ptr) const;
  // The live block containing `ptr` (cuMemGetAddressRange): kOk with its start and size,
  // kInvalidValue for an address of the pool that no live block holds, kNotOwned otherwise.
  Status live_block_range(const void* ptr, void** base, std::size_t* size) const;
  // True when blocks live on pages (docs/pages.md), false with segments.
  bool uses_pages() const { return page_size_ != 0; }
  // Applies Backend::set_access again to every mapped page (after the peers changed).
  Status refresh_access();

  // Makes every block pending now free once the device has finished the work issued before
  // (a device synchronisation). Returns false if it could not (capture active, driver error).
  bool fence();
  // Fences as needed and returns wholly free segments, oldest first, until idle <= keep_idle or
  // nothing more can go. Returns the bytes returned to the driver.
  std::uint64_t release_idle(std::uint64_t keep_idle, ReleaseReason reason);
  // Device reset: forgets every block. Segments are not returned (the reset frees them); pages
  // and ranges are (a reset does not free them), after a device synchronisation.
  void drop_all();

  // Free and total bytes of the whole device (a driver call).
  Status device_memory(std::uint64_t* free, std::uint64_t* total) {
    return backend_.device_memory(device_, free, total);
  }

  // True while a stream capture is active: no fence and no release can run.
  bool capture_active() const { return gate_.capture_active(); }

  PoolStats stats() const;
  // Every segment with its blocks, in address order, copied under the lock (reports only: the
  // copy allocates). Byte totals match stats() taken at the same moment.
  std::vector<SegmentView> segments() const;
  void reset_peaks();
  Policy policy() const;
  void set_policy(const Policy& policy);
  // Cheap reads for the release thread.
  std::uint64_t activity() const;
  // Drains the caches that no call touched for quiet_ms (the release thread, every pass), so
  // that a thread that stopped allocating strands nothing. Returns the caches drained.
  int drain_idle_caches(std::uint64_t now_ms, std::uint64_t quiet_ms);
  // Drains every thread's cache into the pool now (tests and reports; the rules do it themselves).
  void drain_caches();
  // Bytes a release could return without waiting for any further free (whole free segments, or
  // whole free pages, plus pending blocks that a fence would free, plus what the thread caches
  // hold; a drain may free more: the rest of their segments).
  std::uint64_t releasable_hint() const;
  // The release thread lowers the wake-up threshold back after releasing; see free().
  void set_wake_threshold(std::uint64_t idle_bytes) {
    wake_threshold_.store(idle_bytes, std::memory_order_relaxed);
  }

 private:
  struct Segment;
  struct Block {
    std::uintptr_t addr = 0;
    std::size_t size = 0;
    Segment* segment = nullptr;
    Block* prev = nullptr;  // neighbours in the segment, by address
    Block* next = nullptr;
    Block* pending_next = nullptr;
    Block* free_prev = nullptr;  // neighbours in a FreeIndex bin
    Block* free_next = nullptr;
    Block* idle_prev = nullptr;  // (pages) neighbours in the list of free blocks holding whole
    Block* idle_next = nullptr;  // pages, while in_idle_list
    std::uint64_t pending_seq = 0;
    enum class State : std::uint8_t { kFree, kInUse, kPending, kHole } state = State::kFree;
    bool in_idle_list = false;
  };
  struct Segment {
    std::uintptr_t base = 0;
    std::size_t size = 0;
    PoolKind kind = PoolKind::kSmall;
    Block* first = nullptr;         // the block at base
    std::size_t busy = 0;           // in-use + pending bytes
    std::uint64_t seq = 0;          // creation order, for oldest-first release
    std::vector<PageHandle> pages;  // (pages) the page mapped at each page of the range, or 0
  };
  // A page taken out of a range, to unmap and release or to map elsewhere.
  // Where a miss maps its pages (DevicePool::place).
  struct Placement {
    Block* hole = nullptr;  // null: a new range
    Block* tail = nullptr;  // the free block just before the hole, where the request starts
    Block* head = nullptr;  // the free block just after it, when the pages fill the hole
    std::size_t pages = 0;  // new pages the request needs
  };
  struct PageAt {
    std::uintptr_t addr = 0;  // where it is mapped (0: unmapped)
    PageHandle handle = 0;
  };

  // Who a carved block goes to: the application (live_, counted as an allocation) or a cache.
  enum class Taker : std::uint8_t { kApp, kCache };

  Block* take_free_block(PoolKind kind, std::size_t rounded, Taker taker = Taker::kApp);
  Block* carve(Block* b, std::size_t rounded, Taker taker = Taker::kApp);
  void make_free(Block* b);
  Block* merge_free(Block* b);
  Block* split(Block* b, std::size_t head_size);
  void index_free(Block* b);
  void unindex_free(Block* b);
  void link_idle(Block* b);
  void unlink_idle(Block* b);
  Block* new_block();
  void recycle_block(Block* b);
  const Segment* segment_containing(std::uintptr_t addr) const;
  Block* block_at(std::uintptr_t addr);  // the block of a range containing addr (slow: a walk)
  Status allocate_slow(PoolKind kind, std::size_t rounded, void** ptr);
  Status grow(PoolKind kind, std::size_t segment_size, std::size_t rounded, void** ptr,
              bool* over_limit);
  // What the driver holds for this pool, is handing over or has not yet taken back (mutex_ held).
  std::uint64_t committed_bytes() const { return stats_.held + growing_bytes_ + releasing_bytes_; }
  bool fence_with_permit(bool for_unmap = false);
  std::uint64_t release_with_permit(std::uint64_t keep_idle, ReleaseReason reason);
  void note_peaks();                      // counts the calling thread's cache as not in use
  void note_peaks(const ThreadCache* c);  // c: the calling thread's cache (or null)
  // stats_.in_use changes only through these (they keep out_bytes_, the caches' copy, current).
  void add_in_use(std::uint64_t bytes) {
    stats_.in_use += bytes;
    out_bytes_.store(stats_.in_use, std::memory_order_relaxed);
  }
  void sub_in_use(std::uint64_t bytes) {
    stats_.in_use -= bytes;
    out_bytes_.store(stats_.in_use, std::memory_order_relaxed);
  }
  void add_held(std::uint64_t bytes) {
    stats_.held += bytes;
    held_bytes_.store(stats_.held, std::memory_order_relaxed);
  }
  void sub_held(std::uint64_t bytes) {
    stats_.held -= bytes;
    held_bytes_.store(stats_.held, std::memory_order_relaxed);
  }
  void note_idle(const ThreadCache* c, bool* wake_releaser) const;
  void maybe_note_idle(ThreadCache* c, bool* wake_releaser) const;  // c's lock held

  // ---- thread caches (mutex_ held unless noted) ----
  ThreadCache* this_thread_cache(bool create);  // no lock; null if none (or none possible)
  ThreadCache* new_thread_cache();
  bool second_thread();  // true once a thread other than the first allocates (then always)
  Status refill(ThreadCache* c, std::size_t rounded, void** ptr);  // no lock held
  // Moves the cache's pending list to the pool's (fenced blocks become free at once).
  void flush_pending(ThreadCache* c, bool* wake_releaser);  // c's lock held too
  void drain(ThreadCache* c);                               // c's lock held too
  bool drain_all();                                         // locks each cache; true if any held
  void pending_push(Block* b);                              // onto the pool's pending list
  // The pool's part of freeing an in-use block that is in no map any more.
  void release_block(Block* b, bool* wake_releaser);
  // Bytes the caches hold that are not in use (stats() subtracts them), locking each cache.
  std::uint64_t caches_held() const;
  std::uint64_t caches_pending() const;   // bytes in the caches' pending lists, likewise
  bool handed_out(const Block* b) const;  // in live_ or a cache's map
  static void thread_exit(void* caches);  // the thread-local caches' destructor
  FreeIndex<Block>& free_index(PoolKind kind) { return free_[static_cast<int>(kind)]; }

  // ---- pages (docs/pages.md); release_mutex_ held unless noted ----
  std::size_t whole_pages(const Block* b) const;  // bytes of the pages wholly inside b
  Status allocate_slow_pages(PoolKind kind, std::size_t rounded, void** ptr);
  // Unmaps up to `want` idle pages (spare ones first) and appends them to *out, unmapped.
  // (`keep`: the free blocks of a placement, whose pages stay where they are; fences first when
  // at least `fence_at` bytes are pending.)
  void steal_pages(std::size_t want, const Placement& keep, std::uint64_t fence_at,
                   std::vector<PageHandle>* out);
  // Takes pages out of free blocks, oldest-freed first, until `want` are taken or none is left
  // (mutex_ held): the pages become holes; the caller unmaps them.
  void take_idle_pages(std::size_t want, const Placement& keep, std::vector<PageAt>* out);
  Placement place(PoolKind kind, std::size_t rounded);  // mutex_ held
  // Unmaps taken pages; a page that cannot be unmapped goes back into its range (mutex_ free).
  void unmap_taken(std::vector<PageAt>* taken);
  Status create_pages(std::size_t count, std::vector<PageHandle>* out, bool* over_limit);
  // Maps `pages` at the start of at.hole (a new range of `kind` if null) as free memory, and
  // serves the request from the free block they join (*served) when it is large enough.
  Status map_pages(PoolKind kind, std::vector<PageHandle>* pages, const Placement& at,
                   std::size_t rounded, void** ptr, bool* served);
  Block* punch_hole(Block* b, std::uintptr_t lo, std::uintptr_t hi, std::vector<PageAt>* out);
  Block* add_hole(Block* b);  // marks b a hole and coalesces it with hole neighbours
  // Maps `count` pages at addr inside `hole` as free memory; returns the free block holding them.
  Block* fill_hole(Block* hole, std::uintptr_t addr, const PageHandle* pages, std::size_t count);
  std::uint64_t release_pages_with_permit(std::uint64_t keep_idle, ReleaseReason reason);
  void forget_all();  // metadata only (mutex_ held)

  const int device_;
  Backend& backend_;
  SyncGate& gate_;
  PoolObserver* observer_;
  const std::size_t page_size_;  // 0: segments

  mutable PoolMutex mutex_;  // adaptive: spins briefly before sleeping (pool_mutex.h)
  std::mutex release_mutex_;
  Policy policy_;
  std::map<std::uintptr_t, Segment*> segments_;
  PtrMap<Block> live_;
  FreeIndex<Block> free_[kPoolKinds] = {FreeIndex<Block>(kSmallSegment),
                                        FreeIndex<Block>(kMediumSegment), FreeIndex<Block>(0)};
  FreeIndex<Block> holes_[kPoolKinds];  // (pages) unmapped runs by size, per kind of range
  Block* pending_head_ = nullptr;
  Block* pending_tail_ = nullptr;
  std::uint64_t pending_seq_ = 0;
  std::uint64_t segment_seq_ = 0;
  std::uint64_t free_segment_bytes_ = 0;  // bytes of segments with busy == 0
  std::uint64_t growing_bytes_ = 0;       // segments being obtained right now (limit accounting)
  std::uint64_t releasing_bytes_ = 0;     // segments being returned right now (limit accounting)
  std::uint64_t generation_ = 0;          // bumped by drop_all()
  Block* spare_blocks_ = nullptr;         // recycled Block objects, linked through `next`
  // Pages.
  std::uint64_t idle_page_bytes_ = 0;  // whole pages inside free blocks
  Block* idle_head_ = nullptr;         // free blocks holding whole pages, oldest first
  Block* idle_tail_ = nullptr;
  std::vector<PageHandle> spare_pages_;  // owned, mapped nowhere
  bool unfenced_frees_ = false;          // a block became free without a fence since the last one
  PoolStats stats_;
  std::vector<ThreadCache*> caches_;  // every thread's cache of this pool
  const std::uint64_t id_;            // unique per pool in the process (thread caches)

  std::atomic<std::uint64_t> activity_{0};
  std::atomic<bool> immediate_{false};
  std::atomic<bool> caches_on_{false};              // a second thread allocated: caches in use
  std::atomic<const void*> first_thread_{nullptr};  // the first thread that allocated        //
                                                    // policy_.reuse == kImmediate, for the caches
  std::atomic<std::uint64_t> out_bytes_{0};         // stats_.in_use, for the caches' checks
  std::atomic<std::uint64_t> held_bytes_{0};        // stats_.held, likewise
  std::atomic<std::uint64_t> wake_threshold_;
};

}  // namespace cudapool
