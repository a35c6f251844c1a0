// Observability of the Shim: allocation stacks (CUDAPOOL_BACKTRACE), the `snapshot` command, the
// timeline (CUDAPOOL_TIMELINE_FILE) and the exit report (CUDAPOOL_REPORT_AT_EXIT). Everything here
// runs at start-up, on the control thread, on the timeline's thread or at exit, except
// record_stack/forget_stack, which the allocation path calls only when BACKTRACE is on.
#include <algorithm>
#include <bit>
#include <map>

#include "control/log.h"
#include "control/size.h"
#include "shim/backtrace.h"
#include "shim/shim.h"
#include "shim/timeline.h"

namespace cudapool {

struct Shim::Observability {
  StackUnwinder unwinder;
  StackTable stacks;
  LiveStacks live;
  std::string source;  // where stacks come from, for reports
  Timeline* timeline = nullptr;
};

namespace {

const char* kind_name(PoolKind kind) {
  switch (kind) {
    case PoolKind::kSmall:
      return "small";
    case PoolKind::kMedium:
      return "medium";
    case PoolKind::kLarge:
      return "large";
  }
  return "?";
}

// "blocks of (1MiB, 2MiB]": power-of-two size ranges, for blocks without a stack.
std::pair<std::uint64_t, std::string> size_range(std::uint64_t size) {
  const std::uint64_t hi = std::bit_ceil(std::max<std::uint64_t>(size, 1));
  const std::uint64_t lo = hi / 2;
  return {hi, "blocks of (" + format_size(lo) + ", " + format_size(hi) + "]"};
}

constexpr std::size_t kSymbolisedGroups = 200;  // groups beyond these keep their label only

}  // namespace

void Shim::start_observability() {
  Options options;
  {
    std::lock_guard lock(options_mutex_);
    options = options_;
  }
  const bool want_timeline = !options.timeline_file.empty();
  if (!options.backtrace.enabled && !want_timeline) return;  // nothing to set up
  auto* obs = new Observability;  // lives as long as the Shim: never deleted
  if (options.backtrace.enabled) {
    obs->source = obs->unwinder.load();
    // Warms the unwinder (libunwind caches per object) and proves it works, off the hot path.
    std::uintptr_t pcs[4];
    obs->unwinder.capture(pcs, 4);
    log_info("backtraces on for {} ({})",
             options.backtrace.min_size == 0
                 ? std::string("every block")
                 : "blocks of at least " + format_size(options.backtrace.min_size),
             obs->source);
  }
  observe_ = obs;
  if (options.backtrace.enabled)
    backtrace_min_ = std::max<std::uint64_t>(options.backtrace.min_size, 1);
  if (want_timeline) {
    obs->timeline = Timeline::start(options.timeline_file, options.timeline_ms, [this] {
      std::vector<TimelineSample> samples;
      const int slots = pool_slots_.load(std::memory_order_acquire);
      for (int d = 0; d < slots; ++d)
        if (DevicePool* pool = existing_pool(d)) samples.push_back({d, pool->stats()});
      return samples;
    });
  }
}

void Shim::record_stack(void* ptr, std::size_t size) {
  Observability* obs = observe_;
  if (obs == nullptr) return;
  std::uintptr_t pcs[kMaxStackFrames];
  const int n = obs->unwinder.capture(pcs, kMaxStackFrames);
  obs->live.insert(ptr, LiveBlock{obs->stacks.intern(pcs, n), size});
}

void Shim::forget_stack(void* ptr) {
  if (Observability* obs = observe_) obs->live.erase(ptr);
}

bool Shim::snapshot(Snapshot* out, std::string* error) {
  (void)error;
  out->pid = pid();
  out->command = process_name();
  Observability* obs = observe_;
  const bool stacks_on = backtrace_min_ != kNoBacktrace && obs != nullptr;
  if (!stacks_on) {
    out->backtraces = "off (CUDAPOOL_BACKTRACE=on records allocation stacks)";
  } else if (backtrace_min_ > 1) {
    out->backtraces =
        "on for blocks of at least " + format_size(backtrace_min_) + ", " + obs->source;
  } else {
    out->backtraces = "on, " + obs->source;
  }
  out->by_stack = stacks_on;

  // Block address -> stack id, for the blocks that have one.
  std::unordered_map<std::uintptr_t, std::uint32_t> stack_of;
  if (stacks_on)
    for (const auto& [addr, block] : obs->live.all())
      stack_of.emplace(addr, block.stack);

  // Groups: by stack id (key = id), else by size range (key = 2^63 + upper bound).
  struct Group {
    SnapshotGroup group;
    std::uint32_t stack = 0;
  };
  std::map<std::uint64_t, Group> groups;
  const int slots = pool_slots_.load(std::memory_order_acquire);
  for (int d = 0; d < slots; ++d) {
    DevicePool* pool = existing_pool(d);
    if (pool == nullptr) continue;
    SnapshotDevice dev;
    dev.device = d;
    // Segments first, then stats: a block allocated in between is counted in the stats only.
    const std::vector<SegmentView> segments = pool->segments();
    dev.stats = pool->stats();
    for (const SegmentView& seg : segments) {
      SnapshotSegment s;
      s.base = seg.base;
      s.size = seg.size;
      s.kind = kind_name(seg.kind);
      s.pages_in_use = seg.pages_in_use;
      s.pages_idle = seg.pages_idle;
      for (const SegmentView::BlockView& b : seg.blocks) {
        char state = '.';
        if (b.state == SegmentView::BlockState::kInUse) state = '#';
        if (b.state == SegmentView::BlockState::kPending) state = 'p';
        if (b.state == SegmentView::BlockState::kHole) state = '_';
        s.ranges.push_back({b.addr - seg.base, b.size, state});
        if (state != '#') continue;
        std::uint32_t stack = 0;
        if (auto it = stack_of.find(b.addr); it != stack_of.end()) stack = it->second;
        std::uint64_t key = stack;
        std::string label;
        if (stack == 0) {
          auto [hi, text] = size_range(b.size);
          key = (std::uint64_t{1} << 63) + hi;
          label = stacks_on ? text + ", no stack" : text;
        }
        Group& g = groups[key];
        g.stack = stack;
        if (g.group.label.empty())
          g.group.label = stack != 0 ? "stack " + std::to_string(stack) : label;
        g.group.bytes += b.size;
        ++g.group.count;
      }
      dev.segments.push_back(std::move(s));
    }
    out->devices.push_back(std::move(dev));
  }
  for (auto& [key, g] : groups)
    out->groups.push_back(g.group);
  std::vector<std::uint32_t> ids;
  for (auto& [key, g] : groups)
    ids.push_back(g.stack);
  // Largest first; symbolise the ones a report can show.
  std::vector<std::size_t> order(out->groups.size());
  for (std::size_t i = 0; i < order.size(); ++i)
    order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return out->groups[a].bytes > out->groups[b].bytes;
  });
  std::vector<SnapshotGroup> sorted;
  Symbolizer symbolizer;
  for (std::size_t rank = 0; rank < order.size(); ++rank) {
    SnapshotGroup g = std::move(out->groups[order[rank]]);
    const std::uint32_t id = ids[order[rank]];
    if (id != 0 && stacks_on && rank < kSymbolisedGroups) {
      for (std::uintptr_t pc : obs->stacks.frames(id))
        g.frames.push_back(symbolizer.describe(pc));
      if (!g.frames.empty()) {
        const std::size_t cut = g.frames[0].rfind(" (");
        g.label = g.frames[0].substr(0, cut);
      }
    }
    sorted.push_back(std::move(g));
  }
  out->groups = std::move(sorted);
  return true;
}

