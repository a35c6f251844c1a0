// Observability (issue: who holds the GPU memory, and how it moved): allocation stacks and the
// snapshot, grouping by size without backtraces, the exit report, the timeline and its plot, and
// libunwind loaded privately.
#include <dlfcn.h>
#include <unistd.h>

#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "control/client.h"
#include "tests/integration/integration_util.h"
#include "tests/integration/own_pipe.h"
#include "tests/unit/tools/xml_check.h"

// Two distinct call paths with known amounts (global names, so the test can look for them).
[[gnu::noinline]] void* obs_alloc_alpha(std::size_t mib) {
  void* p = nullptr;
  if (cudaMalloc(&p, mib << 20) != cudaSuccess) return nullptr;
  asm volatile("" ::: "memory");  // keep the call a call, not a tail call
  return p;
}
[[gnu::noinline]] void* obs_alloc_beta(std::size_t mib) {
  void* p = nullptr;
  if (cudaMalloc(&p, mib << 20) != cudaSuccess) return nullptr;
  asm volatile("" ::: "memory");
  return p;
}
[[gnu::noinline]] void* obs_leak_block() {
  void* p = nullptr;
  if (cudaMalloc(&p, 7u << 20) != cudaSuccess) return nullptr;
  asm volatile("" ::: "memory");
  return p;
}

