// Per-field metadata (doc line, numeric range, closed set of choices) and the codecs that turn
// YAML scalars into typed values and back. schema.h uses these to describe every config key once.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "moetron/config/config.h"

namespace moetron::config::detail {

// What a key means and which values it accepts. Built fluently in schema.h:
//   Info("Number of experts.").min(1)
struct Info {
  std::string doc;
  std::optional<double> lo, hi;
  bool lo_open = false, hi_open = false;
  std::vector<std::string> choices;  // closed set for string fields; empty = any string

  explicit Info(std::string d) : doc(std::move(d)) {}
  Info& min(double v) {
    lo = v;
    lo_open = false;
    return *this;
  }
  Info& gt(double v) {
    lo = v;
    lo_open = true;
    return *this;
  }
  Info& max(double v) {
    hi = v;
    hi_open = false;
    return *this;
  }
  Info& lt(double v) {
    hi = v;
    hi_open = true;
    return *this;
  }
  Info& one_of(std::vector<std::string> c) {
    choices = std::move(c);
    return *this;
  }

  bool has_range() const { return lo.has_value() || hi.has_value(); }
  bool in_range(double v) const;
  // ">= 1", "in (0, 1]", "< 1"; empty when unbounded.
  std::string range_text() const;
};

// ---- enums <-> lower-case names -----------------------------------------------------------

template <class E>
struct EnumNames;  // specialised below: static const std::vector<std::pair<E, const char*>>& all()

template <>
struct EnumNames<ScoringFunc> {
  static const std::vector<std::pair<ScoringFunc, const char*>>& all();
};
template <>
struct EnumNames<TopkMethod> {
  static const std::vector<std::pair<TopkMethod, const char*>>& all();
};
template <>
struct EnumNames<MtpHiddenSource> {
  static const std::vector<std::pair<MtpHiddenSource, const char*>>& all();
};
template <>
struct EnumNames<Stage> {
  static const std::vector<std::pair<Stage, const char*>>& all();
};

template <class E>
std::vector<std::string> enum_choices() {
  std::vector<std::string> out;
  for (const auto& [value, name] : EnumNames<E>::all()) out.emplace_back(name);
  return out;
}

// ---- scalar text ---------------------------------------------------------------------------

// Shortest text that parses back to exactly `v`, always with a '.' or exponent ("40.0", "1e-06").
std::string format_double(double v);
// Plain when YAML reads it back as the same string, else double-quoted with escapes.
std::string format_string(const std::string& s);
// "'1.5'", "a map", "a list", "null": what a node holds, for "got ..." in messages.
std::string describe_node(const YAML::Node& node);
// True for a scalar written in quotes ("12"), which we never read as a number or bool.
bool is_quoted(const YAML::Node& node);

bool parse_int(const std::string& text, int64_t* out);
bool parse_double(const std::string& text, double* out);
bool parse_bool(const std::string& text, bool* out);

// ---- codecs: one per field type --------------------------------------------------------------
// parse() returns false when the node does not hold a value of the type; format() gives the
// YAML text; expected() completes "expected ...".

template <class T, class Enable = void>
struct Codec;

template <>
struct Codec<int64_t> {
  static const char* type_name() { return "int"; }
  static constexpr bool kNullable = false;
  static std::string expected() { return "an integer"; }
  static bool parse(const YAML::Node& n, int64_t* out) {
    return n.IsScalar() && !is_quoted(n) && parse_int(n.Scalar(), out);
  }
  static std::string format(int64_t v) { return std::to_string(v); }
  static std::optional<double> number(int64_t v) { return static_cast<double>(v); }
};

template <>
struct Codec<double> {
  static const char* type_name() { return "float"; }
  static constexpr bool kNullable = false;
  static std::string expected() { return "a number"; }
  static bool parse(const YAML::Node& n, double* out) {
    return n.IsScalar() && !is_quoted(n) && parse_double(n.Scalar(), out);
  }
  static std::string format(double v) { return format_double(v); }
  static std::optional<double> number(double v) { return v; }
};

template <>
struct Codec<bool> {
  static const char* type_name() { return "bool"; }
  static constexpr bool kNullable = false;
  static std::string expected() { return "true or false"; }
  static bool parse(const YAML::Node& n, bool* out) {
    return n.IsScalar() && !is_quoted(n) && parse_bool(n.Scalar(), out);
  }
  static std::string format(bool v) { return v ? "true" : "false"; }
  static std::optional<double> number(bool) { return std::nullopt; }
};

template <>
struct Codec<std::string> {
  static const char* type_name() { return "string"; }
  static constexpr bool kNullable = false;
  static std::string expected() { return "a string"; }
  static bool parse(const YAML::Node& n, std::string* out) {
    if (!n.IsScalar()) return false;
    *out = n.Scalar();
    return true;
  }
  static std::string format(const std::string& v) { return format_string(v); }
  static std::optional<double> number(const std::string&) { return std::nullopt; }
};

template <>
struct Codec<std::optional<int64_t>> {
  static const char* type_name() { return "int or null"; }
  static std::string expected() { return "an integer"; }
  static constexpr bool kNullable = true;
  static bool parse(const YAML::Node& n, std::optional<int64_t>* out) {
    if (n.IsNull()) {
      out->reset();
      return true;
    }
    int64_t v = 0;
    if (!Codec<int64_t>::parse(n, &v)) return false;
    *out = v;
    return true;
  }
  static std::string format(const std::optional<int64_t>& v) {
    return v ? std::to_string(*v) : "null";
  }
  static std::optional<double> number(const std::optional<int64_t>& v) {
    return v ? std::optional<double>(static_cast<double>(*v)) : std::nullopt;
  }
};

template <class E>
struct Codec<E, std::enable_if_t<std::is_enum_v<E>>> {
  static const char* type_name() { return "enum"; }
  static constexpr bool kNullable = false;
  static std::string expected() { return "a string"; }
  static bool parse(const YAML::Node& n, E* out) {
    if (!n.IsScalar()) return false;
    for (const auto& [value, name] : EnumNames<E>::all()) {
      if (n.Scalar() == name) {
        *out = value;
        return true;
      }
    }
    return false;
  }
  static std::string format(E v) {
    for (const auto& [value, name] : EnumNames<E>::all()) {
      if (value == v) return name;
    }
    return "?";
  }
  static std::optional<double> number(E) { return std::nullopt; }
};

// ---- checks shared by the loader and validate() ----------------------------------------------

std::string join(const std::vector<std::string>& items, const char* sep);

// "an integer >= 1", "one of sigmoid|softmax", "a number in (0, 1] or null".
template <class T>
std::string expected_text(const Info& info) {
  std::string text;
  if constexpr (std::is_enum_v<T>) {
    text = "one of " + join(enum_choices<T>(), "|");
  } else if (!info.choices.empty()) {
    text = "one of " + join(info.choices, "|");
  } else {
    text = Codec<T>::expected();
    if (info.has_range()) text += " " + info.range_text();
  }
  if (Codec<T>::kNullable) text += " or null";
  return text;
}

// "; did you mean 'sigmoid'?" for a misspelt choice, else "".
std::string choice_hint(const std::string& got, const std::vector<std::string>& choices);

// Empty when `value` satisfies the range and choices of `info`, else the complaint
// "<path>: expected ..., got ...".
template <class T>
std::string field_problem(const std::string& path, const T& value, const Info& info) {
  const std::optional<double> num = Codec<T>::number(value);
  if (num && !info.in_range(*num)) {
    return path + ": expected " + expected_text<T>(info) + ", got " + Codec<T>::format(value);
  }
  if constexpr (std::is_same_v<T, std::string>) {
    if (!info.choices.empty()) {
      for (const std::string& c : info.choices) {
        if (c == value) return "";
      }
      return path + ": expected " + expected_text<T>(info) + ", got '" + value + "'" +
             choice_hint(value, info.choices);
    }
  }
  return "";
}

// Base of the schema visitors: the dotted key path of the field being visited ("moe.n_group").
class KeyPath {
 protected:
  // Runs fn with `name` appended to the path.
  template <class F>
  void scoped(const std::string& name, F&& fn) {
    const std::string saved = prefix_;
    prefix_ += name + ".";
    fn();
    prefix_ = saved;
  }
  std::string prefix_;
};

}  // namespace moetron::config::detail
