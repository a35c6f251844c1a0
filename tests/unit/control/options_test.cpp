#include "control/options.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace cudapool {
namespace {

constexpr uint64_t MiB = uint64_t{1} << 20;
constexpr uint64_t GiB = uint64_t{1} << 30;

// A process environment for load_options: lookup by name plus the "NAME=value" list.
class FakeEnv {
 public:
  FakeEnv& set(const std::string& name, const std::string& value) {
    vars_[name] = value;
    return *this;
  }
  EnvLookup lookup() const {
    return [this](const char* name) -> const char* {
      auto it = vars_.find(name);
      return it == vars_.end() ? nullptr : it->second.c_str();
    };
  }
  const char* const* list() {
    entries_.clear();
    for (const auto& [name, value] : vars_)
      entries_.push_back(std::string(name).append("=").append(value));
    pointers_.clear();
    for (const std::string& entry : entries_)
      pointers_.push_back(entry.c_str());
    pointers_.push_back(nullptr);
    return pointers_.data();
  }
  Options load(std::vector<std::string>* warnings) {
    return load_options(lookup(), list(), warnings);
  }

 private:
  std::map<std::string, std::string> vars_;
  std::vector<std::string> entries_;
  std::vector<const char*> pointers_;
};

std::string env_name(std::string_view name) {
  return "CUDAPOOL_" + std::string(name);
}

std::string joined(const std::vector<std::string>& lines) {
  std::string all;
  for (const std::string& line : lines)
    all += line + "\n";
  return all;
}

// A value of the option's type that does not parse; empty for types that accept any text.
std::string bad_value_for(OptionType type) {
  switch (type) {
    case OptionType::kBool:
      return "maybe";
    case OptionType::kSize:
      return "lots";
    case OptionType::kDuration:
      return "-5";
    case OptionType::kReuse:
      return "sometimes";
    case OptionType::kVmm:
      return "maybe";
    case OptionType::kFramework:
      return "on";
    case OptionType::kLogLevel:
      return "loud";
    case OptionType::kString:
      return "";
    case OptionType::kBacktrace:
      return "sometimes";
  }
  return "";
}

// A valid, non-default value per option and its canonical text. A new option fails the round
// trip test until it is listed here.
const std::map<std::string, std::pair<std::string, std::string>>& non_default_values() {
  static const std::map<std::string, std::pair<std::string, std::string>> kValues = {
      {"DISABLE", {"yes", "1"}},
      {"HIGH_WATERMARK", {"6144 MiB", "6GiB"}},
      {"LOW_WATERMARK", {"1.5g", "1.5GiB"}},
      {"IDLE_RELEASE_MS", {"5s", "5000"}},
      {"MIN_DEVICE_FREE", {"10%", "10%"}},
      {"LIMIT", {"12.5%", "12.5%"}},
      {"REUSE", {"IMMEDIATE", "immediate"}},
      {"VMM", {"Off", "off"}},
      {"FRAMEWORK", {" OFF", "off"}},
      {"LOG_LEVEL", {"Debug", "debug"}},
      {"LOG_FILE", {"/var/log/cudapool.log", "/var/log/cudapool.log"}},
      {"TRACE_FILE", {"/tmp/trace-%p.csv", "/tmp/trace-%p.csv"}},
      {"CONTROL", {"off", "0"}},
      {"CONTROL_DIR", {"/run/pools", "/run/pools"}},
      {"BACKTRACE", {"4 MiB", "4MiB"}},
      {"REPORT_AT_EXIT", {"yes", "1"}},
      {"TIMELINE_FILE", {"/tmp/timeline-%p.csv", "/tmp/timeline-%p.csv"}},
      {"TIMELINE_MS", {"1s", "1000"}},
  };
  return kValues;
}

// ---- The table ---------------------------------------------------------------------------------

TEST(OptionTable, EveryRowIsNamedAndDocumented) {
  ASSERT_FALSE(option_table().empty());
  for (const OptionInfo& info : option_table()) {
    ASSERT_FALSE(info.name.empty());
    for (char c : info.name) {
      EXPECT_TRUE((c >= 'A' && c <= 'Z') || c == '_') << info.name;
    }
    EXPECT_GT(info.doc.size(), 20u) << info.name;
    EXPECT_LT(info.doc.size(), 220u) << info.name << ": keep the doc one line";
    EXPECT_EQ(info.doc.back(), '.') << info.name;
    EXPECT_EQ(info.doc.find('\n'), std::string_view::npos) << info.name;
    EXPECT_FALSE(info.accepted.empty()) << info.name;
  }
}

TEST(OptionTable, NamesAreUnique) {
  std::set<std::string_view> names;
  for (const OptionInfo& info : option_table()) {
    EXPECT_TRUE(names.insert(info.name).second) << "duplicate " << info.name;
  }
}

TEST(OptionTable, EveryDefaultParsesWithItsOwnParserAndIsCanonical) {
  const Options defaults = default_options();
  for (const OptionInfo& info : option_table()) {
    Options options;
    std::string error;
    EXPECT_TRUE(set_option(&options, info.name, info.default_value, &error, false))
        << info.name << ": " << error;
    EXPECT_EQ(get_option(defaults, info.name), std::string(info.default_value)) << info.name;
  }
}

TEST(OptionTable, ProductDefaults) {
  const Options o;
  EXPECT_FALSE(o.disable);
  EXPECT_EQ(o.high_watermark, SizeSpec::Bytes(4 * GiB));
  EXPECT_EQ(o.low_watermark, SizeSpec::Bytes(1 * GiB));
  EXPECT_EQ(o.idle_release_ms, std::chrono::milliseconds(30000));
  EXPECT_EQ(o.min_device_free, SizeSpec::Bytes(0));
  EXPECT_EQ(o.limit, SizeSpec::Bytes(0));
  EXPECT_EQ(o.reuse, ReuseMode::kFence);
  EXPECT_EQ(o.vmm, VmmMode::kAuto);
  EXPECT_EQ(o.log_level, LogLevel::kInfo);
  EXPECT_EQ(o.log_file, "");
  EXPECT_TRUE(o.control);
  EXPECT_EQ(o.control_dir, "");

  const std::set<std::string_view> runtime = {"HIGH_WATERMARK",  "LOW_WATERMARK", "IDLE_RELEASE_MS",
                                              "MIN_DEVICE_FREE", "LIMIT",         "REUSE",
                                              "LOG_LEVEL"};
  for (const OptionInfo& info : option_table()) {
    EXPECT_EQ(info.runtime, runtime.count(info.name) == 1) << info.name;
  }
}

TEST(OptionTable, FindOption) {
  ASSERT_NE(find_option("HIGH_WATERMARK"), nullptr);
  EXPECT_EQ(find_option("high_watermark"), find_option("HIGH_WATERMARK"));
  EXPECT_EQ(find_option("CUDAPOOL_HIGH_WATERMARK"), find_option("HIGH_WATERMARK"));
  EXPECT_EQ(find_option("cudapool_High_Watermark"), find_option("HIGH_WATERMARK"));
  EXPECT_EQ(find_option("HIGH"), nullptr);
  EXPECT_EQ(find_option(""), nullptr);
  EXPECT_EQ(find_option("CUDAPOOL_"), nullptr);
}

TEST(OptionTable, MarkdownHasOneRowPerOption) {
  const std::string table = options_markdown_table();
  std::istringstream lines(table);
  std::vector<std::string> rows;
  for (std::string line; std::getline(lines, line);)
    rows.push_back(line);
  ASSERT_EQ(rows.size(), option_table().size() + 2);
  EXPECT_EQ(rows[0], "| Variable | Default | Run time | Description |");
  EXPECT_EQ(rows[1], "| --- | --- | --- | --- |");
  size_t i = 2;
  for (const OptionInfo& info : option_table()) {
    const std::string& row = rows[i++];
    EXPECT_EQ(row.rfind("| `" + env_name(info.name) + "` | ", 0), 0u) << row;
    EXPECT_NE(row.find(info.doc), std::string::npos) << row;
    EXPECT_NE(row.find(info.runtime ? "| yes |" : "| no |"), std::string::npos) << row;
    EXPECT_EQ(row.back(), '|') << row;
  }
  EXPECT_NE(table.find("| `CUDAPOOL_HIGH_WATERMARK` | `4GiB` | yes |"), std::string::npos);
  EXPECT_EQ(table, options_markdown_table());  // stable text
}

TEST(OptionTable, DescribeIsOneLineWithEveryOption) {
  const std::string line = describe_options(Options());
  EXPECT_EQ(line.find('\n'), std::string::npos);
  EXPECT_EQ(line.rfind("disable=0 high_watermark=4GiB low_watermark=1GiB ", 0), 0u) << line;
  EXPECT_NE(line.find(" idle_release_ms=30000 "), std::string::npos) << line;
  EXPECT_NE(
      line.find(" reuse=fence vmm=auto framework=auto log_level=info log_file=\"\" control=1 "),
      std::string::npos)
      << line;
  for (const OptionInfo& info : option_table()) {
    std::string field(info.name);
    for (char& c : field)
      c = static_cast<char>(std::tolower(c));
    EXPECT_NE(line.find(field + "="), std::string::npos) << field;
  }
}

// ---- Loading from the environment
// ----------------------------------------------------------------

TEST(LoadOptions, NoVariablesGiveDefaultsAndNoWarnings) {
  FakeEnv env;
  env.set("PATH", "/usr/bin").set("HOME", "/root");
  std::vector<std::string> warnings;
  const Options options = env.load(&warnings);
  EXPECT_TRUE(warnings.empty()) << joined(warnings);
  EXPECT_EQ(describe_options(options), describe_options(default_options()));
}

TEST(LoadOptions, ReadsEveryVariable) {
  FakeEnv env;
  for (const auto& [name, value] : non_default_values())
    env.set(env_name(name), value.first);
  std::vector<std::string> warnings;
  const Options options = env.load(&warnings);
  EXPECT_TRUE(warnings.empty()) << joined(warnings);
  for (const auto& [name, value] : non_default_values()) {
    EXPECT_EQ(get_option(options, name), value.second) << name;
  }
  EXPECT_TRUE(options.disable);
  EXPECT_EQ(options.low_watermark, SizeSpec::Bytes(GiB + GiB / 2));
  EXPECT_EQ(options.reuse, ReuseMode::kImmediate);
}

TEST(LoadOptions, EachBadValueWarnsOnceNamingVariableValueAndFormsAndKeepsDefault) {
  size_t checked = 0;
  for (const OptionInfo& info : option_table()) {
    const std::string bad = bad_value_for(info.type);
    if (bad.empty()) continue;
    ++checked;
    FakeEnv env;
    env.set(env_name(info.name), bad);
    std::vector<std::string> warnings;
    const Options options = env.load(&warnings);
    ASSERT_EQ(warnings.size(), 1u) << info.name << "\n" << joined(warnings);
    const std::string& warning = warnings[0];
    EXPECT_NE(warning.find(env_name(info.name)), std::string::npos) << warning;
    EXPECT_NE(warning.find("\"" + bad + "\""), std::string::npos) << warning;
    EXPECT_NE(warning.find(info.accepted), std::string::npos) << warning;
    EXPECT_EQ(get_option(options, info.name), std::string(info.default_value)) << info.name;
  }
  EXPECT_GE(checked, 9u);
}

TEST(LoadOptions, BadSizeWarningSaysWhy) {
  FakeEnv env;
  env.set("CUDAPOOL_HIGH_WATERMARK", "2 GB!");
  std::vector<std::string> warnings;
  const Options options = env.load(&warnings);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("unknown unit"), std::string::npos) << warnings[0];
  EXPECT_NE(warnings[0].find("default 4GiB"), std::string::npos) << warnings[0];
  EXPECT_EQ(options.high_watermark, SizeSpec::Bytes(4 * GiB));
}

