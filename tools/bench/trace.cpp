#include "tools/bench/trace.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <istream>
#include <ostream>
#include <random>
#include <string_view>
#include <unordered_map>

namespace cudapool::bench {

namespace {

constexpr std::uint64_t kKiB = 1024;
constexpr std::uint64_t kMiB = 1024 * kKiB;

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

template <typename T>
bool parse_uint(std::string_view s, T* out) {
  s = trim(s);
  if (s.empty()) return false;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && end == s.data() + s.size();
}

}  // namespace

bool parse_trace(std::istream& in, Trace* out, std::string* error) {
  Trace t;
  std::unordered_map<std::string, std::uint32_t> ids;  // live ids -> dense index
  std::unordered_map<std::string, std::uint32_t> labels;
  std::vector<int> devices;  // per dense id
  std::string line;
  std::uint64_t line_no = 0;
  std::uint64_t last_time = 0;
  auto fail = [&](const std::string& why) {
    if (error != nullptr) *error = "line " + std::to_string(line_no) + ": " + why;
    return false;
  };
  while (std::getline(in, line)) {
    ++line_no;
    std::string_view l = trim(line);
    if (l.empty() || l.front() == '#' || l.starts_with("thread")) continue;
    std::string_view f[7];
    int n = 0;
    while (n < 7) {
      std::size_t comma = l.find(',');
      f[n++] = trim(l.substr(0, comma));
      if (comma == std::string_view::npos) break;
      l.remove_prefix(comma + 1);
    }
    if (n < 5 || n > 6) return fail("expected thread,time_us,action,id,size[,device]");
    TraceEvent e;
    if (!parse_uint(f[0], &e.thread)) return fail("bad thread '" + std::string(f[0]) + "'");
    if (!parse_uint(f[1], &e.time_us)) return fail("bad time_us '" + std::string(f[1]) + "'");
    if (e.time_us < last_time) return fail("time_us goes backwards");
    last_time = e.time_us;
    if (f[3].empty()) return fail("empty id");
    if (!parse_uint(f[4], &e.size)) return fail("bad size '" + std::string(f[4]) + "'");
    if (n == 6) {
      unsigned d = 0;
      if (!parse_uint(f[5], &d) || d > 1023) return fail("bad device '" + std::string(f[5]) + "'");
      e.device = static_cast<int>(d);
    }
    std::string id(f[3]);
    if (f[2] == "alloc") {
      e.action = Action::kAlloc;
      if (e.size == 0) return fail("alloc of size 0");
      if (auto live = ids.find(id); live != ids.end()) {
        TraceEvent implicit_free = e;
        implicit_free.action = Action::kFree;
        implicit_free.id = live->second;
        implicit_free.device = devices[live->second];
        t.events.push_back(implicit_free);
        ids.erase(live);
        ++t.repaired;
      }
      e.id = t.ids++;
      devices.push_back(e.device);
      ids.emplace(id, e.id);
    } else if (f[2] == "free") {
      e.action = Action::kFree;
      auto it = ids.find(id);
      if (it == ids.end()) {
        ++t.repaired;
        continue;
      }
      e.id = it->second;
      e.device = devices[e.id];
      ids.erase(it);
    } else if (f[2] == "mark") {
      e.action = Action::kMark;
      auto [it, added] = labels.emplace(id, static_cast<std::uint32_t>(t.labels.size()));
      if (added) t.labels.push_back(id);
      e.label = it->second;
    } else {
      return fail("bad action '" + std::string(f[2]) + "' (alloc, free or mark)");
    }
    t.devices = std::max(t.devices, e.device + 1);
    t.end_us = e.time_us;
    t.events.push_back(e);
  }
  if (in.bad()) return fail("read error");
  t.name = out->name;
  *out = std::move(t);
  return true;
}

bool load_trace(const std::string& path, Trace* out, std::string* error) {
  std::ifstream in(path);
  if (!in) {
    if (error != nullptr) *error = "cannot open " + path;
    return false;
  }
  std::string name = path.substr(path.find_last_of('/') + 1);
  if (std::size_t dot = name.rfind('.'); dot != std::string::npos && dot > 0) name.resize(dot);
  out->name = name;
  if (!parse_trace(in, out, error)) {
    if (error != nullptr) *error = path + ": " + *error;
    return false;
  }
  return true;
}

void write_trace(const Trace& trace, std::ostream& out) {
  out << "thread,time_us,action,id,size,device\n";
  std::vector<std::uint64_t> sizes(trace.ids, 0);
  for (const TraceEvent& e : trace.events) {
    out << e.thread << ',' << e.time_us << ',';
    switch (e.action) {
      case Action::kAlloc:
        out << "alloc,a" << e.id << ',' << e.size;
        break;
      case Action::kFree:
        out << "free,a" << e.id << ",0";
        break;
      case Action::kMark:
        out << "mark," << trace.labels[e.label] << ",0";
        break;
    }
    out << ',' << e.device << '\n';
  }
}

// ---- generators -------------------------------------------------------------------------------

namespace {

// Appends events in time order; ids are dense from 0.
class Builder {
 public:
  explicit Builder(Trace* t) : t_(t) {}
  std::uint32_t alloc(std::uint64_t size, std::uint32_t thread = 0) {
    TraceEvent e;
    e.thread = thread;
    e.time_us = now_;
    e.action = Action::kAlloc;
    e.id = t_->ids++;
    e.size = std::max<std::uint64_t>(size, 1);
    t_->events.push_back(e);
    return e.id;
  }
  void free(std::uint32_t id, std::uint32_t thread = 0) {
    TraceEvent e;
    e.thread = thread;
    e.time_us = now_;
    e.action = Action::kFree;
    e.id = id;
    t_->events.push_back(e);
  }
  void mark(const std::string& label) {
    TraceEvent e;
    e.time_us = now_;
    e.action = Action::kMark;
    auto it = std::find(t_->labels.begin(), t_->labels.end(), label);
    e.label = static_cast<std::uint32_t>(it - t_->labels.begin());
    if (it == t_->labels.end()) t_->labels.push_back(label);
    t_->events.push_back(e);
  }
  void advance(std::uint64_t us) { now_ += us; }
  std::uint64_t now() const { return now_; }
  void finish() { t_->end_us = now_; }

