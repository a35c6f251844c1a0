// Fuzz target of the options table (control/options.h): the environment reader, set/get and the
// watermark rules. Built as a libFuzzer target with clang (-DCUDAPOOL_FUZZ=ON) and always as a
// plain driver (fuzz_driver.cpp) over tests/fuzz/corpus/options/.
//
// The input is lines. `NAME=value` lines form the environment (also the environ list, so unknown
// CUDAPOOL_* names are seen); `set NAME VALUE` lines are applied afterwards with set_option, as the
// pipe's `set` does (runtime_only), and `=NUMBER` gives the device size for the limits.
// Properties checked (a violation traps):
//   - any environment loads without crashing; every warning is one non-empty line;
//   - every option's get() text is accepted by set() and reads back the same (a fixed point);
//   - a refused set() gives a reason and changes nothing; an accepted one changes only that option
//     (and at most LOW_WATERMARK, with a note);
//   - on every device size, the resolved low watermark is at most the high one.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "control/options.h"

namespace {

void check(bool ok) {
  if (!ok) __builtin_trap();
}

constexpr const char* kNames[] = {
#define CUDAPOOL_OPTION_NAME(NAME, field, Type, default_value, runtime, doc) #NAME,
    CUDAPOOL_OPTION_TABLE(CUDAPOOL_OPTION_NAME)
#undef CUDAPOOL_OPTION_NAME
};

std::map<std::string, std::string> snapshot(const cudapool::Options& options) {
  std::map<std::string, std::string> values;
  for (const char* name : kNames) {
    const std::optional<std::string> v = cudapool::get_option(options, name);
    check(v.has_value());
    values[name] = *v;
  }
  return values;
}

void check_fixed_point(const cudapool::Options& options) {
  for (const char* name : kNames) {
    cudapool::Options copy = options;
    const std::string value = *cudapool::get_option(options, name);
    std::string error;
    check(cudapool::set_option(&copy, name, value, &error, false));
    check(cudapool::get_option(copy, name) == value);
  }
}

void check_limits(const cudapool::Options& options, std::uint64_t total) {
  const cudapool::DeviceLimits limits = cudapool::resolve_device_limits(options, total);
  check(limits.low_watermark <= limits.high_watermark);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  std::map<std::string, std::string> env;
  std::vector<std::string> env_lines;
  std::vector<std::pair<std::string, std::string>> sets;
  std::uint64_t total = 80ull << 30;
  std::size_t start = 0;
  int lines = 0;
  while (start <= input.size() && lines++ < 64) {
    std::size_t end = input.find('\n', start);
    if (end == std::string_view::npos) end = input.size();
    const std::string line(input.substr(start, end - start));
    start = end + 1;
    if (line.rfind("set ", 0) == 0) {
      const std::size_t space = line.find(' ', 4);
      sets.emplace_back(line.substr(4, space == std::string::npos ? std::string::npos : space - 4),
                        space == std::string::npos ? "" : line.substr(space + 1));
    } else if (line.rfind('=', 0) == 0) {
      total = std::strtoull(line.c_str() + 1, nullptr, 10);
    } else if (const std::size_t eq = line.find('='); eq != std::string::npos) {
      env[line.substr(0, eq)] = line.substr(eq + 1);
      env_lines.push_back(line);
    }
  }
  std::vector<const char*> environ_list;
  for (const std::string& l : env_lines)
    environ_list.push_back(l.c_str());
  environ_list.push_back(nullptr);
  const cudapool::EnvLookup lookup = [&env](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  };

  std::vector<std::string> warnings;
  cudapool::Options options = cudapool::load_options(lookup, environ_list.data(), &warnings);
  for (const std::string& w : warnings)
    check(!w.empty() && w.find('\n') == std::string::npos);
  check(!cudapool::describe_options(options).empty());
  check_fixed_point(options);
  check_limits(options, total);
  check_limits(options, 0);

  for (const auto& [name, value] : sets) {
    const std::map<std::string, std::string> before = snapshot(options);
    std::string error, note;
    const bool ok = cudapool::set_option(&options, name, value, &error, true, &note);
    const std::map<std::string, std::string> after = snapshot(options);
    if (!ok) {
      check(!error.empty());
      check(before == after);
      continue;
    }
    int changed = 0;
    for (const char* n : kNames)
      if (before.at(n) != after.at(n) && std::string_view(n) != "LOW_WATERMARK") ++changed;
    check(changed <= 1);
    if (before.at("LOW_WATERMARK") != after.at("LOW_WATERMARK") && !note.empty())
      check(note.find('\n') == std::string::npos);
    check_fixed_point(options);
    check_limits(options, total);
  }
  return 0;
}