TEST(LoadOptions, EmptyValueCountsAsUnset) {
  FakeEnv env;
  env.set("CUDAPOOL_LIMIT", "").set("CUDAPOOL_CONTROL", "");
  std::vector<std::string> warnings;
  const Options options = env.load(&warnings);
  EXPECT_TRUE(warnings.empty()) << joined(warnings);
  EXPECT_TRUE(options.control);
}

TEST(LoadOptions, UnknownVariableWarnsWithTheClosestOption) {
  FakeEnv env;
  env.set("CUDAPOOL_HIGH_WATERMAK", "3GiB").set("CUDAPOOL_LOW_WATERMARK", "256MiB");
  std::vector<std::string> warnings;
  const Options options = env.load(&warnings);
  ASSERT_EQ(warnings.size(), 1u) << joined(warnings);
  EXPECT_NE(warnings[0].find("CUDAPOOL_HIGH_WATERMAK "), std::string::npos) << warnings[0];
  EXPECT_NE(warnings[0].find("did you mean CUDAPOOL_HIGH_WATERMARK?"), std::string::npos)
      << warnings[0];
  EXPECT_EQ(options.high_watermark, SizeSpec::Bytes(4 * GiB));
  EXPECT_EQ(options.low_watermark, SizeSpec::Bytes(256 * MiB));
}

