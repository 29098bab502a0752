// Scalar parsing and formatting for config values, enum name tables and range text.
#include "config/field.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "config/suggest.h"
#include "moetron/core/error.h"

namespace moetron::config::detail {

bool Info::in_range(double v) const {
  if (lo && (lo_open ? !(v > *lo) : !(v >= *lo))) return false;
  if (hi && (hi_open ? !(v < *hi) : !(v <= *hi))) return false;
  return true;
}

namespace {
// Bounds are written as integers when they are integral, so "n_group >= 1" not ">= 1.0".
std::string bound_text(double v) {
  if (std::floor(v) == v && std::fabs(v) < 1e15) return std::to_string(static_cast<int64_t>(v));
  return format_double(v);
}
}  // namespace

std::string Info::range_text() const {
  if (lo && hi) {
    return str_cat("in ", lo_open ? "(" : "[", bound_text(*lo), ", ", bound_text(*hi),
                   hi_open ? ")" : "]");
  }
  if (lo) return str_cat(lo_open ? "> " : ">= ", bound_text(*lo));
  if (hi) return str_cat(hi_open ? "< " : "<= ", bound_text(*hi));
  return "";
}

const std::vector<std::pair<ScoringFunc, const char*>>& EnumNames<ScoringFunc>::all() {
  static const std::vector<std::pair<ScoringFunc, const char*>> names = {
      {ScoringFunc::kSigmoid, "sigmoid"}, {ScoringFunc::kSoftmax, "softmax"}};
  return names;
}

const std::vector<std::pair<TopkMethod, const char*>>& EnumNames<TopkMethod>::all() {
  static const std::vector<std::pair<TopkMethod, const char*>> names = {
      {TopkMethod::kNoauxTc, "noaux_tc"},
      {TopkMethod::kGreedy, "greedy"},
      {TopkMethod::kGroupLimitedGreedy, "group_limited_greedy"}};
  return names;
}

const std::vector<std::pair<MtpHiddenSource, const char*>>& EnumNames<MtpHiddenSource>::all() {
  static const std::vector<std::pair<MtpHiddenSource, const char*>> names = {
      {MtpHiddenSource::kPostNorm, "post_norm"}, {MtpHiddenSource::kPreNorm, "pre_norm"}};
  return names;
}

const std::vector<std::pair<Stage, const char*>>& EnumNames<Stage>::all() {
  static const std::vector<std::pair<Stage, const char*>> names = {
      {Stage::kPretrain, "pretrain"}, {Stage::kSft, "sft"}, {Stage::kGrpo, "grpo"}};
  return names;
}

std::string format_double(double v) {
  if (std::isnan(v)) return ".nan";
  if (std::isinf(v)) return v > 0 ? ".inf" : "-.inf";
  char buf[64];
  // The shortest %g precision that reads back bit-identical, so dumps stay readable (0.1, not
  // 0.10000000000000001) and dump -> load -> dump is a fixed point.
  int precision = 1;
  for (; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  // %g switches to exponents early (10000 -> "1e+04"); write mid-sized numbers in fixed form.
  const int exponent = v == 0 ? 0 : static_cast<int>(std::floor(std::log10(std::fabs(v))));
  if (exponent >= -4 && exponent < 16) {
    char fixed[64];
    std::snprintf(fixed, sizeof(fixed), "%.*f", std::max(0, precision - 1 - exponent), v);
    if (std::strtod(fixed, nullptr) == v) std::snprintf(buf, sizeof(buf), "%s", fixed);
  }
  std::string s = buf;
  if (s.find_first_of(".en") == std::string::npos) s += ".0";  // keep it visibly a float
  return s;
}

namespace {
bool is_plain_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '-' || c == '.' || c == '/';
}

bool is_yaml_keyword(const std::string& s) {
  static const char* const words[] = {"null", "Null",  "NULL",  "~",     "true", "True",
                                      "TRUE", "false", "False", "FALSE", "yes",  "no",
                                      "on",   "off",   "Yes",   "No",    "On",   "Off"};
  for (const char* w : words) {
    if (s == w) return true;
  }
  return false;
}
}  // namespace

std::string format_string(const std::string& s) {
  bool plain = !s.empty() && s[0] != '-' && !is_yaml_keyword(s);
  for (char c : s) plain = plain && is_plain_char(c);
  // Strings that look like numbers stay plain: the typed loader reads them as strings anyway,
  // but quoting keeps the dump honest for other YAML readers.
  double ignored = 0;
  if (plain && parse_double(s, &ignored)) plain = false;
  if (plain) return s;
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\x%02x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

std::string describe_node(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
      return "null";
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Scalar:
      return is_quoted(node) ? str_cat("the quoted string '", node.Scalar(), "'")
                             : str_cat("'", node.Scalar(), "'");
    default:
      return "nothing";
  }
}

bool is_quoted(const YAML::Node& node) {
  return node.IsScalar() && node.Tag() == "!";
}

bool parse_int(const std::string& text, int64_t* out) {
  if (text.empty()) return false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (!((c >= '0' && c <= '9') || (i == 0 && (c == '-' || c == '+')))) return false;
  }
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (errno == ERANGE || end != text.c_str() + text.size()) return false;
  *out = static_cast<int64_t>(v);
  return true;
}

bool parse_double(const std::string& text, double* out) {
  if (text.empty()) return false;
  bool digit = false;
  for (char c : text) {
    if (c >= '0' && c <= '9') {
      digit = true;
    } else if (!(c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-')) {
      return false;  // rejects hex, inf, nan and anything strtod would half-read
    }
  }
  if (!digit) return false;
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (errno == ERANGE || end != text.c_str() + text.size() || !std::isfinite(v)) return false;
  *out = v;
  return true;
}

bool parse_bool(const std::string& text, bool* out) {
  if (text == "true" || text == "True" || text == "TRUE") {
    *out = true;
    return true;
  }
  if (text == "false" || text == "False" || text == "FALSE") {
    *out = false;
    return true;
  }
  return false;
}

std::string join(const std::vector<std::string>& items, const char* sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
  return out;
}

std::string choice_hint(const std::string& got, const std::vector<std::string>& choices) {
  const std::string best = nearest(got, choices);
  return best.empty() ? "" : "; did you mean '" + best + "'?";
}

}  // namespace moetron::config::detail
