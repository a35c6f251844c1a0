#include "allocator/device_pool.h"

#include <pthread.h>

#include <algorithm>
#include <vector>

namespace cudapool {

namespace {
bool succeeded(Status s) {
  return s == Status::kOk || s == Status::kUnloading;
}

// Address space reserved at a time for the medium and large ranges (pages): reserving costs no
// memory, and one range serves many blocks; a larger request gets a range of its own size.
constexpr std::size_t kRangeSize = 1 * kGiB;

// The page size the pool uses: the backend's, when pages are wanted and it is usable.
std::size_t pages_for(Backend& backend, int device, VmmMode mode) {
  if (mode == VmmMode::kOff) return 0;
  std::size_t page = backend.page_size(device);
  bool usable =
      page != 0 && (page & (page - 1)) == 0 && page % kAlignment == 0 && kRangeSize % page == 0;
  return usable ? page : 0;
}

std::uintptr_t round_down(std::uintptr_t a, std::size_t page) {
  return a & ~(static_cast<std::uintptr_t>(page) - 1);
}
std::uintptr_t round_up(std::uintptr_t a, std::size_t page) {
  return round_down(a + page - 1, page);
}
// Bytes of the pages wholly inside [lo, hi).
std::size_t whole_between(std::uintptr_t lo, std::uintptr_t hi, std::size_t page) {
  lo = round_up(lo, page);
  hi = round_down(hi, page);
  return hi > lo ? hi - lo : 0;
}
}  // namespace

// ---- thread caches: the structure and the thread-local lookup
// ------------------------------------

// One thread's cache of one pool. Guarded by `mutex`, which the owning thread takes on the hot
// path and others only with the pool's mutex_ held (device_pool.h). Its blocks are linked through
// Block::free_next (bins) and Block::pending_next (the pending list).
struct DevicePool::ThreadCache {
  struct Bin {
    std::size_t size = 0;  // the exact rounded size of its blocks (0: never used)
    Block* head = nullptr;
    std::uint32_t count = 0;
    std::uint32_t refill = 1;  // blocks carved at the next miss: doubles while the size recurs
  };
  // Open addressing over exact sizes: a size lives in at most one slot of its probe window; a
  // slot with no blocks may be taken over by another size. A size is claimed in the window's
  // first slot without blocks, and a slot never becomes unused again (until forget()), so a
  // lookup stops at the first unused slot.
  static constexpr unsigned kBins = 256;
  static constexpr unsigned kProbe = 8;

  explicit ThreadCache(DevicePool* p) : pool(p) {}