TEST(LoadOptions, WrongLetterCaseIsNotReadAndIsWarned) {
  FakeEnv env;
  env.set("cudapool_limit", "1G").set("CUDAPOOL_Reuse", "immediate");
  std::vector<std::string> warnings;
  const Options options = env.load(&warnings);
  ASSERT_EQ(warnings.size(), 2u) << joined(warnings);
  const std::string all = joined(warnings);
  EXPECT_NE(all.find("cudapool_limit is not"), std::string::npos) << all;
  EXPECT_NE(all.find("did you mean CUDAPOOL_LIMIT?"), std::string::npos) << all;
  EXPECT_NE(all.find("did you mean CUDAPOOL_REUSE?"), std::string::npos) << all;
  EXPECT_EQ(options.limit, SizeSpec::Bytes(0));
  EXPECT_EQ(options.reuse, ReuseMode::kFence);
}

TEST(LoadOptions, NullEnvironListAndNullWarningsAreAccepted) {
  FakeEnv env;
  env.set("CUDAPOOL_LIMIT", "junk");
  const Options options = load_options(env.lookup(), nullptr, nullptr);
  EXPECT_EQ(options.limit, SizeSpec::Bytes(0));
}

TEST(LoadOptions, LowAboveHighIsClampedWithAWarning) {
  FakeEnv env;
  env.set("CUDAPOOL_HIGH_WATERMARK", "2GiB").set("CUDAPOOL_LOW_WATERMARK", "3GiB");
  std::vector<std::string> warnings;
  const Options options = env.load(&warnings);
  ASSERT_EQ(warnings.size(), 1u) << joined(warnings);
  EXPECT_NE(warnings[0].find("CUDAPOOL_LOW_WATERMARK (3GiB)"), std::string::npos) << warnings[0];
  EXPECT_NE(warnings[0].find("CUDAPOOL_HIGH_WATERMARK (2GiB)"), std::string::npos) << warnings[0];
  EXPECT_EQ(options.low_watermark, SizeSpec::Bytes(2 * GiB));
  EXPECT_EQ(options.high_watermark, SizeSpec::Bytes(2 * GiB));
}

