// Small string helpers shared by the math-answer parser and extractor (internal to
// src/rewards): ASCII classes, trimming, one-pass replacement and brace matching that skips
// escaped \{ \}.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace moetron::rewards::detail {

inline bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f';
}
inline bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
inline bool is_alpha(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

inline std::string trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && is_space(s[b])) ++b;
  while (e > b && is_space(s[e - 1])) --e;
  return std::string(s.substr(b, e - b));
}

inline bool starts_with(std::string_view s, std::string_view p) {
  return s.substr(0, p.size()) == p;
}
inline bool ends_with(std::string_view s, std::string_view p) {
  return s.size() >= p.size() && s.substr(s.size() - p.size()) == p;
}

// One pass (in-place replacement would be quadratic in the number of hits).
inline void replace_all(std::string& s, std::string_view from, std::string_view to) {
  size_t at = s.find(from);
  if (from.empty() || at == std::string::npos) return;
  std::string out;
  out.reserve(s.size());
  size_t done = 0;
  for (; at != std::string::npos; at = s.find(from, done)) {
    out.append(s, done, at - done);
    out.append(to);
    done = at + from.size();
  }
  out.append(s, done, std::string::npos);
  s = std::move(out);
}

// The '}' partner of every '{' (npos when unclosed), escaped \{ \} skipped; one pass.
inline std::vector<size_t> brace_partners(std::string_view s) {
  std::vector<size_t> partner(s.size(), std::string::npos), open;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\') {
      ++i;
    } else if (s[i] == '{') {
      open.push_back(i);
    } else if (s[i] == '}' && !open.empty()) {
      partner[open.back()] = i;
      open.pop_back();
    }
  }
  return partner;
}

// Index of the '}' closing the '{' at `open` (escaped \{ \} do not count); npos if unbalanced.
inline size_t match_brace(std::string_view s, size_t open) {
  int depth = 0;
  for (size_t i = open; i < s.size(); ++i) {
    if (s[i] == '\\') {
      ++i;
      continue;
    }
    if (s[i] == '{') ++depth;
    if (s[i] == '}' && --depth == 0) return i;
  }
  return std::string::npos;
}

}  // namespace moetron::rewards::detail
