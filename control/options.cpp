#include "control/options.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <utility>

extern char** environ;  // POSIX: the process's environment, scanned for unknown CUDAPOOL_* names

namespace cudapool {
namespace {

char to_lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

bool equals_ignore_case(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (to_lower(a[i]) != to_lower(b[i])) return false;
  }
  return true;
}

bool starts_with_ignore_case(std::string_view text, std::string_view prefix) {
  return text.size() >= prefix.size() && equals_ignore_case(text.substr(0, prefix.size()), prefix);
}

std::string_view trim(std::string_view text) {
  const auto blank = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  while (!text.empty() && blank(text.front()))
    text.remove_prefix(1);
  while (!text.empty() && blank(text.back()))
    text.remove_suffix(1);
  return text;
}

bool fail(std::string* error, std::string_view why) {
  if (error != nullptr) error->assign(why);
  return false;
}

constexpr std::string_view accepted_forms(OptionType type) {
  switch (type) {
    case OptionType::kBool:
      return "1, 0, true, false, yes, no, on, off";
    case OptionType::kSize:
      return "bytes (1048576), a binary unit (512KiB, 64M, 1.5GiB; K = KB = KiB) or a "
             "percentage of the device's memory (10%)";
    case OptionType::kDuration:
      return "milliseconds (30000), or with a unit (500ms, 30s)";
    case OptionType::kReuse:
      return "fence, immediate";
    case OptionType::kVmm:
      return "auto, on, off";
    case OptionType::kFramework:
      return "auto, off";
    case OptionType::kLogLevel:
      return "trace, debug, info, warn, error, off";
    case OptionType::kString:
      return "any text";
    case OptionType::kBacktrace:
      return "off, on, or a size in bytes or a binary unit (1MiB: only blocks of at least 1 MiB)";
  }
  return "";
}

// ---- One parser and one formatter per value type ----------------------------------------------

bool parse_value(std::string_view text, bool* out, std::string* error) {
  return parse_bool(text, out, error);
}
bool parse_value(std::string_view text, SizeSpec* out, std::string* error) {
  return parse_size(text, /*allow_percent=*/true, out, error);
}
bool parse_value(std::string_view text, std::chrono::milliseconds* out, std::string* error) {
  return parse_duration_ms(text, out, error);
}
bool parse_value(std::string_view text, ReuseMode* out, std::string* error) {
  return parse_reuse_mode(text, out, error);
}
bool parse_value(std::string_view text, VmmMode* out, std::string* error) {
  return parse_vmm_mode(text, out, error);
}
bool parse_value(std::string_view text, FrameworkMode* out, std::string* error) {
  return parse_framework_mode(text, out, error);
}
bool parse_value(std::string_view text, LogLevel* out, std::string* error) {
  return parse_log_level(text, out, error);
}
bool parse_value(std::string_view text, BacktraceMode* out, std::string* error) {
  return parse_backtrace_mode(text, out, error);
}
bool parse_value(std::string_view text, std::string* out, std::string* /*error*/) {
  out->assign(text);
  return true;
}

std::string format_value(bool value) {
  return value ? "1" : "0";
}
std::string format_value(const SizeSpec& value) {
  return format_size(value);
}
std::string format_value(std::chrono::milliseconds value) {
  return format_duration_ms(value);
}
std::string format_value(ReuseMode value) {
  return std::string(to_string(value));
}
std::string format_value(VmmMode value) {
  return std::string(to_string(value));
}
std::string format_value(FrameworkMode value) {
  return std::string(to_string(value));
}
std::string format_value(LogLevel value) {
  return std::string(to_string(value));
}
std::string format_value(const BacktraceMode& value) {
  if (!value.enabled) return "off";
  if (value.min_size == 0) return "on";
  return format_size(value.min_size);
}
std::string format_value(const std::string& value) {
  return value;
}

// ---- The table, as data and as field accessors (same order, same index) -----------------------

#define CUDAPOOL_OPTION_INFO(NAME, field, Type, default_value, runtime, doc)                       \
  OptionInfo{#NAME,  default_value, doc, accepted_forms(OptionType::k##Type), OptionType::k##Type, \
             runtime},
constexpr OptionInfo kTable[] = {CUDAPOOL_OPTION_TABLE(CUDAPOOL_OPTION_INFO)};
#undef CUDAPOOL_OPTION_INFO

struct FieldAccess {
  bool (*parse)(std::string_view text, Options* options, std::string* error);
  std::string (*format)(const Options& options);
};

#define CUDAPOOL_OPTION_ACCESS(NAME, field, Type, default_value, runtime, doc)  \
  FieldAccess{[](std::string_view text, Options* options, std::string* error) { \
                return parse_value(text, &options->field, error);               \
              },                                                                \
              [](const Options& options) { return format_value(options.field); }},
constexpr FieldAccess kAccess[] = {CUDAPOOL_OPTION_TABLE(CUDAPOOL_OPTION_ACCESS)};
#undef CUDAPOOL_OPTION_ACCESS

static_assert(std::size(kTable) == std::size(kAccess));

size_t index_of(const OptionInfo* info) {
  return static_cast<size_t>(info - kTable);
}

std::string env_name(std::string_view name) {
  std::string result(kEnvPrefix);
  result += name;
  return result;
}

std::string lower(std::string_view text) {
  std::string result(text);
  for (char& c : result)
    c = to_lower(c);
  return result;
}

// Edit distance, letter case ignored; for "did you mean" suggestions.
size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j)
    row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      const size_t substitution = diagonal + (to_lower(a[i - 1]) == to_lower(b[j - 1]) ? 0 : 1);
      row[j] = std::min({above + 1, row[j - 1] + 1, substitution});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::string_view closest_option_name(std::string_view name) {
  std::string_view best = kTable[0].name;
  size_t best_distance = SIZE_MAX;
  for (const OptionInfo& info : kTable) {
    const size_t distance = edit_distance(name, info.name);
    if (distance < best_distance) {
      best = info.name;
      best_distance = distance;
    }
  }
  return best;
}

