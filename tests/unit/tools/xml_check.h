// A small XML well-formedness check for tests: one root element, every tag closed in order,
// attribute values quoted, entities known, no '<' or stray '&' in text. Enough to catch a broken
// SVG writer; not a full XML parser (no DTD, no CDATA).
#pragma once

#include <cctype>
#include <string>
#include <string_view>
#include <vector>

namespace cudapool::test {

// Returns "" when `xml` is well-formed, else a description of the first problem.
inline std::string xml_problem(std::string_view xml) {
  std::vector<std::string> open;
  std::size_t i = 0;
  int roots = 0;
  auto check_text = [&](std::string_view text) -> std::string {
    for (std::size_t k = 0; k < text.size(); ++k) {
      if (text[k] == '<') return "'<' in text";
      if (text[k] == '&') {
        const std::size_t semi = text.find(';', k);
        if (semi == std::string_view::npos) return "'&' without ';'";
        const std::string_view ent = text.substr(k + 1, semi - k - 1);
        if (ent != "amp" && ent != "lt" && ent != "gt" && ent != "quot" && ent != "apos" &&
            (ent.empty() || ent[0] != '#'))
          return "unknown entity &" + std::string(ent) + ";";
      }
    }
    return "";
  };
  if (xml.substr(0, 5) == "<?xml") {
    i = xml.find("?>");
    if (i == std::string_view::npos) return "unterminated XML declaration";
    i += 2;
  }
  while (i < xml.size()) {
    const std::size_t lt = xml.find('<', i);
    const std::string_view text = xml.substr(i, lt == std::string_view::npos ? xml.npos : lt - i);
    if (open.empty()) {
      for (char c : text)
        if (!std::isspace(static_cast<unsigned char>(c))) return "text outside the root element";
    } else if (std::string p = check_text(text); !p.empty()) {
      return p;
    }
    if (lt == std::string_view::npos) break;
    const std::size_t gt = xml.find('>', lt);
    if (gt == std::string_view::npos) return "unterminated tag";
    std::string_view tag = xml.substr(lt + 1, gt - lt - 1);
    i = gt + 1;
    if (tag.substr(0, 3) == "!--") continue;
    if (!tag.empty() && tag[0] == '/') {
      std::string name(tag.substr(1));
      while (!name.empty() && std::isspace(static_cast<unsigned char>(name.back())))
        name.pop_back();
      if (open.empty() || open.back() != name) return "mismatched </" + name + ">";
      open.pop_back();
      continue;
    }
    const bool self_closing = !tag.empty() && tag.back() == '/';
    if (self_closing) tag.remove_suffix(1);
    std::size_t k = 0;
    while (k < tag.size() && !std::isspace(static_cast<unsigned char>(tag[k])))
      ++k;
    const std::string name(tag.substr(0, k));
    if (name.empty()) return "empty tag name";
    // Attributes: name="value" pairs.
    while (k < tag.size()) {
      while (k < tag.size() && std::isspace(static_cast<unsigned char>(tag[k])))
        ++k;
      if (k >= tag.size()) break;
      const std::size_t eq = tag.find('=', k);
      if (eq == std::string_view::npos || eq + 1 >= tag.size()) return "attribute without value";
      const char quote = tag[eq + 1];
      if (quote != '"' && quote != '\'') return "unquoted attribute in <" + name + ">";
      const std::size_t end = tag.find(quote, eq + 2);
      if (end == std::string_view::npos) return "unterminated attribute in <" + name + ">";
      if (std::string p = check_text(tag.substr(eq + 2, end - eq - 2)); !p.empty())
        return p + " (attribute of <" + name + ">)";
      k = end + 1;
    }
    if (open.empty()) ++roots;
    if (roots > 1) return "more than one root element";
    if (!self_closing) open.push_back(name);
  }
  if (!open.empty()) return "unclosed <" + open.back() + ">";
  if (roots != 1) return "no root element";
  return "";
}

}  // namespace cudapool::test
