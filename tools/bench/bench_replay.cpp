// cudapool-bench replay: a trace through the pool on the simulated backend (in trace time, exact),
// and through libcudapool.so on the CUDA runtime (stand-in or NVIDIA's), beside pass-through.
#include <cuda_runtime_api.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <thread>

#include "allocator/size_classes.h"
#include "control/client.h"
#include "control/preload.h"
#include "tools/bench/bench.h"
#include "tools/bench/bench_util.h"
#include "tools/bench/sim_replay.h"
#include "tools/bench/trace.h"
#include "tools/plot/svg_plot.h"

namespace cudapool::bench {

namespace {

using Clock = std::chrono::steady_clock;
constexpr std::uint64_t kMiB = 1024 * 1024;
constexpr std::uint64_t kHigh = 1024 * kMiB;  // the benchmark's policy (docs/benchmarks.md)
constexpr std::uint64_t kLow = 256 * kMiB;
constexpr std::uint64_t kIdleMs = 2000;
// Gaps in a trace at least this long are idle periods: the runtime replay sleeps through them (up
// to the idle timer plus two ticks); shorter gaps are skipped.
constexpr std::uint64_t kIdleGapUs = 1'000'000;
constexpr int kMarkSettleMs = 250;  // after a mark, the release thread gets two ticks

bool take(Args* args, const std::string& name, std::string* out) {
  for (std::size_t i = 0; i + 1 < args->size(); ++i)
    if ((*args)[i] == name) {
      *out = (*args)[i + 1];
      args->erase(args->begin() + static_cast<long>(i), args->begin() + static_cast<long>(i) + 2);
      return true;
    }
  return false;
}

bool get_trace(const std::string& spec, std::uint64_t seed, double scale, Trace* t,
               std::string* error) {
  const auto& names = generator_names();
  if (std::find(names.begin(), names.end(), spec) != names.end())
    return generate_trace(spec, seed, scale, t, error);
  return load_trace(spec, t, error);
}

// ---- the worker: the trace through the CUDA runtime in this process ----------------------------

struct HeldReader {
  bool standin = false;
  std::uint64_t baseline = 0;
  cudaMemPool_t async_pool = nullptr;
  std::uint64_t read() const {
    if (async_pool != nullptr) {
      std::uint64_t reserved = 0;
      cudaMemPoolGetAttribute(async_pool, cudaMemPoolAttrReservedMemCurrent, &reserved);
      return reserved;
    }
    if (standin) return StandinProbe::read().held;
    std::uint64_t used = 0;
    device_used_bytes(&used);
    return used > baseline ? used - baseline : 0;
  }
};

// The control folder the parent gave the cudapool worker (its pipe is <dir>/<pid>.ctl).
std::string resolve_control_dir_for_bench() {
  const char* d = getenv("BENCH_CONTROL_DIR");
  return d != nullptr ? d : "";
}

}  // namespace

int replay_worker(const Args& in) {
  Args args = in;
  std::string spec, seed_s = "1", scale_s = "1", mode = "cuda", idle_s = std::to_string(kIdleMs);
  take(&args, "--trace", &spec);
  take(&args, "--seed", &seed_s);
  take(&args, "--scale", &scale_s);
  take(&args, "--mode", &mode);
  take(&args, "--idle-ms", &idle_s);
  Trace trace;
  std::string error;
  if (!get_trace(spec, std::stoull(seed_s), atof(scale_s.c_str()), &trace, &error)) {
    fprintf(stderr, "cudapool-bench: %s\n", error.c_str());
    return 1;
  }
  if (cudaFree(nullptr) != cudaSuccess) {
    fprintf(stderr, "cudapool-bench: the CUDA runtime did not start\n");
    return 1;
  }
  HeldReader held;
  held.standin = StandinProbe::read().present;
  std::uint64_t used = 0;
  if (!held.standin && device_used_bytes(&used)) held.baseline = used;
  bool async = mode == "async";
  cudaStream_t stream = nullptr;
  if (async) {
    if (cudaDeviceGetDefaultMemPool(&held.async_pool, 0) != cudaSuccess) {
      fprintf(stderr, "cudapool-bench: no default memory pool (cudaMallocAsync)\n");
      return 1;
    }
    std::uint64_t threshold = std::numeric_limits<std::uint64_t>::max();
    cudaMemPoolSetAttribute(held.async_pool, cudaMemPoolAttrReleaseThreshold, &threshold);
  }
  bool pooled = library_of("cudaMalloc").find("libcudapool") != std::string::npos;
  std::uint64_t idle_ms = std::stoull(idle_s);
  StandinProbe before = StandinProbe::read();

  std::vector<void*> ptrs(trace.ids, nullptr);
  std::vector<std::uint64_t> sizes(trace.ids, 0);
  std::uint64_t in_use = 0, peak_in_use = 0, peak_held = 0, failures = 0, calls = 0;
  bool sample = !held.standin;  // NVIDIA's runtime: sample held after every allocation
  int device = 0;
  double busy_ns = 0;
  Row marks;
  std::uint64_t prev_us = 0;
  auto t_start = Clock::now();
  for (const TraceEvent& e : trace.events) {
    if (e.time_us - prev_us >= kIdleGapUs) {
      auto pause = Clock::now();
      std::uint64_t ms = std::min<std::uint64_t>((e.time_us - prev_us) / 1000, idle_ms + 500);
      std::this_thread::sleep_for(std::chrono::milliseconds(ms));
      t_start += Clock::now() - pause;  // sleeps are not replay time
    }
    prev_us = e.time_us;
    if (e.device != device) {
      cudaSetDevice(e.device);
      device = e.device;
    }
    auto t0 = sample ? Clock::now() : Clock::time_point{};
    switch (e.action) {
      case Action::kAlloc: {
        void* p = nullptr;
        cudaError_t err = async ? cudaMallocAsync(&p, e.size, stream) : cudaMalloc(&p, e.size);
        ++calls;
        if (err != cudaSuccess) {
          ++failures;
          cudaGetLastError();
          p = nullptr;
        }
        ptrs[e.id] = p;
        if (p != nullptr) {
          sizes[e.id] = e.size;
          in_use += e.size;
          peak_in_use = std::max(peak_in_use, in_use);
        }
        break;
      }
      case Action::kFree: {
        ++calls;
        void* p = ptrs[e.id];
        if (p == nullptr) break;
        cudaError_t err = async ? cudaFreeAsync(p, stream) : cudaFree(p);
        if (err != cudaSuccess) ++failures;
        in_use -= sizes[e.id];
        break;
      }
      case Action::kMark: {
        auto pause = Clock::now();
        if (async) cudaStreamSynchronize(stream);
        std::this_thread::sleep_for(std::chrono::milliseconds(kMarkSettleMs));
        const std::string& label = trace.labels[e.label];
        marks["mark_" + label + "_held"] = std::to_string(held.read());
        marks["mark_" + label + "_in_use"] = std::to_string(in_use);
        t_start += Clock::now() - pause;
        continue;
      }
    }
    if (sample) {
      busy_ns += std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
      if (e.action == Action::kAlloc) peak_held = std::max(peak_held, held.read());
    }
  }
  if (async) cudaStreamSynchronize(stream);
  double replay_ms =
      sample ? busy_ns / 1e6
             : std::chrono::duration<double, std::milli>(Clock::now() - t_start).count();
  std::uint64_t held_end = held.read();
  // Trim: cudapool through its control pipe (as an operator would), the stream-ordered pool with
  // cudaMemPoolTrimTo.
  std::string trim = "none";
  if (async) {
    cudaMemPoolTrimTo(held.async_pool, 0);
    trim = "cudaMemPoolTrimTo";
  } else if (pooled) {
    ClientReply reply = request(pipe_path(resolve_control_dir_for_bench(), getpid()), "trim",
                                std::chrono::milliseconds(5000));
    trim = reply.status == ClientReply::Status::kOk ? "pipe" : "failed";
  }
  std::uint64_t held_trim = held.read();
  StandinProbe after = StandinProbe::read();
  if (held.standin) peak_held = after.peak_held;
  Row r = marks;
  r["mode"] = async ? "async" : pooled ? "cudapool" : "pass-through";
  r["runtime"] = held.standin ? "standin" : "nvidia";
  r["app_calls"] = std::to_string(calls);
  r["failures"] = std::to_string(failures);
  r["peak_held"] = std::to_string(peak_held);
  r["peak_in_use"] = std::to_string(peak_in_use);
  r["held_end"] = std::to_string(held_end);
  r["held_after_trim"] = std::to_string(held_trim);
  r["trim"] = trim;
  r["replay_ms"] = format("%.2f", replay_ms);
  if (held.standin) {
    r["driver_mallocs"] = std::to_string(after.mallocs - before.mallocs);
    r["driver_frees"] = std::to_string(after.frees - before.frees);
    r["maps"] = std::to_string(after.maps - before.maps);
    r["unmaps"] = std::to_string(after.unmaps - before.unmaps);
    r["syncs"] = std::to_string(after.syncs - before.syncs);
  }
  printf("%s\n", row_line(r).c_str());
  return failures == 0 ? 0 : 1;
}

// ---- the parent ---------------------------------------------------------------------------------

namespace {

struct TraceReport {
  std::string name;
  std::uint64_t events = 0;
  double seconds = 0;
  std::vector<SimResult> sim;  // pool, cache, pass-through
  std::vector<Row> runtime;    // cudapool on the runtime, pass-through on the runtime
  std::string svg;
};

std::string pct(double part, double whole) {
  return whole > 0 ? format("%.2f%%", 100.0 * part / whole) : "-";
}

std::uint64_t mark_held(const SimResult& r, const std::string& label, bool in_use = false) {
  for (const HeldAt& h : r.at_marks)
    if (h.label == label) return in_use ? h.in_use : h.held;
  return 0;
}

void write_plot(const Trace& trace, const TraceReport& rep, const std::string& dir,
                std::string* path) {
  plot::Chart c;
  c.title = format(
      "%s: bytes held from the driver (high/low watermark 1 GiB / 256 MiB, idle "
      "timer 2 s)",
      trace.name.c_str());
  c.y_label = "bytes";
  auto series = [&](const SimResult& r, const std::string& name, bool held, const char* color,
                    bool dashed) {
    plot::Series s;
    s.name = name;
    s.color = color;
    s.dashed = dashed;
    s.step = true;
    for (const auto& p : r.timeline) {
      s.x.push_back(p.t_s);
      s.y.push_back(static_cast<double>(held ? p.held : p.in_use));
    }
    c.series.push_back(std::move(s));
  };
  series(rep.sim[2], "pool without release (a framework cache): held", true, "#9467bd", true);
  series(rep.sim[1], "cudapool on whole segments: held", true, "#ff7f0e", true);
  series(rep.sim[0], "cudapool: held", true, "#d62728", false);
  series(rep.sim[3], "no pool: held (= in use)", true, "#1f77b4", false);
  std::size_t shown = 0;
  for (const auto& rel : rep.sim[0].releases) {
    if (++shown > 200) break;
    c.markers.push_back({rel.t_s, std::string(rel.reason) + " release", ""});
  }
  *path = dir + "/" + trace.name + ".svg";
  std::string error;
  if (!plot::write_svg(c, *path, &error)) {
    fprintf(stderr, "cudapool-bench: %s\n", error.c_str());
    path->clear();
  }
}

// --check: the counts the benchmark's targets rest on (never times). Prints CHECK FAILED lines.
int check_reports(const std::vector<TraceReport>& reports) {
  int failed = 0;
  auto expect = [&](bool ok, const std::string& what) {
    if (!ok) {
      fprintf(stderr, "CHECK FAILED: %s\n", what.c_str());
      failed = 1;
    }
  };
  for (const TraceReport& rep : reports) {
    const SimResult& pool = rep.sim[0];
    const SimResult& pass = rep.sim[3];
    expect(pass.driver_calls() == pass.app_calls,
           rep.name + ": simulated pass-through calls the driver for every call");
    expect(pool.held_after_trim <= pool.held_end && pool.held_after_trim <= pool.peak_in_use,
           rep.name + ": trim returns memory");
    if (rep.name == "churn") {
      // In its steady phase: filling the pool and emptying it at the end are not churn.
      std::uint64_t driver = 0, app = 0;
      pool.calls_between("steady", "steady-end", &driver, &app);
      expect(app != 0 && driver * 100 <= app,
             format("churn: driver calls %llu > 1%% of %llu application calls (steady phase)",
                    static_cast<unsigned long long>(driver), static_cast<unsigned long long>(app)));
    }
    if (std::uint64_t held = mark_held(pool, "after-burst"); held != 0) {
      std::uint64_t in_use = mark_held(pool, "after-burst", true);
      expect(held <= in_use + kLow + kLargeGranularity,
             rep.name + ": held after the burst above in use + low watermark + one page");
    }
    const Row* shim = nullptr;
    const Row* native = nullptr;
    for (const Row& r : rep.runtime) {
      if (r.at("mode") == "cudapool") shim = &r;
      if (r.at("mode") == "pass-through") native = &r;
    }
    if (!rep.runtime.empty()) {
      expect(shim != nullptr && native != nullptr, rep.name + ": both runtime replays ran");
      if (shim == nullptr || native == nullptr) continue;
      expect(row_number(*shim, "failures") == 0 && row_number(*native, "failures") == 0,
             rep.name + ": runtime replays without failed calls");
      expect(row_number(*shim, "app_calls") == row_number(*native, "app_calls"),
             rep.name + ": both runtime replays made the same calls");
      double shim_driver = row_number(*shim, "driver_mallocs") + row_number(*shim, "driver_frees");
      double native_driver =
          row_number(*native, "driver_mallocs") + row_number(*native, "driver_frees");
      // Not on the burst: its 1 GiB high watermark returns each step's activations and the next
      // step obtains them again, which on pages takes a driver call per 2 MiB (docs/pages.md).
      if (row_number(*shim, "driver_mallocs") >= 0 && rep.name != "burst")
        expect(shim_driver < native_driver,
               rep.name + ": cudapool calls the driver less than pass-through");
      expect(shim->at("trim") == "pipe", rep.name + ": trim through the control pipe answered");
      expect(row_number(*shim, "held_after_trim") <= row_number(*shim, "held_end"),
             rep.name + ": trim through the pipe does not grow the pool");
    }
  }
  return failed;
}

}  // namespace

int replay_main(const Args& in) {
  Args args = in;
  CommonOptions o;
  std::string error, svg_dir, scale_s;
  take(&args, "--svg", &svg_dir);
  take(&args, "--scale", &scale_s);
  bool sim_only = false, check = false;
  for (auto it = args.begin(); it != args.end();) {
    if (*it == "--sim-only" || *it == "--check") {
      (*it == "--check" ? check : sim_only) = true;
      it = args.erase(it);
    } else {
      ++it;
    }
  }
  if (!parse_common(&args, &o, &error)) {
    fprintf(stderr, "cudapool-bench replay: %s\n", error.c_str());
    return 2;
  }
  std::vector<std::string> specs = args;
  if (specs.empty() || (specs.size() == 1 && specs[0] == "--all")) specs = generator_names();
  for (const std::string& s : specs)
    if (!s.empty() && s[0] == '-') {
      fprintf(stderr, "cudapool-bench replay: unknown option %s\n", s.c_str());
      return 2;
    }
  double scale = !scale_s.empty() ? atof(scale_s.c_str()) : o.quick ? 0.15 : 1.0;
  std::string lib = find_cudapool(o.library);
  if (lib.empty() && !sim_only) {
    fprintf(stderr, "cudapool-bench: libcudapool.so not found; give it with --library PATH\n");
    return 1;
  }
  bool standin = StandinProbe::read().present;
  Policy policy;
  policy.high_watermark = kHigh;
  policy.low_watermark = kLow;
  policy.idle_release_ms = kIdleMs;

  char tmpl[] = "/tmp/cudapool-bench-XXXXXX";
  std::string control_dir;
  if (!sim_only) {
    if (mkdtemp(tmpl) == nullptr) {
      fprintf(stderr, "cudapool-bench: cannot make a temporary folder\n");
      return 1;
    }
    control_dir = tmpl;
  }
  std::vector<TraceReport> reports;
  int status = 0;
  for (const std::string& spec : specs) {
    Trace trace;
    if (!get_trace(spec, o.seed, scale, &trace, &error)) {
      fprintf(stderr, "cudapool-bench replay: %s\n", error.c_str());
      return 1;
    }
    TraceReport rep;
    rep.name = trace.name;
    rep.events = trace.events.size();
    rep.seconds = static_cast<double>(trace.end_us) / 1e6;
    for (SimMode m :
         {SimMode::kPool, SimMode::kPoolSegments, SimMode::kCache, SimMode::kPassThrough})
      rep.sim.push_back(replay_simulated(trace, m, policy, !svg_dir.empty()));
    for (const SimResult& r : rep.sim)
      if (r.failures != 0) {
        fprintf(stderr, "cudapool-bench replay: %s: %llu allocations failed (%s)\n",
                trace.name.c_str(), static_cast<unsigned long long>(r.failures), to_string(r.mode));
        status = 1;
      }
    if (!sim_only) {
      std::vector<std::string> common = {"worker",  "replay",           "--trace",
                                         spec,      "--seed",           std::to_string(o.seed),
                                         "--scale", format("%g", scale)};
      std::vector<std::string> env = {
          "STANDIN_DEVICE_MEMORY=256GiB",
          format("STANDIN_DEVICE_COUNT=%d", trace.devices),
          "CUDAPOOL_LOG_LEVEL=warn",
          "CUDAPOOL_HIGH_WATERMARK=1GiB",
          "CUDAPOOL_LOW_WATERMARK=256MiB",
          format("CUDAPOOL_IDLE_RELEASE_MS=%llu", static_cast<unsigned long long>(kIdleMs)),
          "CUDAPOOL_CONTROL=1",
          "CUDAPOOL_CONTROL_DIR=" + control_dir,
          "BENCH_CONTROL_DIR=" + control_dir,
          "LD_PRELOAD=" + preload_with_cudapool(getenv("LD_PRELOAD"), lib)};
      std::vector<Row> rows;
      if (!run_worker(common, env, &rows, &error) || rows.empty()) {
        fprintf(stderr, "cudapool-bench replay: %s: cudapool worker: %s\n", trace.name.c_str(),
                error.c_str());
        status = 1;
      }
      env.back() = "LD_PRELOAD=" + preload_without_cudapool(getenv("LD_PRELOAD"));
      if (standin) {
        env.push_back(format("STANDIN_MALLOC_LATENCY_US=%g", o.malloc_latency_us));
        env.push_back(format("STANDIN_FREE_LATENCY_US=%g", o.free_latency_us));
      }
      if (!run_worker(common, env, &rows, &error)) {
        fprintf(stderr, "cudapool-bench replay: %s: pass-through worker: %s\n", trace.name.c_str(),
                error.c_str());
        status = 1;
      }
      rep.runtime = rows;
    }
    if (!svg_dir.empty()) write_plot(trace, rep, svg_dir, &rep.svg);
    reports.push_back(std::move(rep));
  }
  if (!control_dir.empty()) rmdir(control_dir.c_str());
  if (check) status |= check_reports(reports);

  if (o.json) {
    printf(
        "{\n  \"benchmark\": \"replay\",\n  \"policy\": {\"high_watermark\": %llu, "
        "\"low_watermark\": %llu, \"idle_release_ms\": %llu},\n  \"traces\": [",
        static_cast<unsigned long long>(kHigh), static_cast<unsigned long long>(kLow),
        static_cast<unsigned long long>(kIdleMs));
    for (std::size_t i = 0; i < reports.size(); ++i) {
      const TraceReport& rep = reports[i];
      printf(
          "%s\n    {\"name\": \"%s\", \"events\": %llu, \"seconds\": %.3f, \"svg\": \"%s\", "
          "\"simulated\": [",
          i ? "," : "", rep.name.c_str(), static_cast<unsigned long long>(rep.events), rep.seconds,
          rep.svg.c_str());
      for (std::size_t k = 0; k < rep.sim.size(); ++k) {
        const SimResult& r = rep.sim[k];
        printf(
            "%s\n      {\"mode\": \"%s\", \"app_calls\": %llu, \"driver_mallocs\": %llu, "
            "\"driver_frees\": %llu, \"page_maps\": %llu, \"page_unmaps\": %llu, "
            "\"fences\": %llu, \"peak_held\": %llu, "
            "\"peak_in_use\": %llu, \"after_burst_held\": %llu, \"after_burst_in_use\": %llu, "
            "\"held_end\": %llu, \"held_after_trim\": %llu, \"replay_ms\": %.3f, "
            "\"failures\": %llu}",
            k ? "," : "", to_string(r.mode), static_cast<unsigned long long>(r.app_calls),
            static_cast<unsigned long long>(r.driver_mallocs),
            static_cast<unsigned long long>(r.driver_frees),
            static_cast<unsigned long long>(r.page_maps),
            static_cast<unsigned long long>(r.page_unmaps),
            static_cast<unsigned long long>(r.fences), static_cast<unsigned long long>(r.peak_held),
            static_cast<unsigned long long>(r.peak_in_use),
            static_cast<unsigned long long>(mark_held(r, "after-burst")),
            static_cast<unsigned long long>(mark_held(r, "after-burst", true)),
            static_cast<unsigned long long>(r.held_end),
            static_cast<unsigned long long>(r.held_after_trim), r.replay_ms,
            static_cast<unsigned long long>(r.failures));
      }
      printf("\n    ], \"runtime\": [");
      for (std::size_t k = 0; k < rep.runtime.size(); ++k) {
        printf("%s\n      {", k ? "," : "");
        bool first = true;
        for (const auto& [key, v] : rep.runtime[k]) {
          bool text = key == "mode" || key == "runtime" || key == "trim";
          printf("%s\"%s\": %s%s%s", first ? "" : ", ", key.c_str(), text ? "\"" : "", v.c_str(),
                 text ? "\"" : "");
          first = false;
        }
        printf("}");
      }
      printf("\n    ]}");
    }
    printf("\n  ]\n}\n");
    return status;
  }

  printf(
      "cudapool-bench replay: policy high/low watermark 1 GiB / 256 MiB, idle timer %llu ms, "
      "fence reuse; pass-through latency %s\n",
      static_cast<unsigned long long>(kIdleMs),
      standin ? format("%g/%g us (stand-in)", o.malloc_latency_us, o.free_latency_us).c_str()
              : "native (NVIDIA)");
  printf(
      "simulated = the pool on the simulated backend, in trace time (exact); runtime = "
      "libcudapool.so on the %s runtime, idle gaps shortened to the idle timer\n",
      standin ? "stand-in" : "NVIDIA");
  for (const TraceReport& rep : reports) {
    printf("\n%s: %llu events over %.1f s of trace time%s%s\n", rep.name.c_str(),
           static_cast<unsigned long long>(rep.events), rep.seconds,
           rep.svg.empty() ? "" : ", plot ", rep.svg.c_str());
    Table t({"replay", "app calls", "driver calls", "maps/unmaps", "fences", "peak held",
             "peak in use", "held/in use", "after burst", "after idle", "after trim", "replay ms"});
    for (const SimResult& r : rep.sim) {
      std::uint64_t ab = mark_held(r, "after-burst");
      t.add({std::string("simulated ") + to_string(r.mode), std::to_string(r.app_calls),
             format("%llu (%s)", static_cast<unsigned long long>(r.driver_calls()),
                    pct(static_cast<double>(r.driver_calls()), static_cast<double>(r.app_calls))
                        .c_str()),
             r.page_maps + r.page_unmaps != 0
                 ? format("%llu/%llu", static_cast<unsigned long long>(r.page_maps),
                          static_cast<unsigned long long>(r.page_unmaps))
                 : "-",
             std::to_string(r.fences), human_bytes(static_cast<double>(r.peak_held)),
             human_bytes(static_cast<double>(r.peak_in_use)),
             r.peak_in_use ? format("%.3f", static_cast<double>(r.peak_held) /
                                                static_cast<double>(r.peak_in_use))
                           : "-",
             ab ? human_bytes(static_cast<double>(ab)) : "-",
             human_bytes(static_cast<double>(r.held_end)),
             human_bytes(static_cast<double>(r.held_after_trim)), format("%.1f", r.replay_ms)});
    }
    for (const Row& r : rep.runtime) {
      double app = row_number(r, "app_calls"), dm = row_number(r, "driver_mallocs"),
             df = row_number(r, "driver_frees");
      double ph = row_number(r, "peak_held"), pu = row_number(r, "peak_in_use");
      double ab = row_number(r, "mark_after-burst_held");
      t.add({"runtime " + r.at("mode"), format("%.0f", app),
             dm >= 0 ? format("%.0f (%s)", dm + df, pct(dm + df, app).c_str()) : "-",
             r.count("maps") ? r.at("maps") + "/" + r.at("unmaps") : "-",
             r.count("syncs") ? r.at("syncs") : "-", human_bytes(ph), human_bytes(pu),
             pu > 0 ? format("%.3f", ph / pu) : "-", ab >= 0 ? human_bytes(ab) : "-",
             human_bytes(row_number(r, "held_end")), human_bytes(row_number(r, "held_after_trim")),
             format("%.1f", row_number(r, "replay_ms"))});
    }
    printf("%s", t.render().c_str());
    const SimResult& pool = rep.sim[0];
    for (const SimResult& r : {rep.sim[0], rep.sim[1]}) {
      std::uint64_t driver = 0, app = 0;
      r.calls_between("steady", "steady-end", &driver, &app);
      if (app != 0)
        printf("steady phase, simulated %s: %llu driver calls for %llu application calls (%s)\n",
               to_string(r.mode), static_cast<unsigned long long>(driver),
               static_cast<unsigned long long>(app),
               pct(static_cast<double>(driver), static_cast<double>(app)).c_str());
    }
    if (mark_held(pool, "after-burst") != 0) {
      std::uint64_t limit = mark_held(pool, "after-burst", true) + kLow + kLargeGranularity;
      printf("after the burst: held %s, in use %s: %s in use + low watermark + one page (%s)\n",
             human_bytes(static_cast<double>(mark_held(pool, "after-burst"))).c_str(),
             human_bytes(static_cast<double>(mark_held(pool, "after-burst", true))).c_str(),
             mark_held(pool, "after-burst") <= limit ? "within" : "ABOVE",
             human_bytes(static_cast<double>(limit)).c_str());
    }
  }
  return status;
}

}  // namespace cudapool::bench