std::string bad_value_message(const OptionInfo& info, std::string_view value,
                              std::string_view why) {
  std::string message = "bad value \"";
  message += value;
  message += "\" for ";
  message += info.name;
  message += ": ";
  message += why;
  message += "; accepted: ";
  message += info.accepted;
  return message;
}

}  // namespace

// ---- Value types --------------------------------------------------------------------------------

bool parse_bool(std::string_view text, bool* out, std::string* error) {
  text = trim(text);
  for (std::string_view yes : {"1", "true", "yes", "on"}) {
    if (equals_ignore_case(text, yes)) return *out = true, true;
  }
  for (std::string_view no : {"0", "false", "no", "off"}) {
    if (equals_ignore_case(text, no)) return *out = false, true;
  }
  return fail(error, "not a boolean");
}

std::string_view to_string(ReuseMode mode) {
  return mode == ReuseMode::kImmediate ? "immediate" : "fence";
}

bool parse_reuse_mode(std::string_view text, ReuseMode* out, std::string* error) {
  text = trim(text);
  for (ReuseMode mode : {ReuseMode::kFence, ReuseMode::kImmediate}) {
    if (equals_ignore_case(text, to_string(mode))) return *out = mode, true;
  }
  return fail(error, "not a reuse mode");
}

std::string_view to_string(VmmMode mode) {
  switch (mode) {
    case VmmMode::kOn:
      return "on";
    case VmmMode::kOff:
      return "off";
    case VmmMode::kAuto:
      break;
  }
  return "auto";
}

bool parse_vmm_mode(std::string_view text, VmmMode* out, std::string* error) {
  text = trim(text);
  for (VmmMode mode : {VmmMode::kAuto, VmmMode::kOn, VmmMode::kOff}) {
    if (equals_ignore_case(text, to_string(mode))) return *out = mode, true;
  }
  return fail(error, "not a VMM mode");
}

std::string_view to_string(FrameworkMode mode) {
  return mode == FrameworkMode::kOff ? "off" : "auto";
}

bool parse_framework_mode(std::string_view text, FrameworkMode* out, std::string* error) {
  text = trim(text);
  for (FrameworkMode mode : {FrameworkMode::kAuto, FrameworkMode::kOff}) {
    if (equals_ignore_case(text, to_string(mode))) return *out = mode, true;
  }
  return fail(error, "not a framework mode");
}

