// Allocation traces: the CSV format the benchmarks replay and the recorder writes, and the
// generators of the standard workloads.
//
// Format (one event per line; docs/benchmarks.md has the full description):
//   thread,time_us,action,id,size[,device]
//     thread   integer, the thread that made the call (kept for the record; replays run the events
//              in time order)
//     time_us  integer microseconds since the start of the trace, non-decreasing
//     action   alloc | free | mark
//     id       a token naming the allocation (the recorder writes the pointer, 0x7f...); a free
//              names the id of an earlier alloc. For mark: the label of a point in time
//              ("after-burst") at which replays report what is held
//     size     bytes requested (alloc); ignored for free and mark (0)
//     device   optional, default 0
// Blank lines, lines starting with '#' and a header line starting with "thread" are skipped.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

namespace cudapool::bench {

enum class Action : std::uint8_t { kAlloc, kFree, kMark };

struct TraceEvent {
  std::uint32_t thread = 0;
  std::uint64_t time_us = 0;
  Action action = Action::kAlloc;
  std::uint32_t id = 0;    // dense index assigned at parse time (0 .. ids - 1)
  std::uint64_t size = 0;  // alloc: bytes
  int device = 0;
  std::uint32_t label = 0;  // mark: index into Trace::labels
};

struct Trace {
  std::string name;
  std::vector<TraceEvent> events;
  std::vector<std::string> labels;  // mark labels
  std::uint32_t ids = 0;            // distinct allocation ids
  std::uint64_t end_us = 0;         // time of the last event
  int devices = 1;                  // 1 + highest device
  // Recorded traces of multi-threaded programs can show an address handed out again just before
  // its free (two threads racing to log): such an alloc frees the live one first, and a free of an
  // id that is not live is dropped. Counted here.
  std::uint64_t repaired = 0;
};

// Parses CSV text. False with "line N: reason" in *error on the first bad line. A free takes the
// device of its alloc.
bool parse_trace(std::istream& in, Trace* out, std::string* error);
bool load_trace(const std::string& path, Trace* out, std::string* error);
// Writes the trace as CSV with a header line; ids are written as a<index>.
void write_trace(const Trace& trace, std::ostream& out);

// The generated workloads (fixed seed: the same arguments give the same trace):
//   burst        DESIGN §1: load weights, one request with batch 4, then batches of 1, then quiet
//   transformer  text generation: variable prompt lengths, a KV cache that grows per token
//   cnn          an image-classification server with a mix of batch sizes
//   churn        steady random allocations and frees, constant live set
// `scale` (0 < scale <= 1) shortens the long workloads for --quick (fewer requests/operations).
const std::vector<std::string>& generator_names();
bool generate_trace(const std::string& name, std::uint64_t seed, double scale, Trace* out,
                    std::string* error);

}  // namespace cudapool::bench