TEST(LoadOptions, PercentWatermarksAreClampedToo) {
  FakeEnv env;
  env.set("CUDAPOOL_HIGH_WATERMARK", "10%").set("CUDAPOOL_LOW_WATERMARK", "20%");
  std::vector<std::string> warnings;
  const Options options = env.load(&warnings);
  EXPECT_EQ(warnings.size(), 1u) << joined(warnings);
  EXPECT_EQ(options.low_watermark, SizeSpec::Percent(10));
}

TEST(LoadOptions, MixedWatermarksAreClampedPerDevice) {
  FakeEnv env;
  env.set("CUDAPOOL_HIGH_WATERMARK", "10%").set("CUDAPOOL_LOW_WATERMARK", "4GiB");
  std::vector<std::string> warnings;
  const Options options = env.load(&warnings);
  EXPECT_TRUE(warnings.empty()) << joined(warnings);
  const DeviceLimits small = resolve_device_limits(options, 16 * GiB);
  EXPECT_EQ(small.high_watermark, 16 * GiB / 10);
  EXPECT_EQ(small.low_watermark, 16 * GiB / 10);
  const DeviceLimits large = resolve_device_limits(options, 80 * GiB);
  EXPECT_EQ(large.high_watermark, 8 * GiB);
  EXPECT_EQ(large.low_watermark, 4 * GiB);
}

// ---- set / get ---------------------------------------------------------------------------------

TEST(SetGet, RoundTripForEveryOption) {
  for (const OptionInfo& info : option_table()) {
    auto it = non_default_values().find(std::string(info.name));
    ASSERT_NE(it, non_default_values().end()) << "add a test value for " << info.name;
    const auto& [input, canonical] = it->second;
    Options options;
    std::string error;
    ASSERT_TRUE(set_option(&options, info.name, input, &error, false)) << info.name << error;
    EXPECT_EQ(get_option(options, info.name), canonical) << info.name;
    EXPECT_NE(get_option(options, info.name), std::string(info.default_value)) << info.name;
    // The canonical text parses back to the same value.
    Options again;
    ASSERT_TRUE(set_option(&again, info.name, canonical, &error, false)) << info.name << error;
    EXPECT_EQ(get_option(again, info.name), canonical) << info.name;
  }
}