std::string_view to_string(LogLevel level) {
  switch (level) {
    case LogLevel::kTrace:
      return "trace";
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kError:
      return "error";
    case LogLevel::kOff:
      return "off";
  }
  return "off";
}

bool parse_log_level(std::string_view text, LogLevel* out, std::string* error) {
  text = trim(text);
  for (LogLevel level : {LogLevel::kTrace, LogLevel::kDebug, LogLevel::kInfo, LogLevel::kWarn,
                         LogLevel::kError, LogLevel::kOff}) {
    if (equals_ignore_case(text, to_string(level))) return *out = level, true;
  }
  if (equals_ignore_case(text, "warning")) return *out = LogLevel::kWarn, true;
  return fail(error, "not a log level");
}

bool parse_backtrace_mode(std::string_view text, BacktraceMode* out, std::string* error) {
  text = trim(text);
  bool flag = false;
  if (parse_bool(text, &flag, nullptr)) {
    *out = BacktraceMode{flag, 0};
    return true;
  }
  SizeSpec size;
  std::string why;
  if (!parse_size(text, /*allow_percent=*/false, &size, &why))
    return fail(error, "neither off/on nor a size (" + why + ")");
  *out = BacktraceMode{size.bytes != 0, size.bytes <= 1 ? 0 : size.bytes};
  return true;
}

// ---- The table ---------------------------------------------------------------------------------

std::span<const OptionInfo> option_table() {
  return kTable;
}

const OptionInfo* find_option(std::string_view name) {
  name = trim(name);
  if (starts_with_ignore_case(name, kEnvPrefix)) name.remove_prefix(kEnvPrefix.size());
  for (const OptionInfo& info : kTable) {
    if (equals_ignore_case(name, info.name)) return &info;
  }
  return nullptr;
}

Options::Options() {
  // The defaults are text in the table, read by the options' own parsers; the unit tests check
  // that every default parses.
  for (size_t i = 0; i < std::size(kTable); ++i) {
    kAccess[i].parse(kTable[i].default_value, this, nullptr);
  }
}

Options default_options() {
  return Options();
}

bool clamp_watermarks(Options* options, std::string* note) {
  SizeSpec& low = options->low_watermark;
  const SizeSpec& high = options->high_watermark;
  if (low.is_percent != high.is_percent) return false;  // compared per device, once resolved
  const bool above = low.is_percent ? low.percent > high.percent : low.bytes > high.bytes;
  if (!above) return false;
  if (note != nullptr) {
    *note = "CUDAPOOL_LOW_WATERMARK (" + format_size(low) + ") is above CUDAPOOL_HIGH_WATERMARK (" +
            format_size(high) + "); using " + format_size(high) + " for the low watermark too";
  }
  low = high;
  return true;
}

DeviceLimits resolve_device_limits(const Options& options, uint64_t device_total) {
  DeviceLimits limits;
  limits.high_watermark = options.high_watermark.resolve(device_total);
  limits.low_watermark =
      std::min(options.low_watermark.resolve(device_total), limits.high_watermark);
  limits.min_device_free = options.min_device_free.resolve(device_total);
  limits.limit = options.limit.resolve(device_total);
  return limits;
}

Options load_options(const EnvLookup& lookup, const char* const* environ_list,
                     std::vector<std::string>* warnings) {
  Options options;
  for (size_t i = 0; i < std::size(kTable); ++i) {
    const OptionInfo& info = kTable[i];
    const std::string name = env_name(info.name);
    const char* value = lookup ? lookup(name.c_str()) : nullptr;
    if (value == nullptr || *value == '\0') continue;  // unset, or set to nothing
    std::string why;
    if (!kAccess[i].parse(value, &options, &why) && warnings != nullptr) {
      std::string warning = name;
      warning.append("=\"").append(value).append("\": ").append(why);
      warning.append("; accepted: ").append(info.accepted).append("; using the default ");
      warning.append(info.default_value.empty() ? "(empty)" : info.default_value);
      warnings->push_back(std::move(warning));
    }
  }

  for (const char* const* entry = environ_list; entry != nullptr && *entry != nullptr; ++entry) {
    std::string_view variable(*entry);
    variable = variable.substr(0, variable.find('='));
    if (!starts_with_ignore_case(variable, kEnvPrefix)) continue;
    const std::string_view option = variable.substr(kEnvPrefix.size());
    const OptionInfo* known = find_option(option);
    if (known != nullptr && variable.substr(0, kEnvPrefix.size()) == kEnvPrefix &&
        option == known->name) {
      continue;  // read above
    }
    if (warnings != nullptr) {
      const std::string_view closest = known ? known->name : closest_option_name(option);
      warnings->push_back(std::string(variable) + " is not a cudapool variable and is ignored " +
                          "(did you mean " + env_name(closest) + "?)");
    }
  }

  std::string note;
  if (clamp_watermarks(&options, &note) && warnings != nullptr) warnings->push_back(note);
  return options;
}

