// Fuzz target of the control pipe's command language (control/command.h) and of the stats text
// readers (control/stats_format.h). Built as a libFuzzer target where the compiler is clang
// (-DCUDAPOOL_FUZZ=ON), and always as a plain driver (fuzz_driver.cpp) that runs the seed corpus
// in tests/fuzz/corpus/command/ plus deterministic mutations of it as a CTest test.
//
// Properties checked (a violation traps):
//   - any byte string is parsed without crashing into a command, a blank, or a refusal with a
//   reason;
//   - a reply always ends with "OK\n" or "ERR <reason>\n" and has no other ERR line at its end;
//   - after a successful `set`, `get` gives a canonical value that `set` accepts again and that
//     reads back the same (get(set(get(x))) == get(x)).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "control/command.h"
#include "control/stats_format.h"
#include "tests/unit/control/fake_target.h"

namespace {

void check(bool ok) {
  if (!ok) __builtin_trap();
}

void run_line(std::string_view line, cudapool::testing_support::FakeTarget& target) {
  const cudapool::ParsedLine parsed = cudapool::parse_command(line);
  if (parsed.blank) {
    check(!parsed.command);
    return;
  }
  check(parsed.command.has_value() || !parsed.error.empty());
  check(parsed.reply_path.empty() || parsed.reply_path.front() == '/');
  if (!parsed.command) return;
  const cudapool::CommandResult result = cudapool::execute_command(*parsed.command, target);
  const std::string reply = cudapool::format_reply(result);
  check(reply.size() >= 3 && reply.back() == '\n');
  const std::size_t last = reply.rfind('\n', reply.size() - 2);
  const std::string_view tail =
      std::string_view(reply).substr(last == std::string::npos ? 0 : last + 1);
  check(result.ok ? tail == "OK\n" : tail.substr(0, 4) == "ERR ");
  if (parsed.command->kind == cudapool::CommandKind::kSet && result.ok) {
    const std::optional<std::string> value = target.get_option(parsed.command->name);
    check(value.has_value());
    std::string error;
    check(target.set_option(parsed.command->name, *value, &error, nullptr));
    check(target.get_option(parsed.command->name) == value);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  cudapool::testing_support::FakeTarget target;
  std::size_t start = 0;
  int lines = 0;
  while (start <= input.size() && lines++ < 64) {
    std::size_t end = input.find('\n', start);
    if (end == std::string_view::npos) end = input.size();
    run_line(input.substr(start, end - start), target);
    start = end + 1;
  }
  cudapool::ProcessSummary summary;
  cudapool::parse_stats_text(input, &summary);
  cudapool::merge_prometheus({std::string(input)});
  return 0;
}