TEST(SetGet, NameIsCaseInsensitiveWithOrWithoutPrefix) {
  Options options;
  std::string error;
  EXPECT_TRUE(set_option(&options, "limit", "1G", &error, true)) << error;
  EXPECT_EQ(options.limit, SizeSpec::Bytes(GiB));
  EXPECT_TRUE(set_option(&options, "CUDAPOOL_LIMIT", "2G", &error, true)) << error;
  EXPECT_EQ(options.limit, SizeSpec::Bytes(2 * GiB));
  EXPECT_TRUE(set_option(&options, "cudapool_Limit", "3G", &error, true)) << error;
  EXPECT_EQ(get_option(options, "Cudapool_limit"), "3GiB");
  EXPECT_EQ(get_option(options, "nonsense"), std::nullopt);
}

TEST(SetGet, RuntimeOnlyRefusesStartUpOptions) {
  size_t refused = 0;
  for (const OptionInfo& info : option_table()) {
    Options options;
    const std::string before = describe_options(options);
    const std::string& value = non_default_values().at(std::string(info.name)).first;
    std::string error;
    const bool ok = set_option(&options, info.name, value, &error, /*runtime_only=*/true);
    EXPECT_EQ(ok, info.runtime) << info.name;
    if (!info.runtime) {
      ++refused;
      EXPECT_NE(error.find("start-up"), std::string::npos) << error;
      EXPECT_NE(error.find(env_name(info.name)), std::string::npos) << error;
      EXPECT_EQ(describe_options(options), before) << info.name;
    }
  }
  EXPECT_GE(refused, 4u);  // DISABLE, LOG_FILE, CONTROL, CONTROL_DIR and later start-up options
}

TEST(SetGet, BadValueChangesNothingAndSaysWhy) {
  Options options;
  std::string error;
  EXPECT_FALSE(set_option(&options, "HIGH_WATERMARK", "-3G", &error, true));
  EXPECT_NE(error.find("HIGH_WATERMARK"), std::string::npos) << error;
  EXPECT_NE(error.find("\"-3G\""), std::string::npos) << error;
  EXPECT_NE(error.find(find_option("HIGH_WATERMARK")->accepted), std::string::npos) << error;
  EXPECT_EQ(options.high_watermark, SizeSpec::Bytes(4 * GiB));
}

TEST(SetGet, UnknownNameSuggestsTheClosest) {
  Options options;
  std::string error;
  EXPECT_FALSE(set_option(&options, "low_watermak", "1G", &error, true));
  EXPECT_NE(error.find("did you mean LOW_WATERMARK?"), std::string::npos) << error;
}

TEST(SetGet, LoweringHighBelowLowClampsLowAndSaysSo) {
  Options options;
  std::string error;
  std::string note = "stale";
  ASSERT_TRUE(set_option(&options, "HIGH_WATERMARK", "8G", &error, true, &note));
  EXPECT_EQ(note, "");
  ASSERT_TRUE(set_option(&options, "HIGH_WATERMARK", "256M", &error, true, &note));
  EXPECT_EQ(options.low_watermark, SizeSpec::Bytes(256 * MiB));
  EXPECT_NE(note.find("LOW_WATERMARK (1GiB)"), std::string::npos) << note;
  ASSERT_TRUE(set_option(&options, "LOW_WATERMARK", "1G", &error, true, &note));
  EXPECT_EQ(options.low_watermark, SizeSpec::Bytes(256 * MiB));
  EXPECT_FALSE(note.empty());
}

