#include "control/snapshot.h"

#include <algorithm>
#include <cstdio>
#include <string_view>

#include "control/size.h"
#include "control/stats_format.h"

namespace cudapool {
namespace {

std::string hex(std::uintptr_t value) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%zx", static_cast<std::size_t>(value));
  return buf;
}

struct SegmentTotals {
  std::uint64_t in_use = 0, free = 0, pending = 0;
};

SegmentTotals totals_of(const SnapshotSegment& s) {
  SegmentTotals t;
  for (const SnapshotRange& r : s.ranges) {
    if (r.state == '#') t.in_use += r.size;
    if (r.state == 'p') t.pending += r.size;
    if (r.state == '.') t.free += r.size;
  }
  return t;
}

}  // namespace

std::string segment_map(const SnapshotSegment& segment, std::size_t width) {
  if (segment.size == 0 || width == 0) return "";
  std::string map(width, ' ');
  std::size_t r = 0;
  for (std::size_t cell = 0; cell < width; ++cell) {
    const std::uint64_t lo = segment.size * cell / width;
    const std::uint64_t hi = segment.size * (cell + 1) / width;
    std::uint64_t in_use = 0, pending = 0, free = 0, unmapped = 0;
    while (r < segment.ranges.size() && segment.ranges[r].offset + segment.ranges[r].size <= lo)
      ++r;
    for (std::size_t k = r; k < segment.ranges.size() && segment.ranges[k].offset < hi; ++k) {
      const SnapshotRange& range = segment.ranges[k];
      const std::uint64_t a = std::max(lo, range.offset);
      const std::uint64_t b = std::min(hi, range.offset + range.size);
      if (b <= a) continue;
      if (range.state == '#') in_use += b - a;
      if (range.state == 'p') pending += b - a;
      if (range.state == '.') free += b - a;
      if (range.state == '_') unmapped += b - a;
    }
    // Any in-use byte shows: a small live block must not vanish from the picture.
    if (in_use > 0 && in_use >= free / 64) {
      map[cell] = '#';
    } else if (pending >= free && pending > 0) {
      map[cell] = 'p';
    } else if (unmapped > free) {
      map[cell] = '_';
    } else {
      map[cell] = '.';
    }
  }
  return map;
}

std::string format_snapshot_text(const Snapshot& s, std::size_t top, std::size_t max_segments) {
  std::string out;
  out += "cudapool snapshot of pid " + std::to_string(s.pid);
  if (!s.command.empty()) out += " (" + s.command + ")";
  out += "; backtraces " + s.backtraces + "\n";
  std::uint64_t total = 0, blocks = 0;
  for (const SnapshotGroup& g : s.groups) {
    total += g.bytes;
    blocks += g.count;
  }
  out += "\nin use: " + short_size(total) + " in " + std::to_string(blocks) + " blocks, by " +
         (s.by_stack ? "allocation stack" : "block size") + " (largest first";
  if (s.groups.size() > top)
    out += ", top " + std::to_string(top) + " of " + std::to_string(s.groups.size());
  out += ")\n";
  for (std::size_t i = 0; i < s.groups.size() && i < top; ++i) {
    const SnapshotGroup& g = s.groups[i];
    char line[160];
    std::snprintf(line, sizeof line, "#%-3zu %12s %6llu blocks  %s\n", i + 1,
                  short_size(g.bytes).c_str(), static_cast<unsigned long long>(g.count),
                  g.label.c_str());
    out += line;
    for (const std::string& frame : g.frames)
      out += "       at " + frame + "\n";
  }
  for (const SnapshotDevice& d : s.devices) {
    const PoolStats& st = d.stats;
    out += "\ndevice " + std::to_string(d.device) + ": held " + short_size(st.held) + ", in use " +
           short_size(st.in_use) + ", idle " + short_size(st.idle()) + " (free " +
           short_size(st.idle() - std::min(st.idle(), st.pending)) + ", pending " +
           short_size(st.pending) + "), " + std::to_string(d.segments.size()) +
           (st.page_size != 0 ? " address ranges" : " segments");
    if (st.page_size != 0)
      out += ", " + std::to_string(st.pages) + " pages of " + short_size(st.page_size) + " (" +
             std::to_string(st.pages_mapped_idle) + " mapped idle, " +
             std::to_string(st.pages_unmapped) + " unmapped)";
    out += "\n";
    if (d.segments.empty()) continue;
    out += "  map: # in use, . free (idle), p pending (freed, waiting for a fence)";
    out += st.page_size != 0 ? ", _ no pages mapped\n" : "\n";
    std::size_t shown = 0;
    for (const SnapshotSegment& seg : d.segments) {
      if (shown == max_segments) {
        std::uint64_t rest = 0;
        for (std::size_t k = shown; k < d.segments.size(); ++k)
          rest += d.segments[k].size;
        out += "  ... " + std::to_string(d.segments.size() - shown) + " more segments (" +
               short_size(rest) + ")\n";
        break;
      }
      ++shown;
      const SegmentTotals t = totals_of(seg);
      char line[256];
      std::snprintf(line, sizeof line, "  %-14s %10s %-6s [%s] in use %s", hex(seg.base).c_str(),
                    short_size(seg.size).c_str(), seg.kind.c_str(), segment_map(seg, 48).c_str(),
                    short_size(t.in_use).c_str());
      out += line;
      if (st.page_size != 0)
        out += ", pages " + std::to_string(seg.pages_in_use) + " in use + " +
               std::to_string(seg.pages_idle) + " idle";
      out += "\n";
    }
  }
  return out;
}

