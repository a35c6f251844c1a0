// Environment configuration of the stand-in runtime, read once at the first API call. A value
// that does not parse warns on stderr and keeps the default.
#include <strings.h>
#include <unistd.h>
#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "standin_internal.h"

namespace standin {

void warn(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);  // NOLINT(clang-analyzer-valist.Uninitialized)
  va_end(ap);
  fprintf(stderr, "cudart-standin: %s\n", buf);
}

bool parse_size(const char* text, uint64_t* out) {
  if (!text) return false;
  while (*text == ' ')
    ++text;
  if (*text == '\0' || *text == '-') return false;
  errno = 0;
  char* end = nullptr;
  const double value = strtod(text, &end);
  if (end == text || errno != 0 || !std::isfinite(value) || value < 0) return false;
  while (*end == ' ')
    ++end;
  struct Unit {
    const char* name;
    double factor;
  };
  static const Unit kUnits[] = {
      {"", 1},
      {"B", 1},
      {"K", 1024.0},
      {"KB", 1024.0},
      {"KIB", 1024.0},
      {"M", 1024.0 * 1024},
      {"MB", 1024.0 * 1024},
      {"MIB", 1024.0 * 1024},
      {"G", 1024.0 * 1024 * 1024},
      {"GB", 1024.0 * 1024 * 1024},
      {"GIB", 1024.0 * 1024 * 1024},
      {"T", 1024.0 * 1024 * 1024 * 1024},
      {"TB", 1024.0 * 1024 * 1024 * 1024},
      {"TIB", 1024.0 * 1024 * 1024 * 1024},
  };
  std::string unit(end);
  while (!unit.empty() && unit.back() == ' ')
    unit.pop_back();
  for (const Unit& u : kUnits) {
    if (strcasecmp(unit.c_str(), u.name) != 0) continue;
    const double bytes = std::floor(value * u.factor);
    if (bytes >= 18446744073709551615.0) return false;
    *out = static_cast<uint64_t>(bytes);
    return true;
  }
  return false;
}

namespace {

bool parse_u64(const char* text, uint64_t* out) {
  if (!text || !*text || *text == '-') return false;
  errno = 0;
  char* end = nullptr;
  const unsigned long long v = strtoull(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0') return false;
  *out = v;
  return true;
}

// "3,7,12" -> {3, 7, 12}
bool parse_list(const char* text, std::vector<uint64_t>* out) {
  std::vector<uint64_t> values;
  std::string s(text);
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t comma = s.find(',', pos);
    if (comma == std::string::npos) comma = s.size();
    std::string item = s.substr(pos, comma - pos);
    while (!item.empty() && item.front() == ' ')
      item.erase(item.begin());
    while (!item.empty() && item.back() == ' ')
      item.pop_back();
    uint64_t v = 0;
    if (!item.empty()) {
      if (!parse_u64(item.c_str(), &v) || v == 0) return false;
      values.push_back(v);
    }
    pos = comma + 1;
  }
  *out = std::move(values);
  return true;
}

bool parse_bool(const char* v) {
  return strcmp(v, "0") != 0 && strcasecmp(v, "false") != 0 && strcasecmp(v, "no") != 0;
}

// "create:3,map:5,create:7" -> the 3rd and 7th create and the 5th map fail.
bool parse_vmm_failures(const char* text, std::vector<uint64_t> (&out)[kVmmKindCount]) {
  std::vector<uint64_t> values[kVmmKindCount];
  std::string s(text);
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t comma = s.find(',', pos);
    if (comma == std::string::npos) comma = s.size();
    std::string item = s.substr(pos, comma - pos);
    pos = comma + 1;
    while (!item.empty() && item.front() == ' ')
      item.erase(item.begin());
    while (!item.empty() && item.back() == ' ')
      item.pop_back();
    if (item.empty()) continue;
    const size_t colon = item.find(':');
    if (colon == std::string::npos) return false;
    const std::string kind = item.substr(0, colon);
    uint64_t n = 0;
    if (!parse_u64(item.c_str() + colon + 1, &n) || n == 0) return false;
    int k = 0;
    while (k < kVmmKindCount && kind != kVmmKindNames[k])
      ++k;
    if (k == kVmmKindCount) return false;
    values[k].push_back(n);
  }
  for (int k = 0; k < kVmmKindCount; ++k)
    out[k] = std::move(values[k]);
  return true;
}

template <typename F>
void with_env(const char* name, F&& parse) {
  const char* v = getenv(name);
  if (!v || !*v) return;
  if (!parse(v)) warn("ignoring %s=%s (cannot parse it)", name, v);
}

}  // namespace

Config load_config() {
  Config c;
  with_env("STANDIN_DEVICE_COUNT", [&](const char* v) {
    uint64_t n = 0;
    if (!parse_u64(v, &n) || n > 64) return false;
    c.device_count = static_cast<int>(n);
    return true;
  });
  with_env("STANDIN_DEVICE_MEMORY", [&](const char* v) { return parse_size(v, &c.device_memory); });
  with_env("STANDIN_OTHER_MEMORY", [&](const char* v) { return parse_size(v, &c.other_memory); });
  with_env("STANDIN_MALLOC_LATENCY_US",
           [&](const char* v) { return parse_u64(v, &c.malloc_latency_us); });
  with_env("STANDIN_FREE_LATENCY_US",
           [&](const char* v) { return parse_u64(v, &c.free_latency_us); });
  with_env("STANDIN_FAIL_MALLOC_AT",
           [&](const char* v) { return parse_list(v, &c.fail_malloc_at); });
  with_env("STANDIN_FAIL_FREE_AT", [&](const char* v) { return parse_list(v, &c.fail_free_at); });
  with_env("STANDIN_FAIL_MALLOC_RATE", [&](const char* v) {
    char* end = nullptr;
    errno = 0;
    const double r = strtod(v, &end);
    if (errno != 0 || end == v || *end != '\0' || !(r >= 0.0 && r <= 1.0)) return false;
    c.fail_malloc_rate = r;
    return true;
  });
  with_env("STANDIN_SEED", [&](const char* v) { return parse_u64(v, &c.seed); });
  with_env("STANDIN_NO_DRIVER", [&](const char* v) {
    c.no_driver = parse_bool(v);
    return true;
  });
  with_env("STANDIN_DRIVER_LIBRARY", [&](const char* v) {
    c.driver_library = parse_bool(v);
    return true;
  });
  with_env("STANDIN_ASYNC_DELAY_US",
           [&](const char* v) { return parse_u64(v, &c.async_delay_us); });
  with_env("STANDIN_LATENCY_JITTER_US",
           [&](const char* v) { return parse_u64(v, &c.latency_jitter_us); });
  with_env("STANDIN_VMM", [&](const char* v) {
    c.vmm = parse_bool(v);
    return true;
  });
  with_env("STANDIN_VMM_GRANULARITY", [&](const char* v) {
    uint64_t g = 0;
    // A power of two and whole host pages, as every real granularity is.
    if (!parse_size(v, &g) || g == 0 || (g & (g - 1)) != 0 ||
        g % static_cast<uint64_t>(sysconf(_SC_PAGESIZE)) != 0 || g > (1ull << 40))
      return false;
    c.vmm_granularity = g;
    return true;
  });
  with_env("STANDIN_FAIL_VMM", [&](const char* v) { return parse_vmm_failures(v, c.fail_vmm_at); });
  return c;
}

}  // namespace standin