TEST(ValueParsers, BoolsEnumsAndLevels) {
  for (const char* yes : {"1", "true", "TRUE", "yes", "Yes", "on", "ON", " on "}) {
    bool value = false;
    EXPECT_TRUE(parse_bool(yes, &value, nullptr)) << yes;
    EXPECT_TRUE(value) << yes;
  }
  for (const char* no : {"0", "false", "False", "no", "NO", "off", "Off"}) {
    bool value = true;
    EXPECT_TRUE(parse_bool(no, &value, nullptr)) << no;
    EXPECT_FALSE(value) << no;
  }
  for (const char* junk : {"", "2", "y", "n", "enable", "truee", "-1"}) {
    bool value = true;
    std::string error;
    EXPECT_FALSE(parse_bool(junk, &value, &error)) << junk;
    EXPECT_TRUE(value);
    EXPECT_FALSE(error.empty());
  }
  LogLevel level = LogLevel::kOff;
  EXPECT_TRUE(parse_log_level("WARN", &level, nullptr));
  EXPECT_EQ(level, LogLevel::kWarn);
  EXPECT_TRUE(parse_log_level("warning", &level, nullptr));
  EXPECT_EQ(level, LogLevel::kWarn);
  EXPECT_FALSE(parse_log_level("critical", &level, nullptr));
  ReuseMode mode = ReuseMode::kFence;
  EXPECT_TRUE(parse_reuse_mode("Immediate", &mode, nullptr));
  EXPECT_EQ(mode, ReuseMode::kImmediate);
  EXPECT_FALSE(parse_reuse_mode("never", &mode, nullptr));
  VmmMode vmm = VmmMode::kAuto;
  EXPECT_TRUE(parse_vmm_mode(" ON ", &vmm, nullptr));
  EXPECT_EQ(vmm, VmmMode::kOn);
  EXPECT_TRUE(parse_vmm_mode("off", &vmm, nullptr));
  EXPECT_EQ(vmm, VmmMode::kOff);
  EXPECT_FALSE(parse_vmm_mode("pages", &vmm, nullptr));
  FrameworkMode framework = FrameworkMode::kAuto;
  EXPECT_TRUE(parse_framework_mode("Off", &framework, nullptr));
  EXPECT_EQ(framework, FrameworkMode::kOff);
  EXPECT_TRUE(parse_framework_mode("auto", &framework, nullptr));
  EXPECT_EQ(framework, FrameworkMode::kAuto);
  EXPECT_FALSE(parse_framework_mode("torch", &framework, nullptr));
}

// ---- Control directory -----------------------------------------------------------------------

TEST(ResolveControlDir, ExplicitThenXdgThenTmp) {
  const std::string tmp = "/tmp/cudapool-" + std::to_string(::getuid());
  FakeEnv env;
  Options options;
  EXPECT_EQ(resolve_control_dir(options, env.lookup()), tmp);
  env.set("XDG_RUNTIME_DIR", "/run/user/1000");
  EXPECT_EQ(resolve_control_dir(options, env.lookup()), "/run/user/1000/cudapool");
  env.set("XDG_RUNTIME_DIR", "/run/user/1000/");
  EXPECT_EQ(resolve_control_dir(options, env.lookup()), "/run/user/1000/cudapool");
  env.set("XDG_RUNTIME_DIR", "relative/dir");
  EXPECT_EQ(resolve_control_dir(options, env.lookup()), tmp);
  env.set("XDG_RUNTIME_DIR", "");
  EXPECT_EQ(resolve_control_dir(options, env.lookup()), tmp);
  env.set("XDG_RUNTIME_DIR", "/run/user/1000");
  options.control_dir = "/srv/pipes";
  EXPECT_EQ(resolve_control_dir(options, env.lookup()), "/srv/pipes");
}

TEST(FilePattern, EveryPercentPIsThePid) {
  const std::string pid = std::to_string(getpid());
  EXPECT_EQ("/tmp/t-" + pid + "-" + pid + ".csv", expand_pid("/tmp/t-%p-%p.csv"));
  EXPECT_EQ("/tmp/plain.csv", expand_pid("/tmp/plain.csv"));
  EXPECT_EQ("100%", expand_pid("100%"));
  EXPECT_EQ("%d" + pid, expand_pid("%d%p"));
}

}  // namespace
}  // namespace cudapool

// ---- the README's table ------------------------------------------------------------------------

// README.md carries options_markdown_table() between two markers; a changed row in the table
// (name, default, doc) must be copied there. On failure the expected text is printed.
TEST(OptionsReadme, TableMatchesTheCode) {
  const std::filesystem::path readme =
      std::filesystem::path(__FILE__).parent_path() / "../../../README.md";
  std::ifstream in(readme);
  ASSERT_TRUE(in) << "cannot read " << readme;
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string begin = "<!-- options:begin (generated from control/options.h) -->\n";
  const std::string end = "<!-- options:end -->";
  const std::size_t b = text.find(begin);
  const std::size_t e = text.find(end);
  ASSERT_NE(b, std::string::npos) << "README.md lacks the line: " << begin;
  ASSERT_NE(e, std::string::npos) << "README.md lacks the line: " << end;
  ASSERT_LT(b, e);
  EXPECT_EQ(text.substr(b + begin.size(), e - b - begin.size()), cudapool::options_markdown_table())
      << "README.md's options table is out of date; replace it with the text above";
}