Options load_options_from_environment(std::vector<std::string>* warnings) {
  return load_options([](const char* name) -> const char* { return std::getenv(name); }, environ,
                      warnings);
}

bool set_option(Options* options, std::string_view name, std::string_view value, std::string* error,
                bool runtime_only, std::string* note) {
  if (note != nullptr) note->clear();
  const OptionInfo* info = find_option(name);
  if (info == nullptr) {
    return fail(error, "unknown option \"" + std::string(name) + "\" (did you mean " +
                           std::string(closest_option_name(trim(name))) + "?)");
  }
  if (runtime_only && !info->runtime) {
    return fail(error, std::string(info->name) +
                           " can only be set at start-up, with the environment variable " +
                           env_name(info->name));
  }
  Options changed = *options;
  std::string why;
  if (!kAccess[index_of(info)].parse(value, &changed, &why)) {
    return fail(error, bad_value_message(*info, value, why));
  }
  clamp_watermarks(&changed, note);
  *options = std::move(changed);
  return true;
}

std::optional<std::string> get_option(const Options& options, std::string_view name) {
  const OptionInfo* info = find_option(name);
  if (info == nullptr) return std::nullopt;
  return kAccess[index_of(info)].format(options);
}

std::string describe_options(const Options& options) {
  std::string line;
  for (size_t i = 0; i < std::size(kTable); ++i) {
    if (i > 0) line += ' ';
    line += lower(kTable[i].name);
    line += '=';
    const std::string value = kAccess[i].format(options);
    const bool quote = value.empty() || value.find_first_of(" \t\"") != std::string::npos;
    if (quote) line += '"';
    line += value;
    if (quote) line += '"';
  }
  return line;
}

std::string options_markdown_table() {
  std::string table =
      "| Variable | Default | Run time | Description |\n"
      "| --- | --- | --- | --- |\n";
  for (const OptionInfo& info : kTable) {
    std::string doc;
    for (char c : info.doc) {
      if (c == '|') doc += '\\';
      doc += c;
    }
    table += "| `" + env_name(info.name) + "` | ";
    table += info.default_value.empty() ? std::string("(empty)")
                                        : "`" + std::string(info.default_value) + "`";
    table += info.runtime ? " | yes | " : " | no | ";
    table += doc + " |\n";
  }
  return table;
}

std::string resolve_control_dir(const Options& options, const EnvLookup& lookup) {
  if (!options.control_dir.empty()) return options.control_dir;
  const char* runtime_dir = lookup ? lookup("XDG_RUNTIME_DIR") : nullptr;
  if (runtime_dir != nullptr && runtime_dir[0] == '/') {
    std::string dir(runtime_dir);
    while (dir.size() > 1 && dir.back() == '/')
      dir.pop_back();
    if (dir != "/") dir += '/';
    return dir + "cudapool";
  }
  return "/tmp/cudapool-" + std::to_string(::getuid());
}

std::string resolve_control_dir(const Options& options) {
  return resolve_control_dir(options,
                             [](const char* name) -> const char* { return std::getenv(name); });
}

std::string expand_pid(const std::string& pattern) {
  std::string out;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] == '%' && i + 1 < pattern.size() && pattern[i + 1] == 'p') {
      out += std::to_string(getpid());
      ++i;
    } else {
      out += pattern[i];
    }
  }
  return out;
}

}  // namespace cudapool
