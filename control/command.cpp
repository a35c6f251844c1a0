#include "control/command.h"

#include <charconv>
#include <exception>

#include "control/options.h"
#include "control/stats_format.h"

namespace cudapool {
namespace {

constexpr std::string_view kHelp =
    "help                             this list\n"
    "stats [text|json|prometheus]     counters and policy per device\n"
    "trim [KEEP] [device=N]           release idle memory down to KEEP (default 0) now\n"
    "get NAME                         an option's value (HIGH_WATERMARK, LIMIT, ...)\n"
    "set NAME VALUE                   change a run-time option\n"
    "reset-peaks                      peak held and peak in use := current values\n"
    "snapshot [text|json] [top=N]     live bytes by allocation stack (largest first), segment "
    "maps\n"
    "Any command may end with reply=PATH (a FIFO of the same user): the answer goes there, last\n"
    "line OK or ERR <reason>; without it the answer goes to the log.\n";

char to_lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

bool equals_ignore_case(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (to_lower(a[i]) != to_lower(b[i])) return false;
  return true;
}

bool is_blank(char c) {
  return c == ' ' || c == '\t';
}

std::string_view trim(std::string_view text) {
  while (!text.empty() && is_blank(text.front()))
    text.remove_prefix(1);
  while (!text.empty() && is_blank(text.back()))
    text.remove_suffix(1);
  return text;
}

// Splits off the first word.
std::string_view next_word(std::string_view* rest) {
  *rest = trim(*rest);
  std::size_t end = 0;
  while (end < rest->size() && !is_blank((*rest)[end]))
    ++end;
  std::string_view word = rest->substr(0, end);
  rest->remove_prefix(end);
  *rest = trim(*rest);
  return word;
}

// Shortens user text quoted in an error message.
std::string quote(std::string_view text) {
  constexpr std::size_t kMax = 64;
  std::string out = "\"";
  out += text.substr(0, kMax);
  if (text.size() > kMax) out += "...";
  out += '"';
  return out;
}

ParsedLine refuse(ParsedLine parsed, std::string why) {
  parsed.command.reset();
  parsed.error = std::move(why);
  return parsed;
}

bool parse_device(std::string_view text, int* out) {
  int value = -1;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ec != std::errc() || ptr != end || value < 0 || value > 1023) return false;
  *out = value;
  return true;
}

}  // namespace

std::string_view command_help() {
  return kHelp;
}

ParsedLine parse_command(std::string_view line) {
  ParsedLine parsed;
  if (line.size() >= kMaxLineBytes) {
    return refuse(std::move(parsed),
                  "line too long (at most " + std::to_string(kMaxLineBytes - 1) + " bytes)");
  }
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);  // sent from a CRLF tool
  for (char c : line) {
    const auto u = static_cast<unsigned char>(c);
    if ((u < 0x20 && c != '\t') || u >= 0x7f)
      return refuse(std::move(parsed), "not a text line (control or non-ASCII bytes)");
  }
  std::string_view rest = trim(line);
  if (rest.empty()) {
    parsed.blank = true;
    return parsed;
  }

  // A trailing reply=PATH belongs to every command; take it off first, so that a refused command
  // can still be answered.
  const std::size_t last_blank = rest.find_last_of(" \t");
  const std::string_view last =
      last_blank == std::string_view::npos ? rest : rest.substr(last_blank + 1);
  if (last.size() >= 6 && equals_ignore_case(last.substr(0, 6), "reply=")) {
    const std::string_view path = last.substr(6);
    rest = last_blank == std::string_view::npos ? std::string_view()
                                                : trim(rest.substr(0, last_blank));
    if (path.empty() || path.front() != '/')
      return refuse(std::move(parsed), "reply= needs an absolute path");
    parsed.reply_path = std::string(path);
  }

  const std::string_view verb = next_word(&rest);
  Command command;
  if (verb.empty()) return refuse(std::move(parsed), "no command before reply=");
  if (equals_ignore_case(verb, "help")) {
    command.kind = CommandKind::kHelp;
    if (!rest.empty()) return refuse(std::move(parsed), "help takes no arguments");
  } else if (equals_ignore_case(verb, "reset-peaks") || equals_ignore_case(verb, "reset_peaks")) {
    command.kind = CommandKind::kResetPeaks;
    if (!rest.empty()) return refuse(std::move(parsed), "reset-peaks takes no arguments");
  } else if (equals_ignore_case(verb, "stats")) {
    command.kind = CommandKind::kStats;
    const std::string_view format = next_word(&rest);
    if (format.empty() || equals_ignore_case(format, "text")) {
      command.format = StatsFormat::kText;
    } else if (equals_ignore_case(format, "json")) {
      command.format = StatsFormat::kJson;
    } else if (equals_ignore_case(format, "prometheus")) {
      command.format = StatsFormat::kPrometheus;
    } else {
      return refuse(std::move(parsed),
                    "unknown stats format " + quote(format) + " (text, json or prometheus)");
    }
    if (!rest.empty()) return refuse(std::move(parsed), "stats takes one format at most");
  } else if (equals_ignore_case(verb, "snapshot")) {
    command.kind = CommandKind::kSnapshot;
    while (!rest.empty()) {
      const std::string_view word = next_word(&rest);
      if (equals_ignore_case(word, "text")) {
        command.format = StatsFormat::kText;
      } else if (equals_ignore_case(word, "json")) {
        command.format = StatsFormat::kJson;
      } else if (word.size() > 4 && equals_ignore_case(word.substr(0, 4), "top=")) {
        int n = 0;
        const std::string_view digits = word.substr(4);
        auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), n);
        if (ec != std::errc() || ptr != digits.data() + digits.size() || n < 1 || n > 100000)
          return refuse(std::move(parsed), "bad top " + quote(digits) + " (1 to 100000)");
        command.top = static_cast<std::size_t>(n);
      } else {
        return refuse(std::move(parsed),
                      "unknown snapshot argument " + quote(word) + " (text, json, top=N)");
      }
    }
  } else if (equals_ignore_case(verb, "trim")) {
    command.kind = CommandKind::kTrim;
    bool have_keep = false;
    while (!rest.empty()) {
      std::string_view word = next_word(&rest);
      if (word.size() >= 7 && equals_ignore_case(word.substr(0, 7), "device=")) {
        if (command.device != -1 || !parse_device(word.substr(7), &command.device))
          return refuse(std::move(parsed), "bad device " + quote(word.substr(7)));
        continue;
      }
      if (word.size() >= 5 && equals_ignore_case(word.substr(0, 5), "keep=")) word.remove_prefix(5);
      std::string why;
      if (have_keep || !parse_size(word, /*allow_percent=*/true, &command.keep, &why))
        return refuse(std::move(parsed),
                      "bad size to keep " + quote(word) + (why.empty() ? "" : ": " + why));
      have_keep = true;
    }
  } else if (equals_ignore_case(verb, "get")) {
    command.kind = CommandKind::kGet;
    command.name = std::string(next_word(&rest));
    if (command.name.empty() || !rest.empty()) return refuse(std::move(parsed), "usage: get NAME");
  } else if (equals_ignore_case(verb, "set")) {
    command.kind = CommandKind::kSet;
    command.name = std::string(next_word(&rest));
    command.value = std::string(rest);  // sizes may have a blank before the unit: "1.5 GiB"
    if (command.name.empty() || command.value.empty())
      return refuse(std::move(parsed), "usage: set NAME VALUE");
  } else {
    return refuse(std::move(parsed), "unknown command " + quote(verb) + " (try help)");
  }
  parsed.command = std::move(command);
  return parsed;
}