namespace integ {
namespace {

using cudapool::ClientReply;

ProcessResult ctl(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {flag_value("--ctl")};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_process(argv, EnvChanges{}, milliseconds(20000));
}

// Every `"key":N` in `text`, in order.
std::vector<unsigned long long> numbers_of(const std::string& text, const std::string& key) {
  std::vector<unsigned long long> out;
  const std::regex re("\"" + key + "\":([0-9]+)");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator();
       ++it)
    out.push_back(std::stoull((*it)[1].str()));
  return out;
}

TEST(Snapshot, AttributesBytesToTheAllocatingFunctions) {
  std::vector<void*> blocks;
  for (int i = 0; i < 3; ++i)
    blocks.push_back(obs_alloc_alpha(12));  // 36 MiB
  for (int i = 0; i < 4; ++i)
    blocks.push_back(obs_alloc_beta(3));  // 12 MiB
  for (void* p : blocks)
    ASSERT_NE(nullptr, p);
  ClientReply r = cudapool::request(own_pipe(), "snapshot json top=50", milliseconds(10000));
  ASSERT_EQ(ClientReply::Status::kOk, r.status) << r.error;
  EXPECT_NE(std::string::npos, r.body.find("\"grouping\":\"stack\"")) << r.body;
  EXPECT_TRUE(std::regex_search(
      r.body, std::regex("\\{\"bytes\":37748736,\"count\":3,\"label\":\"obs_alloc_alpha")))
      << r.body;
  EXPECT_TRUE(std::regex_search(
      r.body, std::regex("\\{\"bytes\":12582912,\"count\":4,\"label\":\"obs_alloc_beta")))
      << r.body;
  // The tool's text: the functions with their bytes, and the segment maps.
  ProcessResult text = ctl({"snapshot", std::to_string(getpid())});
  ASSERT_EQ(0, text.exit_code) << describe(text);
  EXPECT_TRUE(std::regex_search(text.output, std::regex("36\\.00 MiB +3 blocks +obs_alloc_alpha")))
      << text.output;
  EXPECT_TRUE(std::regex_search(text.output, std::regex("12\\.00 MiB +4 blocks +obs_alloc_beta")))
      << text.output;
  EXPECT_NE(std::string::npos, text.output.find("at main")) << text.output;
  EXPECT_NE(std::string::npos, text.output.find("[####")) << text.output;
  for (void* p : blocks)
    EXPECT_CUDA_OK(cudaFree(p));
}

TEST(Snapshot, BySizeWithoutBacktracesAddsUpToInUse) {
  std::vector<void*> blocks;
  for (std::size_t size : {1000u, 4096u, 300000u, 3u << 20, 5u << 20, 24u << 20, 24u << 20}) {
    void* p = nullptr;
    ASSERT_CUDA_OK(cudaMalloc(&p, size));
    blocks.push_back(p);
  }
  ASSERT_CUDA_OK(cudaFree(blocks[1]));  // a hole: pending or free, not in use
  ClientReply r = cudapool::request(own_pipe(), "snapshot json top=1000", milliseconds(10000));
  ASSERT_EQ(ClientReply::Status::kOk, r.status) << r.error;
  EXPECT_NE(std::string::npos, r.body.find("\"grouping\":\"size\"")) << r.body;
  const std::size_t devices_at = r.body.find("\"devices\":");
  ASSERT_NE(std::string::npos, devices_at);
  unsigned long long grouped = 0;
  for (unsigned long long b : numbers_of(r.body.substr(0, devices_at), "bytes"))
    grouped += b;
  std::vector<unsigned long long> in_use = numbers_of(r.body.substr(devices_at), "in_use");
  ASSERT_FALSE(in_use.empty());
  EXPECT_EQ(in_use[0], grouped) << r.body;  // device 0's in-use total comes first
  EXPECT_GE(grouped, 1000ull + 300000 + (3u << 20) + (5u << 20) + (48u << 20));
  for (std::size_t i = 0; i < blocks.size(); ++i)
    if (i != 1) {
      EXPECT_CUDA_OK(cudaFree(blocks[i]));
    }
}

INTEG_SCENARIO(leak_one_block) {
  void* keep = obs_alloc_beta(2);
  void* leaked = obs_leak_block();
  if (keep == nullptr || leaked == nullptr) return 1;
  return cudaFree(keep) == cudaSuccess ? 0 : 1;
}

TEST(ExitReport, ListsALeakedBlockWithItsStack) {
  ProcessResult r = run_scenario("leak_one_block", EnvChanges{{{"CUDAPOOL_REPORT_AT_EXIT", "1"},
                                                               {"CUDAPOOL_BACKTRACE", "on"},
                                                               {"CUDAPOOL_LOG_FILE", ""}},
                                                              {}});
  ASSERT_EQ(0, r.exit_code) << describe(r);
  EXPECT_NE(std::string::npos, r.output.find("blocks never freed")) << r.output;
  EXPECT_TRUE(std::regex_search(r.output, std::regex("#1 7MiB in 1 block\\(s\\): obs_leak_block")))
      << r.output;
  EXPECT_EQ(std::string::npos, r.output.find("obs_alloc_beta")) << "a freed block was listed\n"
                                                                << r.output;
  EXPECT_NE(std::string::npos, r.output.find("peak held")) << r.output;
}

INTEG_SCENARIO(burst_then_quiet) {
  std::vector<void*> blocks;
  for (int i = 0; i < 24; ++i) {
    void* p = nullptr;
    if (cudaMalloc(&p, 16u << 20) != cudaSuccess) return 1;
    blocks.push_back(p);
  }
  sleep_ms(150);
  for (void* p : blocks)
    if (cudaFree(p) != cudaSuccess) return 1;
  sleep_ms(400);  // the release thread applies the watermark; the timeline samples it
  return 0;
}

TEST(Timeline, ShowsAWatermarkReleaseAndHeldDropsAfterIt) {
  const std::string dir = make_scratch_dir("timeline");
  const std::string csv = dir + "/demo.csv";
  ProcessResult r =
      run_scenario("burst_then_quiet", EnvChanges{{{"CUDAPOOL_TIMELINE_FILE", csv},
                                                   {"CUDAPOOL_TIMELINE_MS", "20"},
                                                   {"CUDAPOOL_HIGH_WATERMARK", "64MiB"},
                                                   {"CUDAPOOL_LOW_WATERMARK", "0"}},
                                                  {}});
  ASSERT_EQ(0, r.exit_code) << describe(r);
  const std::string text = read_file(csv);
  ASSERT_EQ(0u, text.rfind("time_s,device,kind,held,in_use,idle,pending,bytes,count,pages\n", 0))
      << text.substr(0, 200);
  // held before and after the first watermark release.
  double release_at = -1;
  unsigned long long peak_before = 0, last_held = 0;
  std::istringstream lines(text);
  std::string line;
  std::getline(lines, line);
  const std::regex sample("([0-9.]+),0,sample,([0-9]+),([0-9]+),([0-9]+),([0-9]+),,,([0-9]+)");
  const std::regex release("([0-9.]+),0,watermark_release,,,,,([0-9]+),([0-9]+),");
  std::smatch m;
  while (std::getline(lines, line)) {
    if (release_at < 0 && std::regex_match(line, m, release)) {
      release_at = std::stod(m[1].str());
      EXPECT_GT(std::stoull(m[2].str()), 0ull) << line;
    } else if (std::regex_match(line, m, sample)) {
      const unsigned long long held = std::stoull(m[2].str());
      if (release_at < 0) peak_before = std::max(peak_before, held);
      last_held = held;
    }
  }
  ASSERT_GE(release_at, 0) << "no watermark_release event:\n" << text;
  EXPECT_GE(peak_before, 384ull << 20) << text;
  EXPECT_LE(last_held, 64ull << 20) << text;

  const std::string svg_path = dir + "/demo.svg";
  ProcessResult plot = ctl({"plot", csv, "-o", svg_path});
  ASSERT_EQ(0, plot.exit_code) << describe(plot);
  const std::string svg = read_file(svg_path);
  EXPECT_EQ("", cudapool::test::xml_problem(svg)) << svg;
  EXPECT_NE(std::string::npos, svg.find("data-series=\"held\"")) << svg;
  EXPECT_NE(std::string::npos, svg.find("data-series=\"in use\"")) << svg;
  EXPECT_NE(std::string::npos, svg.find("data-label=\"watermark_release\"")) << svg;
  EXPECT_NE(std::string::npos, svg.find(" MiB</text>")) << svg;
  remove_path(dir);
}

TEST(Backtrace, LibunwindIsLoadedPrivately) {
  void* p = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&p, 4096));
  void* loaded = dlopen("libunwind.so.8", RTLD_NOW | RTLD_NOLOAD);
  if (loaded == nullptr) GTEST_SKIP() << "libunwind.so.8 is not installed: glibc backtrace()";
  dlclose(loaded);
  // Loaded, but not in the global scope: neither its own API nor its _Unwind_* are visible.
  EXPECT_EQ(nullptr, dlsym(RTLD_DEFAULT, "unw_backtrace"));
  EXPECT_EQ(std::string::npos, object_defining("_Unwind_RaiseException").find("libunwind"));
  EXPECT_CUDA_OK(cudaFree(p));
}

}  // namespace
}  // namespace integ