std::string format_snapshot_json(const Snapshot& s, std::size_t top) {
  std::string out = "{\"pid\":" + std::to_string(s.pid) + ",\"command\":";
  append_json_string(&out, s.command);
  out += ",\"backtraces\":";
  append_json_string(&out, s.backtraces);
  out += ",\"grouping\":";
  out += s.by_stack ? "\"stack\"" : "\"size\"";
  out += ",\"groups\":[";
  for (std::size_t i = 0; i < s.groups.size() && i < top; ++i) {
    const SnapshotGroup& g = s.groups[i];
    if (i > 0) out += ',';
    out += "{\"bytes\":" + std::to_string(g.bytes) + ",\"count\":" + std::to_string(g.count) +
           ",\"label\":";
    append_json_string(&out, g.label);
    out += ",\"frames\":[";
    for (std::size_t k = 0; k < g.frames.size(); ++k) {
      if (k > 0) out += ',';
      append_json_string(&out, g.frames[k]);
    }
    out += "]}";
  }
  out += "],\"devices\":[";
  for (std::size_t i = 0; i < s.devices.size(); ++i) {
    const SnapshotDevice& d = s.devices[i];
    if (i > 0) out += ',';
    out += "{\"device\":" + std::to_string(d.device) + ",\"held\":" + std::to_string(d.stats.held) +
           ",\"in_use\":" + std::to_string(d.stats.in_use) +
           ",\"idle\":" + std::to_string(d.stats.idle()) +
           ",\"pending\":" + std::to_string(d.stats.pending) +
           ",\"page_size\":" + std::to_string(d.stats.page_size) +
           ",\"pages\":" + std::to_string(d.stats.pages) + ",\"segments\":[";
    for (std::size_t k = 0; k < d.segments.size(); ++k) {
      const SnapshotSegment& seg = d.segments[k];
      const SegmentTotals t = totals_of(seg);
      if (k > 0) out += ',';
      out += "{\"base\":\"" + hex(seg.base) + "\",\"size\":" + std::to_string(seg.size) +
             ",\"kind\":\"" + seg.kind + "\",\"in_use\":" + std::to_string(t.in_use) +
             ",\"free\":" + std::to_string(t.free) + ",\"pending\":" + std::to_string(t.pending) +
             ",\"map\":\"" + segment_map(seg, 64) + "\"";
      if (d.stats.page_size != 0)
        out += ",\"pages_in_use\":" + std::to_string(seg.pages_in_use) +
               ",\"pages_idle\":" + std::to_string(seg.pages_idle) + ",\"pages_unmapped\":" +
               std::to_string(seg.size / d.stats.page_size - seg.pages_in_use - seg.pages_idle);
      out += ",\"ranges\":[";
      for (std::size_t r = 0; r < seg.ranges.size(); ++r) {
        if (r > 0) out += ',';
        out += "[" + std::to_string(seg.ranges[r].offset) + "," +
               std::to_string(seg.ranges[r].size) + ",\"" + seg.ranges[r].state + "\"]";
      }
      out += "]}";
    }
    out += "]}";
  }
  out += "]}\n";
  return out;
}

}  // namespace cudapool
