// The `snapshot` report: who holds the GPU memory (live bytes grouped by allocation stack, or by
// size when backtraces are off) and how each device's segments are laid out (a text map of in-use,
// idle and pending ranges: the fragmentation picture). Data and formatting only; the shim fills a
// Snapshot (shim/observability.cpp), the pipe's `snapshot` command formats it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "allocator/types.h"

namespace cudapool {

// Live blocks that share an allocation stack (or a size range, without backtraces).
struct SnapshotGroup {
  std::uint64_t bytes = 0;          // block sizes as the pool counts them (in use)
  std::uint64_t count = 0;          // live blocks
  std::string label;                // "stack 3", "blocks of (1MiB, 2MiB]", ...
  std::vector<std::string> frames;  // innermost first, symbolised; empty without a stack
};

struct SnapshotRange {
  std::uint64_t offset = 0;  // from the segment's base
  std::uint64_t size = 0;
  // '#' in use, '.' free (idle), 'p' pending (freed, waiting for a fence), '_' unmapped (pages)
  char state = '.';
};

struct SnapshotSegment {
  std::uintptr_t base = 0;
  std::uint64_t size = 0;
  std::string kind;                   // small, medium, large
  std::vector<SnapshotRange> ranges;  // in address order, tiling the segment
  // With pages (DeviceStats::page_size != 0) the segment is an address range: its mapped pages
  // that live or pending blocks touch, its mapped pages wholly free; the rest are unmapped.
  std::uint64_t pages_in_use = 0;
  std::uint64_t pages_idle = 0;
};

struct SnapshotDevice {
  int device = 0;
  PoolStats stats;
  std::vector<SnapshotSegment> segments;
};

struct Snapshot {
  int pid = 0;
  std::string command;
  std::string backtraces;  // "off", "on (libunwind)", "on for blocks >= 1MiB (libunwind)", ...
  bool by_stack = false;   // groups are allocation stacks (else size ranges)
  std::vector<SnapshotGroup> groups;  // largest first
  std::vector<SnapshotDevice> devices;
};

// Text for people: the top `top` groups with their stacks, then per device the totals and one map
// line per segment (at most `max_segments` per device). Ends with a newline.
std::string format_snapshot_text(const Snapshot& snapshot, std::size_t top,
                                 std::size_t max_segments = 64);
// One JSON object (top groups, every segment with its ranges and map), newline-terminated.
std::string format_snapshot_json(const Snapshot& snapshot, std::size_t top);

// A segment's map: `width` cells, each showing the state that covers most of its bytes.
std::string segment_map(const SnapshotSegment& segment, std::size_t width);

}  // namespace cudapool
