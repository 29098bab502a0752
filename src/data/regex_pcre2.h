// PCRE2 regular expressions with the semantics HF tokenizers get from Oniguruma (Ruby syntax):
// Unicode classes, \s as White_Space, ^/$ at line ends, and Oniguruma's find-iteration rules.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moetron::data {

class Regex {
 public:
  // `where` names the file and JSON path for error messages. Compiled once (JIT when available).
  Regex(const std::string& pattern, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Successive non-overlapping matches [start, end) in `subject` (valid UTF-8), iterating like
  // the onig crate: an empty match right after the previous match is skipped by one character.
  void find_all(std::string_view subject, std::vector<std::pair<size_t, size_t>>& out) const;

  // Regex source matching `literal` exactly (for Split's String patterns).
  static std::string escape(std::string_view literal);
  // Rewrites Oniguruma-only syntax (\s set, \h, \uHHHH) into PCRE2 syntax; exposed for tests.
  static std::string translate(const std::string& onig_pattern);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moetron::data