void Shim::finish_observability() {
  Options options;
  {
    std::lock_guard lock(options_mutex_);
    options = options_;
  }
  if (observe_ != nullptr && observe_->timeline != nullptr) observe_->timeline->stop();
  if (!options.report_at_exit) return;
  try {
    Snapshot snap;
    std::string why;
    snapshot(&snap, &why);
    log_info("exit report of pid {} ({}):", snap.pid, snap.command);
    for (const SnapshotDevice& d : snap.devices) {
      const PoolStats& s = d.stats;
      const double hit_rate =
          s.app_mallocs == 0 ? 0.0 : 100.0 * static_cast<double>(s.hits) / s.app_mallocs;
      log_info(
          "  device {}: peak held {}, peak in use {}; cudaMalloc {} (hits {}, {:.1f}%), cudaFree "
          "{}; driver mallocs {}, frees {}{}; fences {}; releases {} ({} returned; watermark {}, "
          "idle {}, pressure {}, limit {}, oom {}, trim {}); oom retries {}, limit hits {}; still "
          "in use {} in {} blocks",
          d.device, format_size(s.peak_held), format_size(s.peak_in_use), s.app_mallocs, s.hits,
          hit_rate, s.app_frees, s.driver_mallocs, s.driver_frees,
          s.page_size == 0
              ? std::string()
              : fmt::format("; pages of {}: {} held, {} created, {} released, {} "
                            "mapped, {} unmapped, {} moved",
                            format_size(s.page_size), s.pages, s.page_creates, s.page_releases,
                            s.page_maps, s.page_unmaps, s.page_remaps),
          s.fences, s.releases, format_size(s.released_bytes), s.releases_by_reason[0],
          s.releases_by_reason[1], s.releases_by_reason[2], s.releases_by_reason[3],
          s.releases_by_reason[4], s.releases_by_reason[5], s.oom_retries, s.limit_hits,
          format_size(s.in_use), s.live_blocks);
    }
    if (snap.groups.empty()) {
      log_info("  no block was left unfreed");
      return;
    }
    log_info("  blocks never freed, by {} (largest first; backtraces {}):",
             snap.by_stack ? "allocation stack" : "size", snap.backtraces);
    constexpr std::size_t kShown = 20;
    for (std::size_t i = 0; i < snap.groups.size() && i < kShown; ++i) {
      const SnapshotGroup& g = snap.groups[i];
      log_info("  #{} {} in {} block(s): {}", i + 1, format_size(g.bytes), g.count, g.label);
      for (const std::string& frame : g.frames)
        log_info("       at {}", frame);
    }
    if (snap.groups.size() > kShown) log_info("  ... {} more groups", snap.groups.size() - kShown);
  } catch (...) {
    log_warn("exit report: internal error");
  }
}

}  // namespace cudapool