CommandResult execute_command(const Command& command, ControlTarget& target) {
  CommandResult result;
  auto fail = [&](std::string why) {
    result.ok = false;
    result.error = std::move(why);
    return result;
  };
  try {
    switch (command.kind) {
      case CommandKind::kHelp:
        result.body = std::string(kHelp);
        return result;
      case CommandKind::kStats: {
        ProcessReport report;
        report.pid = target.pid();
        report.command = target.process_name();
        report.routes = target.routes();
        report.devices = target.devices();
        result.body = format_stats(report, command.format);
        return result;
      }
      case CommandKind::kTrim: {
        std::vector<TrimReport> trimmed;
        std::string why;
        if (!target.trim(command.device, command.keep, &trimmed, &why)) return fail(why);
        std::uint64_t released = 0;
        for (const TrimReport& t : trimmed) {
          released += t.released;
          result.body +=
              "device=" + std::to_string(t.device) + " released=" + std::to_string(t.released) +
              " held=" + std::to_string(t.held_after) + " idle=" + std::to_string(t.idle_after);
          if (t.framework)
            result.body += " framework_reserved=" + std::to_string(t.framework_reserved_after);
          result.body += "\n";
        }
        result.body +=
            "released=" + std::to_string(released) + " (" + format_size(released) + ")\n";
        return result;
      }
      case CommandKind::kGet: {
        std::optional<std::string> value = target.get_option(command.name);
        if (!value) return fail("unknown option " + quote(command.name));
        result.body = *value + "\n";
        return result;
      }
      case CommandKind::kSet: {
        std::string why, note;
        if (!target.set_option(command.name, command.value, &why, &note)) return fail(why);
        const OptionInfo* info = find_option(command.name);
        std::optional<std::string> now = target.get_option(command.name);
        if (info != nullptr && now) result.body = std::string(info->name) + "=" + *now + "\n";
        if (!note.empty()) result.body += "note: " + note + "\n";
        return result;
      }
      case CommandKind::kResetPeaks:
        target.reset_peaks();
        return result;
      case CommandKind::kSnapshot: {
        Snapshot snapshot;
        std::string why;
        if (!target.snapshot(&snapshot, &why)) return fail(why);
        result.body = command.format == StatsFormat::kJson
                          ? format_snapshot_json(snapshot, command.top)
                          : format_snapshot_text(snapshot, command.top);
        return result;
      }
    }
  } catch (const std::exception& e) {
    return fail(std::string("internal error: ") + e.what());
  } catch (...) {
    return fail("internal error");
  }
  return fail("unknown command");
}

std::string format_reply(const CommandResult& result) {
  std::string out = result.body;
  if (!out.empty() && out.back() != '\n') out += '\n';
  if (result.ok) {
    out += "OK\n";
  } else {
    std::string reason = result.error.empty() ? std::string("failed") : result.error;
    for (char& c : reason)
      if (c == '\n') c = ' ';
    out += "ERR " + reason + "\n";
  }
  return out;
}

}  // namespace cudapool