  Bin* find(std::size_t size) {
    const unsigned home = static_cast<unsigned>(size / kAlignment);
    for (unsigned i = 0; i < kProbe; ++i) {
      Bin& b = bins[(home + i) % kBins];
      if (b.size == size) return &b;
      if (b.size == 0) break;
    }
    return nullptr;
  }
  Bin* find_or_claim(std::size_t size) {
    if (Bin* b = find(size)) return b;
    const unsigned home = static_cast<unsigned>(size / kAlignment);
    for (unsigned i = 0; i < kProbe; ++i) {
      Bin& b = bins[(home + i) % kBins];
      if (b.count == 0) {
        b = Bin{size, nullptr, 0, 1};
        return &b;
      }
    }
    return nullptr;
  }
  // Room for `blocks` more blocks of `size` in `bin`.
  bool has_room(const Bin* bin, std::size_t size, std::uint32_t blocks = 1) const {
    return bin != nullptr && bin->count + blocks <= kBinBlocks &&
           cached_bytes + blocks * size <= kCacheBytes;
  }
  void push(Bin* bin, Block* b) {
    b->free_next = bin->head;
    bin->head = b;
    ++bin->count;
    cached_bytes += b->size;
    ++cached_blocks;
  }
  Block* pop(Bin* bin) {
    Block* b = bin->head;
    bin->head = b->free_next;
    --bin->count;
    cached_bytes -= b->size;
    --cached_blocks;
    return b;
  }
  // A block goes to the application: into the map of blocks this cache handed out.
  void hand_out(Block* b) {
    live.insert(b->addr, b);
    mallocs.store(mallocs.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }
  void pending_push(Block* b) {
    b->pending_next = nullptr;
    (pending_tail != nullptr ? pending_tail->pending_next : pending_head) = b;
    pending_tail = b;
    pending_bytes += b->size;
    ++pending_blocks;
  }
  bool wants_flush() const {
    return pending_blocks >= kFlushBlocks || pending_bytes >= kFlushBytes;
  }
  // Bytes it holds that are not in use.
  std::uint64_t held() const { return cached_bytes + pending_bytes; }
  bool empty() const { return cached_blocks == 0 && pending_blocks == 0; }
  // Forgets every block (the pool forgot them: reset, or the pool is gone).
  void forget() {
    for (Bin& b : bins)
      b = Bin{};
    live.clear();
    pending_head = pending_tail = nullptr;
    pending_bytes = cached_bytes = 0;
    pending_blocks = cached_blocks = 0;
    unfenced = false;
  }

  PoolMutex mutex;
  DevicePool* pool;  // null once the pool is destroyed (tests; the shim never destroys pools)
  Bin bins[kBins];
  PtrMap<Block> live;             // blocks it handed out that are not freed yet
  Block* pending_head = nullptr;  // freed, waiting for a fence (the next one takes them)
  Block* pending_tail = nullptr;
  std::uint64_t pending_bytes = 0;
  std::uint64_t cached_bytes = 0;
  std::uint32_t pending_blocks = 0;
  std::uint32_t cached_blocks = 0;
  bool unfenced = false;  // a block entered a bin straight from a free (immediate reuse)
  static constexpr std::uint64_t kWakeStep = 1 * kMiB;
  std::uint64_t wake_checked = 0;  // held() at the last wake check
  // Written by the owner only (a load and a store), read by anyone: the pool sums them.
  std::atomic<std::uint64_t> mallocs{0};
  std::atomic<std::uint64_t> frees{0};
  std::uint64_t seen_calls = 0;  // mallocs + frees when the idle check last saw them change
  std::uint64_t seen_ms = 0;     // and when (pool's mutex_ guards both)
};

namespace {

// The calling thread's caches, one per pool it allocated on (at most kThreadPools).
struct ThreadCaches {
  static constexpr int kThreadPools = 8;
  struct Entry {
    std::uint64_t pool_id;
    DevicePool::ThreadCache* cache;
  };
  Entry entries[kThreadPools];
  int count = 0;
};

std::atomic<std::uint64_t> g_next_pool_id{1};
// initial-exec: the library is preloaded, and a pointer fits any surplus of static TLS.
thread_local ThreadCaches* t_caches __attribute__((tls_model("initial-exec"))) = nullptr;
ThreadCaches g_exited;  // t_caches of a thread whose caches were returned at its exit: no more
pthread_key_t g_cache_key;

}  // namespace

[[gnu::always_inline]] inline DevicePool::ThreadCache* DevicePool::this_thread_cache(bool create) {
  ThreadCaches* t = t_caches;
  if (t != nullptr) [[likely]] {
    for (int i = 0; i < t->count; ++i)
      if (t->entries[i].pool_id == id_) return t->entries[i].cache;
  }
  if (!create || t == &g_exited) return nullptr;
  return new_thread_cache();
}

DevicePool::ThreadCache* DevicePool::new_thread_cache() {
  static const bool key_ready = [] {
    if (pthread_key_create(&g_cache_key, &DevicePool::thread_exit) != 0) return false;
    // The child of a fork has only the forking thread, and its caches describe the parent's
    // pools (which the shim abandons): forget them, without touching them.
    pthread_atfork(nullptr, nullptr, [] {
      t_caches = nullptr;
      pthread_setspecific(g_cache_key, nullptr);
    });
    return true;
  }();
  if (!key_ready) return nullptr;
  ThreadCaches* t = t_caches;
  if (t == nullptr) {
    t = new ThreadCaches();
    if (pthread_setspecific(g_cache_key, t) != 0) {
      delete t;
      return nullptr;
    }
    t_caches = t;
  }
  if (t->count == ThreadCaches::kThreadPools) {
    // Full: reuse the entries of pools that are gone.
    int kept = 0;
    for (int i = 0; i < t->count; ++i) {
      ThreadCache* c = t->entries[i].cache;
      c->mutex.lock();
      bool orphan = c->pool == nullptr;
      c->mutex.unlock();
      if (orphan) {
        delete c;
      } else {
        t->entries[kept++] = t->entries[i];
      }
    }
    t->count = kept;
    if (kept == ThreadCaches::kThreadPools) return nullptr;  // served by the pool itself
  }
  auto* c = new ThreadCache(this);
  {
    std::lock_guard lock(mutex_);
    caches_.push_back(c);
  }
  t->entries[t->count++] = {id_, c};
  return c;
}

// At a thread's exit: each cache returns its blocks to its pool, its live blocks become the
// pool's, and its counters join the pool's.
void DevicePool::thread_exit(void* caches) {
  auto* t = static_cast<ThreadCaches*>(caches);
  for (int i = 0; i < t->count; ++i) {
    ThreadCache* c = t->entries[i].cache;
    c->mutex.lock();
    DevicePool* pool = c->pool;
    c->mutex.unlock();
    if (pool != nullptr) {
      std::lock_guard lock(pool->mutex_);
      std::lock_guard cache_lock(c->mutex);
      pool->drain(c);
      c->live.for_each([pool](std::uintptr_t addr, Block* b) { pool->live_.insert(addr, b); });
      const std::uint64_t mallocs = c->mallocs.load(std::memory_order_relaxed);
      pool->stats_.app_mallocs += mallocs;
      pool->stats_.hits += mallocs;
      pool->stats_.app_frees += c->frees.load(std::memory_order_relaxed);
      pool->activity_.store(pool->activity_.load(std::memory_order_relaxed) + mallocs,
                            std::memory_order_relaxed);
      auto& list = pool->caches_;
      list.erase(std::find(list.begin(), list.end(), c));
    }
    delete c;
  }
  delete t;
  t_caches = &g_exited;  // a later call of this thread (another destructor) uses the pools
}

DevicePool::DevicePool(int device, Backend& backend, SyncGate& gate, const Policy& policy,
                       PoolObserver* observer)
    : device_(device),
      backend_(backend),
      gate_(gate),
      observer_(observer),
      page_size_(pages_for(backend, device, policy.vmm)),
      policy_(policy),
      id_(g_next_pool_id.fetch_add(1, std::memory_order_relaxed)),
      wake_threshold_(policy.high_watermark) {
  stats_.page_size = page_size_;
  immediate_.store(policy.reuse == ReuseMode::kImmediate, std::memory_order_relaxed);
}

DevicePool::~DevicePool() {
  // Only metadata: the memory itself stays with the driver (the shim never destroys its pools).
  {
    std::lock_guard lock(mutex_);
    for (ThreadCache* c : caches_) {  // their threads delete them
      std::lock_guard cache_lock(c->mutex);
      c->forget();
      c->pool = nullptr;
    }
    caches_.clear();
    forget_all();
  }
  while (spare_blocks_ != nullptr) {
    Block* next = spare_blocks_->next;
    delete spare_blocks_;
    spare_blocks_ = next;
  }
}

// ---- hot path -------------------------------------------------------------------------------

// A hit in the thread's cache: its own lock, one exact-size bin, one insert into its own map; no
// line another thread writes, no driver call, no host allocation in steady state. A miss refills
// the bin from the pool (one mutex_ for a few blocks); larger requests use the pool directly.
Status DevicePool::allocate(std::size_t size, void** ptr) {
  std::size_t rounded = round_request(size);
  if (rounded == 0) {
    std::lock_guard lock(mutex_);
    ++stats_.alloc_failures;
    return Status::kOutOfMemory;
  }
  if (rounded <= kCacheMax && (caches_on_.load(std::memory_order_relaxed) || second_thread())) {
    if (ThreadCache* c = this_thread_cache(/*create=*/true)) [[likely]] {
      c->mutex.lock();
      ThreadCache::Bin* bin = c->find(rounded);
      if (bin != nullptr && bin->head != nullptr) [[likely]] {
        Block* b = c->pop(bin);
        c->hand_out(b);
        c->mutex.unlock();
        // (No peak check here: it would read a line every refill writes. The pool notes peaks at
        // its own operations, so the peak in use may miss what caches handed out in between.)
        *ptr = reinterpret_cast<void*>(b->addr);
        return Status::kOk;
      }
      c->mutex.unlock();
      return refill(c, rounded, ptr);
    }
  }
  PoolKind kind = kind_of(rounded);
  {
    std::lock_guard lock(mutex_);
    if (Block* b = take_free_block(kind, rounded)) {
      ++stats_.hits;
      *ptr = reinterpret_cast<void*>(b->addr);
      return Status::kOk;
    }
  }
  return allocate_slow(kind, rounded, ptr);
}

// A free into a cache: wake the release thread once idle memory passes its threshold. Other
// threads' caches are not counted (what they hold is bounded: kCacheBytes + kFlushBytes).
// Reads lines other threads write: only each time the cache's holdings grew by kWakeStep.
void DevicePool::maybe_note_idle(ThreadCache* c, bool* wake_releaser) const {
  const std::uint64_t held = c->held();
  if (held < c->wake_checked + ThreadCache::kWakeStep) {
    if (held < c->wake_checked) c->wake_checked = held;
    return;
  }
  c->wake_checked = held;
  note_idle(c, wake_releaser);
}

void DevicePool::note_idle(const ThreadCache* c, bool* wake_releaser) const {
  const std::uint64_t held = held_bytes_.load(std::memory_order_relaxed);
  const std::uint64_t out = out_bytes_.load(std::memory_order_relaxed);
  const std::uint64_t idle = held - std::min(held, out) + (c != nullptr ? c->held() : 0);
  if (idle > wake_threshold_.load(std::memory_order_relaxed)) *wake_releaser = true;
}

// Caches start once a second thread allocates: until then the one thread's calls take the pool's
// lock uncontended, and a cache would only add its own bookkeeping (a thread is told apart by
// the address of its thread-local pointer; a thread that replaces an exited one may share it).
bool DevicePool::second_thread() {
  const void* me = &t_caches;
  const void* first = first_thread_.load(std::memory_order_relaxed);
  if (first == me) [[likely]]
    return false;
  if (first == nullptr && first_thread_.compare_exchange_strong(first, me)) return false;
  caches_on_.store(true, std::memory_order_relaxed);
  return true;
}

// A bin was empty: the pool carves the request and, when the size recurs, a few more of it for
// the bin, under one mutex_.
__attribute__((noinline)) Status DevicePool::refill(ThreadCache* c, std::size_t rounded,
                                                    void** ptr) {
  const PoolKind kind = kind_of(rounded);
  {
    std::lock_guard lock(mutex_);
    std::lock_guard cache_lock(c->mutex);
    ThreadCache::Bin* bin = c->find_or_claim(rounded);
    if (Block* b = take_free_block(kind, rounded, Taker::kCache)) {
      c->hand_out(b);
      if (bin != nullptr) {
        const std::uint32_t most = static_cast<std::uint32_t>(
            std::clamp<std::size_t>(kRefillBytes / rounded, 1, kRefillBlocks));
        // Carved in address order; pushed last first, so that they are handed out in it.
        Block* more[kRefillBlocks];
        std::uint32_t n = 0;
        while (n + 1 < bin->refill && c->has_room(bin, rounded, n + 1) &&
               (more[n] = take_free_block(kind, rounded, Taker::kCache)) != nullptr)
          ++n;
        while (n != 0)
          c->push(bin, more[--n]);
        bin->refill = std::min(bin->refill * 2, most);
      }
      note_peaks(c);
      *ptr = reinterpret_cast<void*>(b->addr);
      return Status::kOk;
    }
  }
  // Nothing free fits: the pool's miss path (a fence, then a drain of the caches, before growing).
  return allocate_slow(kind, rounded, ptr);
}

Status DevicePool::free_cached(void* ptr, bool* wake_releaser) {
  if (!caches_on_.load(std::memory_order_relaxed)) return Status::kNotOwned;
  ThreadCache* c = this_thread_cache(/*create=*/false);
  if (c == nullptr) return Status::kNotOwned;
  const auto addr = reinterpret_cast<std::uintptr_t>(ptr);
  c->mutex.lock();
  Block* b = c->live.find(addr);
  if (b == nullptr) {
    c->mutex.unlock();
    return Status::kNotOwned;
  }
  c->live.erase(addr);
  c->frees.store(c->frees.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  // During a capture the block waits for a fence even in immediate mode: the capture may have
  // recorded work that uses it.
  if (immediate_.load(std::memory_order_relaxed) && !gate_.capture_active()) {
    ThreadCache::Bin* bin = c->find_or_claim(b->size);
    if (c->has_room(bin, b->size)) {
      c->push(bin, b);
      c->unfenced = true;
      maybe_note_idle(c, wake_releaser);
      c->mutex.unlock();
      return Status::kOk;
    }
    c->mutex.unlock();
    std::lock_guard lock(mutex_);
    release_block(b, wake_releaser);
    return Status::kOk;
  }
  c->pending_push(b);
  if (!c->wants_flush()) [[likely]] {
    maybe_note_idle(c, wake_releaser);
    c->mutex.unlock();
    return Status::kOk;
  }
  c->mutex.unlock();
  std::lock_guard lock(mutex_);
  std::lock_guard cache_lock(c->mutex);
  flush_pending(c, wake_releaser);
  return Status::kOk;
}

Status DevicePool::free(void* ptr, bool* wake_releaser) {
  if (free_cached(ptr, wake_releaser) == Status::kOk) return Status::kOk;
  return free_shared(ptr, wake_releaser);
}

Status DevicePool::free_shared(void* ptr, bool* wake_releaser) {
  auto addr = reinterpret_cast<std::uintptr_t>(ptr);
  std::lock_guard lock(mutex_);
  Block* b = live_.find(addr);
  if (b != nullptr) {
    live_.erase(addr);
  } else {
    if (segment_containing(addr) == nullptr) return Status::kNotOwned;
    for (ThreadCache* c : caches_) {  // a block another thread's cache handed out
      std::lock_guard cache_lock(c->mutex);
      if ((b = c->live.find(addr)) != nullptr) {
        c->live.erase(addr);
        break;
      }
    }
    if (b == nullptr) {
      ++stats_.invalid_frees;
      return Status::kInvalidValue;
    }
  }
  ++stats_.app_frees;
  release_block(b, wake_releaser);
  return Status::kOk;
}

// An in-use block that is in no map any more becomes pending, or free under immediate reuse.
[[gnu::always_inline]] inline void DevicePool::release_block(Block* b, bool* wake_releaser) {
  sub_in_use(b->size);
  --stats_.live_blocks;
  if (policy_.reuse == ReuseMode::kImmediate && !gate_.capture_active()) {
    make_free(b);
    unfenced_frees_ = true;  // its pages may be unmapped only after a fence
  } else {
    b->state = Block::State::kPending;
    b->pending_seq = ++pending_seq_;
    pending_push(b);
  }
  if (wake_releaser == nullptr) return;
  if (caches_on_.load(std::memory_order_relaxed)) {
    note_idle(this_thread_cache(/*create=*/false), wake_releaser);
  } else if (stats_.held - stats_.in_use > wake_threshold_.load(std::memory_order_relaxed)) {
    *wake_releaser = true;
  }
}

void DevicePool::pending_push(Block* b) {
  b->pending_next = nullptr;
  (pending_tail_ != nullptr ? pending_tail_->pending_next : pending_head_) = b;
  pending_tail_ = b;
  stats_.pending += b->size;
}

// ---- thread caches: the pool's side (mutex_ held)
// ------------------------------------------------

void DevicePool::flush_pending(ThreadCache* c, bool* wake_releaser) {
  const std::uint64_t seq = c->pending_head != nullptr ? ++pending_seq_ : 0;
  for (Block* b = c->pending_head; b != nullptr;) {
    Block* next = b->pending_next;
    sub_in_use(b->size);
    --stats_.live_blocks;
    b->state = Block::State::kPending;
    b->pending_seq = seq;
    pending_push(b);
    b = next;
  }
  c->pending_head = c->pending_tail = nullptr;
  c->pending_bytes = 0;
  c->pending_blocks = 0;
  if (wake_releaser != nullptr) note_idle(this_thread_cache(/*create=*/false), wake_releaser);
}

void DevicePool::drain(ThreadCache* c) {
  for (ThreadCache::Bin& bin : c->bins) {
    while (bin.head != nullptr) {
      Block* b = c->pop(&bin);
      sub_in_use(b->size);
      --stats_.live_blocks;
      make_free(b);
    }
    bin.refill = 1;  // the pool needed the memory: carve spares again only as the size recurs
  }
  if (c->unfenced) unfenced_frees_ = true;
  c->unfenced = false;
  flush_pending(c, nullptr);
}

bool DevicePool::drain_all() {
  bool any = false;
  for (ThreadCache* c : caches_) {
    std::lock_guard cache_lock(c->mutex);
    if (c->empty()) continue;
    any = true;
    drain(c);
  }
  return any;
}

void DevicePool::drain_caches() {
  std::lock_guard lock(mutex_);
  drain_all();
}

int DevicePool::drain_idle_caches(std::uint64_t now_ms, std::uint64_t quiet_ms) {
  std::lock_guard lock(mutex_);
  int drained = 0;
  for (ThreadCache* c : caches_) {
    const std::uint64_t calls =
        c->mallocs.load(std::memory_order_relaxed) + c->frees.load(std::memory_order_relaxed);
    if (calls != c->seen_calls || c->seen_ms == 0) {
      c->seen_calls = calls;
      c->seen_ms = now_ms;
      continue;
    }
    if (now_ms - c->seen_ms < quiet_ms) continue;
    std::lock_guard cache_lock(c->mutex);
    if (c->empty()) continue;
    drain(c);
    ++drained;
  }
  return drained;
}

std::uint64_t DevicePool::caches_pending() const {
  std::uint64_t pending = 0;
  for (ThreadCache* c : caches_) {
    std::lock_guard cache_lock(c->mutex);
    pending += c->pending_bytes;
  }
  return pending;
}

std::uint64_t DevicePool::caches_held() const {
  std::uint64_t held = 0;
  for (ThreadCache* c : caches_) {
    std::lock_guard cache_lock(c->mutex);
    held += c->held();
  }
  return held;
}

std::uint64_t DevicePool::activity() const {
  std::lock_guard lock(mutex_);
  std::uint64_t a = activity_.load(std::memory_order_relaxed);
  for (const ThreadCache* c : caches_)
    a += c->mallocs.load(std::memory_order_relaxed);
  return a;
}

// ---- block bookkeeping (mutex_ held) --------------------------------------------------------

DevicePool::Block* DevicePool::take_free_block(PoolKind kind, std::size_t rounded, Taker taker) {
  // With pages, the rest of a larger run stays free and its whole pages can move elsewhere.
  std::size_t max_size =
      kind == PoolKind::kLarge && page_size_ == 0 ? largest_acceptable_fit(rounded) : SIZE_MAX;
  Block* b = free_index(kind).take_best_fit(rounded, max_size);
  if (page_size_ != 0 && kind == PoolKind::kSmall && (b == nullptr || b->in_idle_list) &&
      !free_index(PoolKind::kMedium).empty()) [[unlikely]] {
    // Pages: rather than start on an idle page, a small request takes a free fragment of a
    // medium range (a free block holding no whole page: its pages are held for its neighbours).
    FreeIndex<Block>& medium = free_index(PoolKind::kMedium);
    if (Block* f = medium.best_fit(rounded); f != nullptr && !f->in_idle_list) {
      if (b != nullptr) free_index(kind).insert(b);
      medium.erase(f);
      b = f;
    }
  }
  if (b == nullptr) return nullptr;
  if (b->in_idle_list) [[unlikely]]
    unlink_idle(b);
  return carve(b, rounded, taker);
}

// The helpers of the hot path below are forced inline: as calls they cost the pool-hit pair
// about 12 instructions (callgrind, cudapool-hotpath).
#define CUDAPOOL_HOT [[gnu::always_inline]] inline

// Splits b into [addr, addr + head_size) (b itself) and the rest (returned, same state).
CUDAPOOL_HOT DevicePool::Block* DevicePool::split(Block* b, std::size_t head_size) {
  Block* rest = new_block();
  rest->addr = b->addr + head_size;
  rest->size = b->size - head_size;
  rest->segment = b->segment;
  rest->prev = b;
  rest->next = b->next;
  rest->state = b->state;
  if (b->next != nullptr) b->next->prev = rest;
  b->next = rest;
  b->size = head_size;
  return rest;
}

// Hands out the front of free block `b` (not in any index), returning the rest to the index.
DevicePool::Block* DevicePool::carve(Block* b, std::size_t rounded, Taker taker) {
  Segment* s = b->segment;
  if (page_size_ != 0 && b->size - rounded >= page_size_) [[unlikely]] {
    // Pages: the end of the free block that leaves the rest more whole pages (to move or
    // return) and so makes the block touch fewer; the front when both are the same.
    const std::uintptr_t end = b->addr + b->size;
    if (whole_between(b->addr, end - rounded, page_size_) >
        whole_between(b->addr + rounded, end, page_size_)) {
      Block* rest = b;
      b = split(rest, b->size - rounded);
      index_free(rest);
    } else {
      index_free(split(b, rounded));
    }
  } else if ((s->kind != PoolKind::kLarge || page_size_ != 0) && b->size - rounded >= kAlignment) {
    index_free(split(b, rounded));
  }
  if (s->busy == 0 && page_size_ == 0) free_segment_bytes_ -= s->size;
  s->busy += b->size;
  b->state = Block::State::kInUse;
  add_in_use(b->size);
  ++stats_.live_blocks;
  if (taker == Taker::kCache) return b;  // the cache counts it when it hands it out
  live_.insert(b->addr, b);
  ++stats_.app_mallocs;
  // Every writer holds mutex_: a plain increment, no read-modify-write on the bus.
  activity_.store(activity_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  note_peaks();
  return b;
}

// Turns an in-use or pending block (in no index) into a free one, coalescing with free neighbours.
void DevicePool::make_free(Block* b) {
  Segment* s = b->segment;
  s->busy -= b->size;
  if (s->busy == 0 && page_size_ == 0) free_segment_bytes_ += s->size;
  b->state = Block::State::kFree;
  index_free(merge_free(b));
}

// Merges free block b (in no index) with its free neighbours; returns the merged block.
CUDAPOOL_HOT DevicePool::Block* DevicePool::merge_free(Block* b) {
  if (Block* prev = b->prev; prev != nullptr && prev->state == Block::State::kFree) {
    unindex_free(prev);
    prev->size += b->size;
    prev->next = b->next;
    if (b->next != nullptr) b->next->prev = prev;
    recycle_block(b);
    b = prev;
  }
  if (Block* next = b->next; next != nullptr && next->state == Block::State::kFree) {
    unindex_free(next);
    b->size += next->size;
    b->next = next->next;
    if (next->next != nullptr) next->next->prev = b;
    recycle_block(next);
  }
  return b;
}

// A free block enters its kind's index and, with pages, the idle list when it holds whole pages.
CUDAPOOL_HOT void DevicePool::index_free(Block* b) {
  free_index(b->segment->kind).insert(b);
  if (page_size_ == 0 || b->size < page_size_) return;  // (a block below a page holds none)
  link_idle(b);
}

void DevicePool::link_idle(Block* b) {
  if (std::size_t whole = whole_pages(b); whole != 0) {
    idle_page_bytes_ += whole;
    b->in_idle_list = true;
    b->idle_next = nullptr;
    b->idle_prev = idle_tail_;
    (idle_tail_ != nullptr ? idle_tail_->idle_next : idle_head_) = b;
    idle_tail_ = b;
  }
}

CUDAPOOL_HOT void DevicePool::unindex_free(Block* b) {
  free_index(b->segment->kind).erase(b);
  if (b->in_idle_list) unlink_idle(b);
}

void DevicePool::unlink_idle(Block* b) {
  idle_page_bytes_ -= whole_pages(b);
  b->in_idle_list = false;
  (b->idle_prev != nullptr ? b->idle_prev->idle_next : idle_head_) = b->idle_next;
  (b->idle_next != nullptr ? b->idle_next->idle_prev : idle_tail_) = b->idle_prev;
}

std::size_t DevicePool::whole_pages(const Block* b) const {
  return whole_between(b->addr, b->addr + b->size, page_size_);
}

DevicePool::Block* DevicePool::new_block() {
  if (spare_blocks_ == nullptr) return new Block();
  Block* b = spare_blocks_;
  spare_blocks_ = b->next;
  // What a new block's creators read before they set it (the other links are written when the
  // block enters the list they belong to; addr, size and segment by every creator).
  b->prev = b->next = nullptr;
  b->state = Block::State::kFree;
  b->in_idle_list = false;
  return b;
}

void DevicePool::recycle_block(Block* b) {
  b->next = spare_blocks_;
  spare_blocks_ = b;
}

DevicePool::Block* DevicePool::block_at(std::uintptr_t addr) {
  const Segment* s = segment_containing(addr);
  Block* b = s != nullptr ? s->first : nullptr;
  while (b != nullptr && addr >= b->addr + b->size)
    b = b->next;
  return b;
}

const DevicePool::Segment* DevicePool::segment_containing(std::uintptr_t addr) const {
  auto it = segments_.upper_bound(addr);
  if (it == segments_.begin()) return nullptr;
  --it;
  const Segment* s = it->second;
  return addr < s->base + s->size ? s : nullptr;
}

void DevicePool::note_peaks() {
  note_peaks(caches_on_.load(std::memory_order_relaxed) ? this_thread_cache(/*create=*/false)
                                                        : nullptr);
}

void DevicePool::note_peaks(const ThreadCache* c) {
  stats_.peak_held = std::max(stats_.peak_held, stats_.held);
  const std::uint64_t in_use = stats_.in_use - (c != nullptr ? c->held() : 0);
  stats_.peak_in_use = std::max(stats_.peak_in_use, in_use);
}

// ---- slow paths ------------------------------------------------------------------------------

// A miss: fence if enough memory is pending, respect the limit, grow, and on out-of-memory
// release idle memory and retry before failing.
Status DevicePool::allocate_slow(PoolKind kind, std::size_t rounded, void** ptr) {
  if (page_size_ != 0) return allocate_slow_pages(kind, rounded, ptr);
  std::size_t segment_size = segment_size_for(kind, rounded);
  auto try_take = [&]() -> bool {
    std::lock_guard lock(mutex_);
    Block* b = take_free_block(kind, rounded);
    if (b == nullptr) return false;
    ++stats_.hits;
    *ptr = reinterpret_cast<void*>(b->addr);
    return true;
  };

  std::uint64_t pending;
  {
    std::lock_guard lock(mutex_);
    pending = stats_.pending + caches_pending();  // a fence takes the caches' frees too
  }
  // A fence is one device synchronisation for many blocks; growing is a driver call and more
  // memory. Fence once enough is pending that the synchronisation pays for itself: a segment's
  // worth, and for small and medium blocks at least kFenceBatch (a synchronisation costs
  // microseconds, or waits for the device's queued work: it must stay rare on the hot path).
  std::uint64_t fence_at =
      std::max<std::uint64_t>(segment_size, kind == PoolKind::kLarge ? 0 : kFenceBatch);
  if (pending >= fence_at && fence() && try_take()) return Status::kOk;

  // What the caches keep may fit once it is back in the pool (it is idle memory): before growing.
  bool drained;
  {
    std::lock_guard lock(mutex_);
    drained = drain_all();
  }
  if (drained && try_take()) return Status::kOk;

  // More than the high watermark is idle, yet none of it fits (say, large segments of other
  // sizes): the release thread would return it a tick later, but in a burst the pool would grow
  // by the whole idle amount first. Apply the watermark rule before growing instead.
  std::uint64_t idle, high, low;
  {
    std::lock_guard lock(mutex_);
    idle = stats_.held - stats_.in_use;
    high = policy_.high_watermark;
    low = policy_.low_watermark;
  }
  if (idle > high && release_idle(low, ReleaseReason::kWatermark) != 0 && try_take())
    return Status::kOk;

  // Near the limit, a segment of exactly the request when a whole one does not fit.
  std::size_t exact = segment_size > rounded ? rounded : 0;
  bool over_limit = false;
  Status st = grow(kind, segment_size, rounded, ptr, &over_limit);
  if (over_limit && exact != 0) st = grow(kind, exact, rounded, ptr, &over_limit);
  if (over_limit) {
    // Give back idle memory until a whole segment fits under the limit, then try once more.
    std::uint64_t keep;
    {
      std::lock_guard lock(mutex_);
      ++stats_.limit_hits;
      std::uint64_t idle = stats_.held - stats_.in_use;
      std::uint64_t excess = committed_bytes() + segment_size - policy_.limit;
      keep = idle > excess ? idle - excess : 0;
    }
    release_idle(keep, ReleaseReason::kLimit);
    if (try_take()) return Status::kOk;
    st = grow(kind, segment_size, rounded, ptr, &over_limit);
    if (over_limit && exact != 0) st = grow(kind, exact, rounded, ptr, &over_limit);
    if (over_limit) {
      std::lock_guard lock(mutex_);
      ++stats_.alloc_failures;
      return Status::kOutOfMemory;
    }
  }
  if (st != Status::kOutOfMemory) return st;

  // Out of memory: give back what is idle (after a fence) and try again, then with an exact-size
  // segment in case the device cannot fit a whole one.
  {
    std::lock_guard lock(mutex_);
    ++stats_.oom_retries;
  }
  release_idle(0, ReleaseReason::kOutOfMemory);
  if (try_take()) return Status::kOk;
  st = grow(kind, segment_size, rounded, ptr, &over_limit);
  if (st == Status::kOutOfMemory && segment_size > rounded)
    st = grow(kind, rounded, rounded, ptr, &over_limit);
  if (st == Status::kOutOfMemory) {
    std::lock_guard lock(mutex_);
    ++stats_.alloc_failures;
  }
  return st;
}

// Obtains a segment and carves the request from it. The limit check and the reservation of the
// bytes happen in one critical section, so concurrent growers cannot together pass the limit.
Status DevicePool::grow(PoolKind kind, std::size_t segment_size, std::size_t rounded, void** ptr,
                        bool* over_limit) {
  {
    std::lock_guard lock(mutex_);
    *over_limit = policy_.limit != 0 && committed_bytes() + segment_size > policy_.limit;
    if (*over_limit) return Status::kOutOfMemory;
    growing_bytes_ += segment_size;
  }
  void* base = nullptr;
  Status st = backend_.allocate(device_, segment_size, &base);
  std::lock_guard lock(mutex_);
  growing_bytes_ -= segment_size;
  if (st != Status::kOk) return st;

  auto* s = new Segment();
  s->base = reinterpret_cast<std::uintptr_t>(base);
  s->size = segment_size;
  s->kind = kind;
  s->seq = ++segment_seq_;
  Block* b = new_block();
  b->addr = s->base;
  b->size = segment_size;
  b->segment = s;
  s->first = b;
  segments_.emplace(s->base, s);
  add_held(segment_size);
  ++stats_.segments;
  ++stats_.driver_mallocs;
  free_segment_bytes_ += segment_size;
  carve(b, rounded);
  *ptr = base;
  return Status::kOk;
}

// ---- pages (docs/pages.md) ---------------------------------------------------------------

// A miss with pages: fence when enough is pending (as with segments), then under release_mutex_
// gather the pages the request needs: idle ones first (spare, then whole pages of free runs,
// unmapped from there), new ones only for the shortfall; map them as one run into a hole of a
// range of the request's kind, and serve the request from it. Out of memory or over the limit:
// fence whatever is pending, gather again, and fail only if the pages still cannot be had.
Status DevicePool::allocate_slow_pages(PoolKind kind, std::size_t rounded, void** ptr) {
  auto try_take = [&](bool hit) -> bool {
    std::lock_guard lock(mutex_);
    Block* b = take_free_block(kind, rounded);
    if (b == nullptr) return false;
    if (hit) ++stats_.hits;
    *ptr = reinterpret_cast<void*>(b->addr);
    return true;
  };
  std::uint64_t pending;
  {
    std::lock_guard lock(mutex_);
    pending = stats_.pending + caches_pending();  // a fence takes the caches' frees too
  }
  // A fence frees what is pending, whose pages can then move to this request instead of new ones
  // (a page created costs far more than a synchronisation): for large requests, as soon as a
  // page is pending; small and medium misses wait for kFenceBatch, as with segments, so that
  // synchronisations stay rare on their more frequent misses.
  std::uint64_t fence_at = kind == PoolKind::kLarge ? page_size_ : kFenceBatch;
  if (pending >= fence_at && fence() && try_take(true)) return Status::kOk;
  bool drained;
  {
    std::lock_guard lock(mutex_);
    drained = drain_all();  // what the caches keep may fit once back in the pool
  }
  if (drained && try_take(true)) return Status::kOk;

  std::lock_guard grow_lock(release_mutex_);
  Status st = Status::kOk;
  std::vector<PageHandle> pages;  // gathered for the request, not yet mapped
  auto gather = [&](const Placement& at) {
    if (pages.size() >= at.pages) return;
    steal_pages(at.pages, at, fence_at, &pages);
    bool over_limit = false;
    st = create_pages(at.pages - std::min(at.pages, pages.size()), &pages, &over_limit);
    if (st != Status::kOutOfMemory) return;
    {
      std::lock_guard lock(mutex_);
      ++(over_limit ? stats_.limit_hits : stats_.oom_retries);
    }
    {  // what is pending may hold whole pages once fenced
      SyncGate::SyncPermit permit(gate_);
      if (permit.allowed()) fence_with_permit();
    }
    steal_pages(at.pages, at, 0, &pages);  // out of memory: whatever is pending
    st = create_pages(at.pages - std::min(at.pages, pages.size()), &pages, &over_limit);
  };
  // Gathering may change the layout (its fence frees blocks, stealing punches holes), and a hit
  // may take the free memory a placement counts on: place again after gathering, and map only
  // once the pages cover the placement. A few rounds at most.
  bool served = false;
  for (int round = 0; round < 4 && !served && st == Status::kOk; ++round) {
    if (try_take(true)) {
      served = true;
      break;
    }
    Placement at;
    {
      std::lock_guard lock(mutex_);
      at = place(kind, rounded);
    }
    gather(at);
    if (st != Status::kOk) break;
    {
      std::lock_guard lock(mutex_);
      at = place(kind, rounded);
    }
    if (pages.size() >= at.pages) st = map_pages(kind, &pages, at, rounded, ptr, &served);
  }
  if (!pages.empty()) {  // gathered but not mapped: idle, for the release rules
    std::lock_guard lock(mutex_);
    spare_pages_.insert(spare_pages_.end(), pages.begin(), pages.end());
  }
  if (served) return Status::kOk;
  std::lock_guard lock(mutex_);
  ++stats_.alloc_failures;
  return st == Status::kOk ? Status::kOutOfMemory : st;
}

// Where a miss maps its pages: a hole of a `kind` range (null: a new range) whose free
// neighbours the request can use too, so that partly used pages are used up. The request starts
// in the free block before the hole (the tail); when the new pages fill the hole exactly, it may
// end in the free block after it (the head). Of the smallest holes, the one that needs the fewest
// new pages wins.
DevicePool::Placement DevicePool::place(PoolKind kind, std::size_t rounded) {
  auto pages_for = [&](std::size_t bytes) { return round_up(bytes, page_size_) / page_size_; };
  auto free_size = [](const Block* b) {
    return b != nullptr && b->state == Block::State::kFree ? b->size : 0;
  };
  Placement best;
  best.pages = pages_for(rounded);
  int candidates = 32;
  holes_[static_cast<int>(kind)].visit_fits(page_size_, [&](Block* hole) {
    std::size_t tail = free_size(hole->prev), head = free_size(hole->next);
    // Using the tail: at least one new page (a request the tail alone fits was a hit).
    std::size_t n = pages_for(rounded > tail ? rounded - tail : kAlignment);
    if (n * page_size_ <= hole->size && (best.hole == nullptr || n < best.pages)) {
      best = Placement{hole, tail != 0 ? hole->prev : nullptr, nullptr, n};
    }
    std::size_t around = tail + head;
    std::size_t m = pages_for(rounded > around ? rounded - around : kAlignment);
    if (head != 0 && m * page_size_ == hole->size && m < best.pages) {
      best = Placement{hole, tail != 0 ? hole->prev : nullptr, hole->next, m};
    }
    return --candidates > 0 && best.pages > 1;
  });
  if (best.hole == nullptr) {  // none of the smallest fits: the smallest hole that fits alone
    best.hole = holes_[static_cast<int>(kind)].best_fit(best.pages * page_size_);
    if (best.hole != nullptr && free_size(best.hole->prev) != 0) {
      best.tail = best.hole->prev;
      best.pages = pages_for(rounded > best.tail->size ? rounded - best.tail->size : kAlignment);
    }
  }
  return best;
}

void DevicePool::steal_pages(std::size_t want, const Placement& keep, std::uint64_t fence_at,
                             std::vector<PageHandle>* out) {
  std::vector<PageAt> taken;
  bool sync;
  {
    std::lock_guard lock(mutex_);
    while (out->size() < want && !spare_pages_.empty()) {
      out->push_back(spare_pages_.back());
      spare_pages_.pop_back();
    }
    // A fence when enough is pending to be worth it (as on the miss path), or when blocks were
    // freed without one (their pages may be unmapped only after it).
    bool harvest = stats_.pending >= fence_at;
    if (out->size() >= want || (idle_page_bytes_ == 0 && !harvest)) return;
    sync = harvest || unfenced_frees_;
  }
  // Unmapping breaks a capture like a free, and must follow a fence of every free on the page.
  SyncGate::SyncPermit permit(gate_);
  if (!permit.allowed() || (sync && !fence_with_permit(/*for_unmap=*/true))) return;
  {
    std::lock_guard lock(mutex_);
    if (unfenced_frees_) return;  // freed without a fence since: not now (a miss creates instead)
    take_idle_pages(want - out->size(), keep, &taken);
  }
  unmap_taken(&taken);
  std::lock_guard lock(mutex_);
  for (const PageAt& p : taken) {
    out->push_back(p.handle);
    ++stats_.page_remaps;
  }
}

void DevicePool::take_idle_pages(std::size_t want, const Placement& keep,
                                 std::vector<PageAt>* out) {
  Block* b = idle_head_;
  while (want != 0 && b != nullptr) {
    Block* next = b->idle_next;  // punch_hole re-files b's pieces at the list's end
    if (b != keep.tail && b != keep.head) {
      std::uintptr_t lo = round_up(b->addr, page_size_);
      std::uintptr_t hi = round_down(b->addr + b->size, page_size_);
      std::size_t n = std::min<std::size_t>(want, (hi - lo) / page_size_);
      // From the end of the run: its start stays where the allocations that follow look first.
      punch_hole(b, hi - n * page_size_, hi, out);
      want -= n;
    }
    b = next;
  }
}

// Turns [lo, hi) (page-aligned, inside free block b) into a hole, appending its pages to *out.
DevicePool::Block* DevicePool::punch_hole(Block* b, std::uintptr_t lo, std::uintptr_t hi,
                                          std::vector<PageAt>* out) {
  unindex_free(b);
  Segment* s = b->segment;
  if (lo > b->addr) {
    Block* head = b;
    b = split(head, lo - head->addr);
    index_free(head);
  }
  if (hi < b->addr + b->size) index_free(split(b, hi - b->addr));
  for (std::uintptr_t a = lo; a < hi; a += page_size_) {
    PageHandle& h = s->pages[(a - s->base) / page_size_];
    out->push_back({a, h});
    h = 0;
  }
  return add_hole(b);
}

DevicePool::Block* DevicePool::add_hole(Block* b) {
  FreeIndex<Block>& holes = holes_[static_cast<int>(b->segment->kind)];
  b->state = Block::State::kHole;
  if (Block* prev = b->prev; prev != nullptr && prev->state == Block::State::kHole) {
    holes.erase(prev);
    prev->size += b->size;
    prev->next = b->next;
    if (b->next != nullptr) b->next->prev = prev;
    recycle_block(b);
    b = prev;
  }
  if (Block* next = b->next; next != nullptr && next->state == Block::State::kHole) {
    holes.erase(next);
    b->size += next->size;
    b->next = next->next;
    if (next->next != nullptr) next->next->prev = b;
    recycle_block(next);
  }
  holes.insert(b);
  return b;
}

// Maps `count` pages at [addr, ...) inside `hole` (in the hole index) into one free run.
DevicePool::Block* DevicePool::fill_hole(Block* hole, std::uintptr_t addr, const PageHandle* pages,
                                         std::size_t count) {
  FreeIndex<Block>& holes = holes_[static_cast<int>(hole->segment->kind)];
  holes.erase(hole);
  Block* b = hole;
  if (addr > hole->addr) {
    b = split(hole, addr - hole->addr);
    holes.insert(hole);
  }
  if (std::size_t bytes = count * page_size_; bytes < b->size) holes.insert(split(b, bytes));
  Segment* s = b->segment;
  for (std::size_t i = 0; i < count; ++i)
    s->pages[(addr - s->base) / page_size_ + i] = pages[i];
  b->state = Block::State::kFree;
  b = merge_free(b);
  index_free(b);
  return b;
}

void DevicePool::unmap_taken(std::vector<PageAt>* taken) {
  std::size_t kept = 0, unmapped = 0;
  for (PageAt& p : *taken) {
    Status st = backend_.unmap(device_, p.addr);
    if (succeeded(st)) {
      ++unmapped;
      p.addr = 0;
      (*taken)[kept++] = p;
      continue;
    }
    if (observer_ != nullptr) observer_->on_driver_error(device_, "unmap", st);
    std::lock_guard lock(mutex_);  // still mapped: back into its range as free memory
    fill_hole(block_at(p.addr), p.addr, &p.handle, 1);
  }
  taken->resize(kept);
  std::lock_guard lock(mutex_);
  stats_.page_unmaps += unmapped;
  stats_.pages_unmapped += unmapped;
}

Status DevicePool::create_pages(std::size_t count, std::vector<PageHandle>* out, bool* over_limit) {
  *over_limit = false;
  if (count == 0) return Status::kOk;
  std::uint64_t bytes = count * page_size_;
  {
    std::lock_guard lock(mutex_);
    *over_limit = policy_.limit != 0 && committed_bytes() + bytes > policy_.limit;
    if (*over_limit) return Status::kOutOfMemory;
    growing_bytes_ += bytes;
  }
  Status st = Status::kOk;
  std::size_t created = 0;
  for (; created < count; ++created) {
    PageHandle h = 0;
    st = backend_.create_page(device_, &h);
    if (st != Status::kOk) break;
    out->push_back(h);
  }
  if (st != Status::kOk && st != Status::kOutOfMemory && observer_ != nullptr)
    observer_->on_driver_error(device_, "create", st);
  std::lock_guard lock(mutex_);
  growing_bytes_ -= bytes;
  add_held(created * page_size_);
  stats_.pages += created;
  stats_.pages_unmapped += created;
  stats_.page_creates += created;
  note_peaks();
  return st;
}

Status DevicePool::map_pages(PoolKind kind, std::vector<PageHandle>* pages, const Placement& at,
                             std::size_t rounded, void** ptr, bool* served) {
  const std::size_t count = at.pages;  // the first `count` of *pages
  const std::size_t bytes = count * page_size_;
  Block* hole = at.hole;
  if (hole == nullptr) {
    // Small ranges are one page each, so that their free runs stay in the index's bins (the hot
    // path's O(1) lookup); the others reserve kRangeSize at a time.
    std::size_t size = std::max(kind == PoolKind::kSmall ? page_size_ : kRangeSize, bytes);
    std::uintptr_t base = 0;
    Status st = backend_.reserve(device_, size, &base);
    if (st != Status::kOk) {
      if (observer_ != nullptr) observer_->on_driver_error(device_, "reserve", st);
      return st;
    }
    std::lock_guard lock(mutex_);
    auto* s = new Segment();
    s->base = base;
    s->size = size;
    s->kind = kind;
    s->seq = ++segment_seq_;
    s->pages.assign(size / page_size_, 0);
    hole = new_block();
    hole->addr = base;
    hole->size = size;
    hole->segment = s;
    s->first = hole;
    segments_.emplace(base, s);
    ++stats_.segments;
    ++stats_.reservations;
    hole = add_hole(hole);
  }
  // The hole stays in the index while the pages are mapped: only this thread (release_mutex_)
  // changes holes.
  const std::uintptr_t addr = hole->addr;
  std::size_t mapped = 0;
  Status st = Status::kOk;
  for (; mapped < count; ++mapped) {
    st = backend_.map(device_, addr + mapped * page_size_, (*pages)[mapped]);
    if (st != Status::kOk) break;
  }
  if (st == Status::kOk) st = backend_.set_access(device_, addr, bytes);
  if (st != Status::kOk) {
    if (observer_ != nullptr) observer_->on_driver_error(device_, "map", st);
    // A page that cannot be unmapped stays where it is, as free memory once it is accessible;
    // if not even that works, it is lost to the pool (it leaves the counts; an error was logged).
    enum class Fate : std::uint8_t { kUnmapped, kInPlace, kLost };
    std::vector<Fate> fate(mapped, Fate::kUnmapped);
    std::size_t unmapped = 0;
    for (std::size_t i = 0; i < mapped; ++i) {
      std::uintptr_t a = addr + i * page_size_;
      if (succeeded(backend_.unmap(device_, a))) {
        ++unmapped;
      } else {
        fate[i] = backend_.set_access(device_, a, page_size_) == Status::kOk ? Fate::kInPlace
                                                                             : Fate::kLost;
      }
    }
    std::lock_guard lock(mutex_);
    stats_.page_maps += mapped;
    stats_.page_unmaps += unmapped;
    std::size_t kept = 0;
    for (std::size_t i = 0; i < pages->size(); ++i) {
      if (i >= mapped || fate[i] == Fate::kUnmapped) {
        (*pages)[kept++] = (*pages)[i];
        continue;
      }
      std::uintptr_t a = addr + i * page_size_;
      --stats_.pages_unmapped;
      if (fate[i] == Fate::kInPlace) {
        fill_hole(block_at(a), a, &(*pages)[i], 1);
      } else {
        sub_held(page_size_);
        --stats_.pages;
      }
    }
    pages->resize(kept);
    return st;
  }
  std::lock_guard lock(mutex_);
  Block* b = fill_hole(hole, addr, pages->data(), count);
  stats_.page_maps += count;
  stats_.pages_unmapped -= count;
  pages->erase(pages->begin(), pages->begin() + static_cast<std::ptrdiff_t>(count));
  // The request starts where the free memory before the new pages starts (place()); if a hit
  // took some of it meanwhile, the pages stay free memory and the caller tries again.
  if (b->size < rounded) return Status::kOk;
  unindex_free(b);
  *ptr = reinterpret_cast<void*>(carve(b, rounded)->addr);
  *served = true;
  return Status::kOk;
}

// Releases idle pages until idle <= keep_idle: spare pages first, then whole pages of free runs,
// oldest-freed run first. Every unmap follows a fence of the frees on its page.
std::uint64_t DevicePool::release_pages_with_permit(std::uint64_t keep_idle, ReleaseReason reason) {
  {
    std::lock_guard lock(mutex_);
    drain_all();
    if (stats_.held - stats_.in_use <= keep_idle) return 0;
  }
  if (!fence_with_permit(/*for_unmap=*/true)) return 0;
  std::vector<PageHandle> spare;
  std::vector<PageAt> mapped;
  std::size_t taken;
  {
    std::lock_guard lock(mutex_);
    if (unfenced_frees_) return 0;  // freed without a fence meanwhile: the next pass
    std::uint64_t idle = stats_.held - stats_.in_use;
    std::size_t want = 0;
    std::size_t available = spare_pages_.size() + idle_page_bytes_ / page_size_;
    for (; want < available && idle > keep_idle; ++want)
      idle -= std::min<std::uint64_t>(idle, page_size_);
    while (want != 0 && !spare_pages_.empty()) {
      spare.push_back(spare_pages_.back());
      spare_pages_.pop_back();
      --want;
    }
    take_idle_pages(want, Placement{}, &mapped);
    taken = spare.size() + mapped.size();
    sub_held(taken * page_size_);
    stats_.pages -= taken;
    releasing_bytes_ += taken * page_size_;
  }
  std::size_t to_unmap = mapped.size();
  unmap_taken(&mapped);  // a page that cannot be unmapped goes back into its range
  for (const PageAt& p : mapped)
    spare.push_back(p.handle);
  std::size_t count = 0;
  std::vector<PageHandle> kept;
  for (PageHandle h : spare) {
    Status st = backend_.release_page(device_, h);
    if (succeeded(st)) {
      ++count;
      continue;
    }
    if (observer_ != nullptr) observer_->on_driver_error(device_, "release", st);
    kept.push_back(h);
  }
  std::uint64_t released = count * page_size_;
  {
    std::lock_guard lock(mutex_);
    std::size_t back = (to_unmap - mapped.size()) + kept.size();  // still ours after all
    spare_pages_.insert(spare_pages_.end(), kept.begin(), kept.end());
    add_held(back * page_size_);
    stats_.pages += back;
    stats_.pages_unmapped -= count;
    releasing_bytes_ -= taken * page_size_;
    stats_.page_releases += count;
    if (count == 0) return 0;
    stats_.released_bytes += released;
    ++stats_.releases;
    ++stats_.releases_by_reason[static_cast<int>(reason)];
  }
  if (observer_ != nullptr) observer_->on_release(device_, reason, released, count);
  return released;
}

Status DevicePool::refresh_access() {
  if (page_size_ == 0) return Status::kOk;
  std::lock_guard release_lock(release_mutex_);
  std::vector<std::pair<std::uintptr_t, std::size_t>> runs;
  {
    std::lock_guard lock(mutex_);
    for (const auto& [base, s] : segments_)
      for (const Block* b = s->first; b != nullptr; b = b->next) {
        if (b->state == Block::State::kHole) continue;
        std::uintptr_t lo = round_down(b->addr, page_size_);
        std::uintptr_t hi = round_up(b->addr + b->size, page_size_);
        if (!runs.empty() && runs.back().first + runs.back().second >= lo) {
          runs.back().second = hi - runs.back().first;
        } else {
          runs.emplace_back(lo, hi - lo);
        }
      }
  }
  Status result = Status::kOk;
  for (const auto& [addr, size] : runs)
    if (Status st = backend_.set_access(device_, addr, size); st != Status::kOk) result = st;
  return result;
}

bool DevicePool::fence() {
  SyncGate::SyncPermit permit(gate_);
  if (!permit.allowed()) return false;
  return fence_with_permit();
}

// for_unmap: also when no block is pending but some became free without a fence (immediate
// reuse), since their pages are about to be unmapped.
bool DevicePool::fence_with_permit(bool for_unmap) {
  std::uint64_t target, generation;
  bool unfenced;
  {
    std::lock_guard lock(mutex_);
    for (ThreadCache* c : caches_) {  // the caches' frees so far are covered too
      std::lock_guard cache_lock(c->mutex);
      flush_pending(c, nullptr);
      if (c->unfenced) unfenced_frees_ = true;
      c->unfenced = false;
    }
    unfenced = unfenced_frees_;
    if (pending_head_ == nullptr && !(for_unmap && unfenced)) return true;
    target = pending_seq_;
    generation = generation_;
    unfenced_frees_ = false;  // the synchronisation covers every free made before it
  }
  Status st = backend_.synchronize(device_);
  if (!succeeded(st)) {
    if (observer_ != nullptr) observer_->on_driver_error(device_, "synchronize", st);
    std::lock_guard lock(mutex_);
    unfenced_frees_ = unfenced_frees_ || unfenced;
    return false;
  }
  std::lock_guard lock(mutex_);
  if (generation != generation_) return true;  // the device was reset meanwhile
  ++stats_.fences;
  while (pending_head_ != nullptr && pending_head_->pending_seq <= target) {
    Block* b = pending_head_;
    pending_head_ = b->pending_next;
    if (pending_head_ == nullptr) pending_tail_ = nullptr;
    stats_.pending -= b->size;
    make_free(b);
  }
  return true;
}

std::uint64_t DevicePool::release_idle(std::uint64_t keep_idle, ReleaseReason reason) {
  std::lock_guard release_lock(release_mutex_);
  SyncGate::SyncPermit permit(gate_);
  if (!permit.allowed()) return 0;
  return release_with_permit(keep_idle, reason);
}

std::uint64_t DevicePool::release_with_permit(std::uint64_t keep_idle, ReleaseReason reason) {
  if (page_size_ != 0) return release_pages_with_permit(keep_idle, reason);
  bool has_pending;
  {
    std::lock_guard lock(mutex_);
    drain_all();
    if (stats_.held - stats_.in_use <= keep_idle) return 0;
    has_pending = pending_head_ != nullptr;
  }
  if (has_pending) fence_with_permit();

  std::vector<Segment*> victims;
  {
    std::lock_guard lock(mutex_);
    std::vector<Segment*> candidates;
    for (auto& [base, s] : segments_)
      if (s->busy == 0) candidates.push_back(s);
    std::sort(candidates.begin(), candidates.end(),
              [](const Segment* a, const Segment* b) { return a->seq < b->seq; });
    std::uint64_t idle = stats_.held - stats_.in_use;
    for (Segment* s : candidates) {
      if (idle <= keep_idle) break;
      free_index(s->kind).erase(s->first);
      recycle_block(s->first);
      s->first = nullptr;
      segments_.erase(s->base);
      sub_held(s->size);
      --stats_.segments;
      free_segment_bytes_ -= s->size;
      releasing_bytes_ += s->size;
      idle -= s->size;
      victims.push_back(s);
    }
  }

  std::uint64_t released = 0, count = 0, victim_bytes = 0;
  for (Segment* s : victims) {
    victim_bytes += s->size;
    Status st = backend_.release(device_, reinterpret_cast<void*>(s->base));
    if (succeeded(st)) {
      released += s->size;
      ++count;
      delete s;
      continue;
    }
    if (observer_ != nullptr) observer_->on_driver_error(device_, "release", st);
    std::lock_guard lock(mutex_);  // keep the segment: it is still ours
    Block* b = new_block();
    b->addr = s->base;
    b->size = s->size;
    b->segment = s;
    s->first = b;
    segments_.emplace(s->base, s);
    free_index(s->kind).insert(b);
    add_held(s->size);
    ++stats_.segments;
    free_segment_bytes_ += s->size;
  }
  {
    std::lock_guard lock(mutex_);
    releasing_bytes_ -= victim_bytes;
    if (count == 0) return 0;
    stats_.driver_frees += count;
    stats_.released_bytes += released;
    ++stats_.releases;
    ++stats_.releases_by_reason[static_cast<int>(reason)];
  }
  if (observer_ != nullptr) observer_->on_release(device_, reason, released, count);
  return released;
}

void DevicePool::drop_all() {
  std::lock_guard release_lock(release_mutex_);
  if (page_size_ == 0) {
    std::lock_guard lock(mutex_);
    forget_all();
    return;
  }
  // A reset does not free pages or ranges (CUDA-FACTS 16): return them, once the device has
  // finished with them. The application's blocks die with the reset.
  if (Status st = backend_.synchronize(device_); !succeeded(st) && observer_ != nullptr)
    observer_->on_driver_error(device_, "synchronize", st);
  std::vector<PageAt> pages;
  std::vector<std::pair<std::uintptr_t, std::size_t>> ranges;
  {
    std::lock_guard lock(mutex_);
    for (auto& [base, s] : segments_) {
      for (std::size_t i = 0; i < s->pages.size(); ++i)
        if (s->pages[i] != 0) pages.push_back({s->base + i * page_size_, s->pages[i]});
      ranges.emplace_back(s->base, s->size);
    }
    for (PageHandle h : spare_pages_)
      pages.push_back({0, h});
    forget_all();
  }
  std::size_t unmapped = 0, released = 0;
  for (const PageAt& p : pages) {
    Status st = Status::kOk;
    if (p.addr != 0 && succeeded(st = backend_.unmap(device_, p.addr))) ++unmapped;
    if (succeeded(st) && succeeded(st = backend_.release_page(device_, p.handle))) ++released;
    if (!succeeded(st) && observer_ != nullptr) observer_->on_driver_error(device_, "release", st);
  }
  for (const auto& [base, size] : ranges)
    if (Status st = backend_.unreserve(device_, base, size); !succeeded(st) && observer_)
      observer_->on_driver_error(device_, "unreserve", st);
  std::lock_guard lock(mutex_);
  stats_.page_unmaps += unmapped;
  stats_.page_releases += released;
}

void DevicePool::forget_all() {
  for (auto& [base, s] : segments_) {
    for (Block* b = s->first; b != nullptr;) {
      Block* next = b->next;
      recycle_block(b);
      b = next;
    }
    delete s;
  }
  segments_.clear();
  live_.clear();
  for (auto& index : free_)
    index.clear();
  for (auto& index : holes_)
    index.clear();
  pending_head_ = pending_tail_ = nullptr;
  idle_head_ = idle_tail_ = nullptr;
  spare_pages_.clear();
  stats_.held = stats_.in_use = stats_.pending = 0;
  out_bytes_.store(0, std::memory_order_relaxed);
  held_bytes_.store(0, std::memory_order_relaxed);
  for (ThreadCache* c : caches_) {  // their blocks are gone with the segments
    std::lock_guard cache_lock(c->mutex);
    c->forget();
  }
  stats_.segments = stats_.live_blocks = 0;
  stats_.pages = stats_.pages_unmapped = 0;
  free_segment_bytes_ = 0;
  idle_page_bytes_ = 0;
  unfenced_frees_ = false;
  ++generation_;
}

// ---- queries ---------------------------------------------------------------------------------

Status DevicePool::check_ipc_base(void* ptr) const {
  auto addr = reinterpret_cast<std::uintptr_t>(ptr);
  std::lock_guard lock(mutex_);
  const Block* b = live_.find(addr);
  for (std::size_t i = 0; b == nullptr && i < caches_.size(); ++i) {
    std::lock_guard cache_lock(caches_[i]->mutex);
    b = caches_[i]->live.find(addr);
  }
  if (b != nullptr)
    return b->addr == b->segment->base && page_size_ == 0 ? Status::kOk : Status::kInvalidValue;
  return segment_containing(addr) != nullptr ? Status::kInvalidValue : Status::kNotOwned;
}

Status DevicePool::live_block_range(const void* ptr, void** base, std::size_t* size) const {
  auto addr = reinterpret_cast<std::uintptr_t>(ptr);
  std::lock_guard lock(mutex_);
  const Segment* s = segment_containing(addr);
  if (s == nullptr) return Status::kNotOwned;
  for (const Block* b = s->first; b != nullptr; b = b->next) {
    if (addr < b->addr || addr >= b->addr + b->size) continue;
    if (b->state != Block::State::kInUse || !handed_out(b)) return Status::kInvalidValue;
    *base = reinterpret_cast<void*>(b->addr);
    *size = b->size;
    return Status::kOk;
  }
  return Status::kInvalidValue;
}

PoolStats DevicePool::stats() const {
  std::lock_guard lock(mutex_);
  PoolStats s = stats_;
  // What the caches hold is idle (binned) or pending; what they handed out is in use. Each cache
  // changes only its own split while its lock is free, so the sum is one consistent state.
  for (ThreadCache* c : caches_) {
    std::lock_guard cache_lock(c->mutex);
    s.in_use -= c->held();
    s.live_blocks -= c->cached_blocks + c->pending_blocks;
    s.pending += c->pending_bytes;
    const std::uint64_t mallocs = c->mallocs.load(std::memory_order_relaxed);
    s.app_mallocs += mallocs;
    s.hits += mallocs;
    s.app_frees += c->frees.load(std::memory_order_relaxed);
  }
  s.peak_in_use = std::max(s.peak_in_use, s.in_use);
  if (page_size_ != 0) s.pages_mapped_idle = idle_page_bytes_ / page_size_;
  return s;
}

bool DevicePool::handed_out(const Block* b) const {
  if (live_.find(b->addr) == b) return true;
  for (ThreadCache* c : caches_) {
    std::lock_guard cache_lock(c->mutex);
    if (c->live.find(b->addr) == b) return true;
  }
  return false;
}

std::vector<SegmentView> DevicePool::segments() const {
  std::vector<SegmentView> out;
  std::lock_guard lock(mutex_);
  out.reserve(segments_.size());
  // The blocks the caches hold are in use to the pool: show them as what they are (stats()).
  std::vector<std::uintptr_t> binned, pending;
  for (ThreadCache* c : caches_) {
    std::lock_guard cache_lock(c->mutex);
    for (const ThreadCache::Bin& bin : c->bins)
      for (const Block* b = bin.head; b != nullptr; b = b->free_next)
        binned.push_back(b->addr);
    for (const Block* b = c->pending_head; b != nullptr; b = b->pending_next)
      pending.push_back(b->addr);
  }
  std::sort(binned.begin(), binned.end());
  std::sort(pending.begin(), pending.end());
  for (const auto& [base, seg] : segments_) {
    SegmentView view;
    view.base = seg->base;
    view.size = seg->size;
    view.kind = seg->kind;
    for (const Block* b = seg->first; b != nullptr; b = b->next) {
      SegmentView::BlockState state = SegmentView::BlockState::kFree;
      if (b->state == Block::State::kInUse) {
        state = SegmentView::BlockState::kInUse;
        if (std::binary_search(binned.begin(), binned.end(), b->addr))
          state = SegmentView::BlockState::kFree;
        if (std::binary_search(pending.begin(), pending.end(), b->addr))
          state = SegmentView::BlockState::kPending;
      }
      if (b->state == Block::State::kPending) state = SegmentView::BlockState::kPending;
      if (b->state == Block::State::kHole) state = SegmentView::BlockState::kHole;
      view.blocks.push_back({b->addr, b->size, state});
      if (b->state == Block::State::kFree && page_size_ != 0) view.pages_idle += whole_pages(b);
    }
    if (page_size_ != 0) {
      std::uint64_t mapped = 0;
      for (PageHandle h : seg->pages)
        mapped += h != 0;
      view.pages_idle /= page_size_;
      view.pages_in_use = mapped - view.pages_idle;
    }
    out.push_back(std::move(view));
  }
  return out;
}

void DevicePool::reset_peaks() {
  std::lock_guard lock(mutex_);
  stats_.peak_held = stats_.held;
  stats_.peak_in_use = stats_.in_use - caches_held();
}

Policy DevicePool::policy() const {
  std::lock_guard lock(mutex_);
  return policy_;
}

void DevicePool::set_policy(const Policy& policy) {
  std::lock_guard lock(mutex_);
  policy_ = policy;
  immediate_.store(policy.reuse == ReuseMode::kImmediate, std::memory_order_relaxed);
  wake_threshold_.store(policy.high_watermark, std::memory_order_relaxed);
}

std::uint64_t DevicePool::releasable_hint() const {
  std::lock_guard lock(mutex_);
  // What the caches hold returns to the pool at a release's start.
  const std::uint64_t cached = caches_held();
  if (page_size_ != 0)
    return idle_page_bytes_ + spare_pages_.size() * page_size_ + stats_.pending + cached;
  return free_segment_bytes_ + stats_.pending + cached;
}

}  // namespace cudapool