 private:
  Trace* t_;
  std::uint64_t now_ = 0;
};

using Rng = std::mt19937_64;

std::uint64_t uniform(Rng& rng, std::uint64_t lo, std::uint64_t hi) {
  return std::uniform_int_distribution<std::uint64_t>(lo, hi)(rng);
}
std::uint64_t log_uniform(Rng& rng, std::uint64_t lo, std::uint64_t hi) {
  double a = std::log(static_cast<double>(lo)), b = std::log(static_cast<double>(hi));
  return static_cast<std::uint64_t>(std::exp(std::uniform_real_distribution<double>(a, b)(rng)));
}

// Quiet time at the end of every trace: long enough for the benchmarks' idle timer (2 s).
constexpr std::uint64_t kQuietUs = 10'000'000;

void quiet_end(Builder& b) {
  b.mark("end");
  b.advance(kQuietUs);
  b.mark("after-idle");
  b.finish();
}

std::vector<std::uint32_t> load_weights(Builder& b, Rng& rng, std::uint64_t total, std::uint64_t lo,
                                        std::uint64_t hi) {
  std::vector<std::uint32_t> ids;
  std::uint64_t sum = 0;
  while (sum < total) {
    std::uint64_t s = std::min(log_uniform(rng, lo, hi), total - sum);
    s = std::max<std::uint64_t>(s, 512);
    ids.push_back(b.alloc(s));
    sum += s;
    b.advance(50);
  }
  return ids;
}

// DESIGN §1: an inference worker loads 1.5 GiB of weights, serves one batch of 4, then 20 batches
// of 1, then sits idle. Layer outputs live for two layers; each layer also takes a workspace and
// a few small temporaries.
void gen_burst(Rng& rng, double, Builder& b) {
  load_weights(b, rng, 1536 * kMiB, 2 * kMiB, 40 * kMiB);
  constexpr int kLayers = 40;
  std::vector<std::uint64_t> per_image(kLayers);
  for (auto& a : per_image)
    a = uniform(rng, 200, 1000) * kMiB;
  auto request = [&](int batch) {
    std::vector<std::uint32_t> outs;
    for (int l = 0; l < kLayers; ++l) {
      outs.push_back(b.alloc(per_image[l] * batch));
      std::uint32_t ws = b.alloc(uniform(rng, 8, 64) * kMiB);
      for (int k = 0; k < 3; ++k)
        b.free(b.alloc(uniform(rng, 16, 512) * kKiB));
      b.advance(500 * static_cast<std::uint64_t>(batch));
      b.free(ws);
      if (outs.size() > 2) {
        b.free(outs[outs.size() - 3]);
      }
    }
    for (std::size_t i = outs.size() - 2; i < outs.size(); ++i)
      b.free(outs[i]);
  };
  b.advance(1'000'000);
  b.mark("burst-start");
  request(4);
  b.advance(300'000);
  b.mark("after-burst");
  for (int r = 0; r < 20; ++r) {
    b.advance(150'000);
    request(1);
  }
  b.advance(300'000);
  quiet_end(b);
}

// Text generation with continuous batching: up to 4 requests in flight; prompts of 64 to 2048
// tokens (log-uniform) and 32 to 512 generated tokens. Prefill takes attention scores and MLP
// temporaries per layer; every decode step takes small temporaries; each request's KV cache is one
// tensor per layer that grows 256 tokens at a time (allocate the larger one, copy, free the old).
void gen_transformer(Rng& rng, double scale, Builder& b) {
  constexpr int kLayers = 24;
  constexpr std::uint64_t kHidden = 2048;
  constexpr std::uint64_t kHeads = 16;
  constexpr std::uint64_t kVocab = 32000;
  constexpr std::uint64_t kKvPerToken = 2 * kHidden * 2;  // K and V, fp16, per layer
  constexpr std::uint64_t kChunk = 256;                   // KV growth, tokens
  constexpr int kInFlight = 4;
  int requests = std::max(8, static_cast<int>(64 * scale));

  load_weights(b, rng, 2600 * kMiB, 1 * kMiB, 64 * kMiB);
  b.advance(500'000);
  b.mark("serving");

  struct Request {
    std::uint32_t thread;
    std::uint64_t tokens, left, capacity;
    std::vector<std::uint32_t> kv;
  };
  std::vector<Request> active;
  int started = 0;
  auto grow = [&](Request& r) {
    while (r.tokens > r.capacity) {
      std::uint64_t cap = r.capacity + kChunk;
      for (int l = 0; l < kLayers; ++l) {
        std::uint32_t bigger = b.alloc(cap * kKvPerToken, r.thread);
        if (r.capacity != 0) b.free(r.kv[l], r.thread);
        r.kv[l] = bigger;
      }
      r.capacity = cap;
    }
  };
  while (started < requests || !active.empty()) {
    while (started < requests && static_cast<int>(active.size()) < kInFlight) {
      Request r{static_cast<std::uint32_t>(started % 2), log_uniform(rng, 64, 2048),
                uniform(rng, 32, 512), 0, std::vector<std::uint32_t>(kLayers)};
      ++started;
      // Prefill.
      std::uint64_t p = r.tokens;
      std::uint32_t hidden = b.alloc(p * kHidden * 2, r.thread);
      grow(r);
      for (int l = 0; l < kLayers; ++l) {
        std::uint32_t scores = b.alloc(kHeads * p * p * 2, r.thread);
        std::uint32_t attn = b.alloc(p * kHidden * 2, r.thread);
        b.free(scores, r.thread);
        std::uint32_t mlp = b.alloc(p * 4 * kHidden * 2, r.thread);
        b.free(attn, r.thread);
        b.free(mlp, r.thread);
        b.advance(20 + p / 20);
      }
      b.free(hidden, r.thread);
      active.push_back(std::move(r));
    }
    // One decode step for every request in flight.
    std::uint64_t n = active.size();
    std::uint32_t x = b.alloc(n * kHidden * 2);
    for (int l = 0; l < kLayers; ++l) {
      std::uint32_t q = b.alloc(n * kHidden * 2);
      std::uint32_t mlp = b.alloc(n * 4 * kHidden * 2);
      b.free(q);
      b.free(mlp);
    }
    std::uint32_t logits = b.alloc(n * kVocab * 2);
    b.free(logits);
    b.free(x);
    b.advance(15'000);
    for (Request& r : active) {
      ++r.tokens;
      --r.left;
      grow(r);
    }
    for (auto it = active.begin(); it != active.end();) {
      if (it->left == 0) {
        for (std::uint32_t id : it->kv)
          b.free(id, it->thread);
        it = active.erase(it);
      } else {
        ++it;
      }
    }
  }
  quiet_end(b);
}

// An image classifier (ResNet-like, 50 layers, ~100 MiB of weights) serving requests of batch
// 1 (40%), 2 (25%), 4 (20%), 8 (10%) or 16 (5%). Activations shrink with depth; every third layer
// keeps a residual input one layer longer; convolutions take a workspace.
void gen_cnn(Rng& rng, double scale, Builder& b) {
  load_weights(b, rng, 100 * kMiB, 4 * kKiB, 9 * kMiB);
  constexpr int kLayers = 50;
  std::vector<std::uint64_t> act(kLayers), ws(kLayers);
  for (int l = 0; l < kLayers; ++l) {
    double base = 12.0 * std::pow(0.93, l) + 0.2;
    act[l] = static_cast<std::uint64_t>(base * (0.8 + 0.4 * (uniform(rng, 0, 1000) / 1000.0)) *
                                        static_cast<double>(kMiB));
    ws[l] = uniform(rng, 0, 3) == 0 ? 0 : uniform(rng, 1, 32) * kMiB;
  }
  int requests = std::max(20, static_cast<int>(400 * scale));
  std::discrete_distribution<int> mix({40, 25, 20, 10, 5});
  const int batches[] = {1, 2, 4, 8, 16};
  b.advance(500'000);
  b.mark("serving");
  for (int r = 0; r < requests; ++r) {
    int batch = batches[mix(rng)];
    std::uint32_t input = b.alloc(batch * 3 * 224 * 224 * 4);
    std::uint32_t prev = input, residual = 0;
    bool has_residual = false;
    for (int l = 0; l < kLayers; ++l) {
      std::uint32_t out = b.alloc(act[l] * batch);
      if (ws[l] != 0) b.free(b.alloc(ws[l]));
      b.advance(40 * static_cast<std::uint64_t>(batch));
      if (has_residual) {
        b.free(residual);
        has_residual = false;
      }
      if (l % 3 == 0) {
        residual = prev;
        has_residual = true;
      } else {
        b.free(prev);
      }
      prev = out;
    }
    if (has_residual) b.free(residual);
    std::uint32_t logits = b.alloc(batch * 1000 * 4);
    b.free(prev);
    b.free(logits);
    b.advance(uniform(rng, 2'000, 30'000));
  }
  quiet_end(b);
}

// Steady churn: 2000 live blocks of 512 B to 16 MiB (log-uniform); each step frees a random live
// block and allocates a new one.
void gen_churn(Rng& rng, double scale, Builder& b) {
  constexpr int kLive = 2000;
  std::uint64_t steps =
      std::max<std::uint64_t>(20'000, static_cast<std::uint64_t>(400'000 * scale));
  std::vector<std::uint32_t> live;
  for (int i = 0; i < kLive; ++i) {
    live.push_back(b.alloc(log_uniform(rng, 512, 16 * kMiB), i % 2));
    b.advance(2);
  }
  b.mark("steady");
  for (std::uint64_t s = 0; s < steps; ++s) {
    std::size_t slot = uniform(rng, 0, kLive - 1);
    std::uint32_t thread = static_cast<std::uint32_t>(s % 2);
    b.free(live[slot], thread);
    live[slot] = b.alloc(log_uniform(rng, 512, 16 * kMiB), thread);
    b.advance(5);
  }
  b.mark("steady-end");
  for (std::uint32_t id : live)
    b.free(id);
  quiet_end(b);
}

}  // namespace

const std::vector<std::string>& generator_names() {
  static const std::vector<std::string> names = {"burst", "transformer", "cnn", "churn"};
  return names;
}

bool generate_trace(const std::string& name, std::uint64_t seed, double scale, Trace* out,
                    std::string* error) {
  if (!(scale > 0 && scale <= 1)) {
    if (error != nullptr) *error = "scale must be in (0, 1]";
    return false;
  }
  Trace t;
  t.name = name;
  Builder b(&t);
  Rng rng(seed);
  if (name == "burst") {
    gen_burst(rng, scale, b);
  } else if (name == "transformer") {
    gen_transformer(rng, scale, b);
  } else if (name == "cnn") {
    gen_cnn(rng, scale, b);
  } else if (name == "churn") {
    gen_churn(rng, scale, b);
  } else {
    if (error != nullptr) *error = "unknown workload '" + name + "'";
    return false;
  }
  *out = std::move(t);
  return true;
}

}  // namespace cudapool::bench
