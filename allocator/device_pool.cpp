#include "allocator/device_pool.h"

#include <algorithm>
#include <vector>

namespace cudapool {

namespace {
bool succeeded(Status s) {
  return s == Status::kOk || s == Status::kUnloading;
}
}  // namespace

DevicePool::DevicePool(int device, Backend& backend, SyncGate& gate, const Policy& policy,
                       PoolObserver* observer)
    : device_(device),
      backend_(backend),
      gate_(gate),
      observer_(observer),
      policy_(policy),
      wake_threshold_(policy.high_watermark) {}

DevicePool::~DevicePool() {
  // Only metadata: the memory itself stays with the driver (the shim never destroys its pools).
  drop_all();
  while (spare_blocks_ != nullptr) {
    Block* next = spare_blocks_->next;
    delete spare_blocks_;
    spare_blocks_ = next;
  }
}

// ---- hot path -------------------------------------------------------------------------------

// A pool hit: one mutex, one best-fit lookup, one hash insert; no driver call, no system call,
// no host allocation in steady state.
Status DevicePool::allocate(std::size_t size, void** ptr) {
  std::size_t rounded = round_request(size);
  if (rounded == 0) {
    std::lock_guard lock(mutex_);
    ++stats_.alloc_failures;
    return Status::kOutOfMemory;
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

Status DevicePool::free(void* ptr, bool* wake_releaser) {
  auto addr = reinterpret_cast<std::uintptr_t>(ptr);
  std::lock_guard lock(mutex_);
  Block* b = live_.find(addr);
  if (b == nullptr) {
    if (segment_containing(addr) == nullptr) return Status::kNotOwned;
    ++stats_.invalid_frees;
    return Status::kInvalidValue;
  }
  live_.erase(addr);
  stats_.in_use -= b->size;
  --stats_.live_blocks;
  ++stats_.app_frees;
  // During a capture the block waits for a fence even in immediate mode: the capture may have
  // recorded work that uses it.
  if (policy_.reuse == ReuseMode::kImmediate && !gate_.capture_active()) {
    make_free(b);
  } else {
    b->state = Block::State::kPending;
    b->pending_seq = ++pending_seq_;
    b->pending_next = nullptr;
    if (pending_tail_ != nullptr) {
      pending_tail_->pending_next = b;
    } else {
      pending_head_ = b;
    }
    pending_tail_ = b;
    stats_.pending += b->size;
  }
  if (stats_.held - stats_.in_use > wake_threshold_.load(std::memory_order_relaxed))
    *wake_releaser = true;
  return Status::kOk;
}

// ---- block bookkeeping (mutex_ held) --------------------------------------------------------

DevicePool::Block* DevicePool::take_free_block(PoolKind kind, std::size_t rounded) {
  std::size_t max_size = kind == PoolKind::kLarge ? largest_acceptable_fit(rounded) : SIZE_MAX;
  Block* b = free_index(kind).take_best_fit(rounded, max_size);
  return b != nullptr ? carve(b, rounded) : nullptr;
}

// Hands out the front of free block `b` (not in any index), returning the rest to the index.
DevicePool::Block* DevicePool::carve(Block* b, std::size_t rounded) {
  Segment* s = b->segment;
  if (s->kind != PoolKind::kLarge && b->size - rounded >= kAlignment) {
    Block* rest = new_block();
    rest->addr = b->addr + rounded;
    rest->size = b->size - rounded;
    rest->segment = s;
    rest->prev = b;
    rest->next = b->next;
    rest->state = Block::State::kFree;
    if (b->next != nullptr) b->next->prev = rest;
    b->next = rest;
    b->size = rounded;
    free_index(s->kind).insert(rest);
  }
  if (s->busy == 0) free_segment_bytes_ -= s->size;
  s->busy += b->size;
  b->state = Block::State::kInUse;
  live_.insert(b->addr, b);
  stats_.in_use += b->size;
  ++stats_.live_blocks;
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
  if (s->busy == 0) free_segment_bytes_ += s->size;
  b->state = Block::State::kFree;
  FreeIndex<Block>& index = free_index(s->kind);
  if (Block* prev = b->prev; prev != nullptr && prev->state == Block::State::kFree) {
    index.erase(prev);
    prev->size += b->size;
    prev->next = b->next;
    if (b->next != nullptr) b->next->prev = prev;
    recycle_block(b);
    b = prev;
  }
  if (Block* next = b->next; next != nullptr && next->state == Block::State::kFree) {
    index.erase(next);
    b->size += next->size;
    b->next = next->next;
    if (next->next != nullptr) next->next->prev = b;
    recycle_block(next);
  }
  index.insert(b);
}

DevicePool::Block* DevicePool::new_block() {
  if (spare_blocks_ == nullptr) return new Block();
  Block* b = spare_blocks_;
  spare_blocks_ = b->next;
  *b = Block();
  return b;
}

void DevicePool::recycle_block(Block* b) {
  b->next = spare_blocks_;
  spare_blocks_ = b;
}

const DevicePool::Segment* DevicePool::segment_containing(std::uintptr_t addr) const {
  auto it = segments_.upper_bound(addr);
  if (it == segments_.begin()) return nullptr;
  --it;
  const Segment* s = it->second;
  return addr < s->base + s->size ? s : nullptr;
}

void DevicePool::note_peaks() {
  stats_.peak_held = std::max(stats_.peak_held, stats_.held);
  stats_.peak_in_use = std::max(stats_.peak_in_use, stats_.in_use);
}

// ---- slow paths ------------------------------------------------------------------------------

// A miss: fence if enough memory is pending, respect the limit, grow, and on out-of-memory
// release idle memory and retry before failing.
Status DevicePool::allocate_slow(PoolKind kind, std::size_t rounded, void** ptr) {
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
    pending = stats_.pending;
  }
  // A fence is one device synchronisation for many blocks; growing is a driver call and more
  // memory. Fence once enough is pending that the synchronisation pays for itself: a segment's
  // worth, and for small and medium blocks at least kFenceBatch (a synchronisation costs
  // microseconds, or waits for the device's queued work: it must stay rare on the hot path).
  std::uint64_t fence_at =
      std::max<std::uint64_t>(segment_size, kind == PoolKind::kLarge ? 0 : kFenceBatch);
  if (pending >= fence_at && fence() && try_take()) return Status::kOk;

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
  stats_.held += segment_size;
  ++stats_.segments;
  ++stats_.driver_mallocs;
  free_segment_bytes_ += segment_size;
  carve(b, rounded);
  *ptr = base;
  return Status::kOk;
}

bool DevicePool::fence() {
  SyncGate::SyncPermit permit(gate_);
  if (!permit.allowed()) return false;
  return fence_with_permit();
}

bool DevicePool::fence_with_permit() {
  std::uint64_t target, generation;
  {
    std::lock_guard lock(mutex_);
    if (pending_head_ == nullptr) return true;
    target = pending_seq_;
    generation = generation_;
  }
  Status st = backend_.synchronize(device_);
  if (!succeeded(st)) {
    if (observer_ != nullptr) observer_->on_driver_error(device_, "synchronize", st);
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
  bool has_pending;
  {
    std::lock_guard lock(mutex_);
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
      stats_.held -= s->size;
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
    stats_.held += s->size;
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
  std::lock_guard lock(mutex_);
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
  pending_head_ = pending_tail_ = nullptr;
  stats_.held = stats_.in_use = stats_.pending = 0;
  stats_.segments = stats_.live_blocks = 0;
  free_segment_bytes_ = 0;
  ++generation_;
}

// ---- queries ---------------------------------------------------------------------------------

Status DevicePool::check_ipc_base(void* ptr) const {
  auto addr = reinterpret_cast<std::uintptr_t>(ptr);
  std::lock_guard lock(mutex_);
  if (const Block* b = live_.find(addr); b != nullptr)
    return b->addr == b->segment->base ? Status::kOk : Status::kInvalidValue;
  return segment_containing(addr) != nullptr ? Status::kInvalidValue : Status::kNotOwned;
}

PoolStats DevicePool::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

std::vector<SegmentView> DevicePool::segments() const {
  std::vector<SegmentView> out;
  std::lock_guard lock(mutex_);
  out.reserve(segments_.size());
  for (const auto& [base, seg] : segments_) {
    SegmentView view;
    view.base = seg->base;
    view.size = seg->size;
    view.kind = seg->kind;
    for (const Block* b = seg->first; b != nullptr; b = b->next) {
      SegmentView::BlockState state = SegmentView::BlockState::kFree;
      if (b->state == Block::State::kInUse) state = SegmentView::BlockState::kInUse;
      if (b->state == Block::State::kPending) state = SegmentView::BlockState::kPending;
      view.blocks.push_back({b->addr, b->size, state});
    }
    out.push_back(std::move(view));
  }
  return out;
}

void DevicePool::reset_peaks() {
  std::lock_guard lock(mutex_);
  stats_.peak_held = stats_.held;
  stats_.peak_in_use = stats_.in_use;
}

Policy DevicePool::policy() const {
  std::lock_guard lock(mutex_);
  return policy_;
}

void DevicePool::set_policy(const Policy& policy) {
  std::lock_guard lock(mutex_);
  policy_ = policy;
  wake_threshold_.store(policy.high_watermark, std::memory_order_relaxed);
}

std::uint64_t DevicePool::releasable_hint() const {
  std::lock_guard lock(mutex_);
  return free_segment_bytes_ + stats_.pending;
}

}  // namespace cudapool
