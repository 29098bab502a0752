// Answer checking for the built-in tasks: final-answer extraction, integer comparison, and an
// exact rational evaluator for countdown expressions (so 7/2*2 is 7, not 6 or 7.0000001).
#include <algorithm>
#include <cctype>
#include <map>
#include <numeric>

#include "moetron/core/error.h"
#include "moetron/data/tasks.h"

namespace moetron::data {
namespace {

std::string trim(std::string_view s) {
  size_t b = s.find_first_not_of(" \t\r\n"), e = s.find_last_not_of(" \t\r\n");
  return b == std::string_view::npos ? std::string() : std::string(s.substr(b, e - b + 1));
}

using i128 = __int128;

struct Rational {
  i128 num = 0, den = 1;
};

// Reduces and checks that both parts fit int64 (beyond that the answer is simply wrong).
bool normalize(Rational& r) {
  if (r.den == 0) return false;
  if (r.den < 0) r.num = -r.num, r.den = -r.den;
  i128 a = r.num < 0 ? -r.num : r.num, b = r.den;
  while (b != 0) {
    i128 t = a % b;
    a = b;
    b = t;
  }
  if (a > 1) r.num /= a, r.den /= a;
  const i128 lim = INT64_MAX;
  return r.num <= lim && r.num >= -lim && r.den <= lim;
}

// Recursive descent: expr := term (('+'|'-') term)*; term := factor (('*'|'/') factor)*;
// factor := integer | '(' expr ')'. No unary minus: countdown allows only the given numbers.
class Parser {
 public:
  explicit Parser(std::string_view s) : s_(s) {}

  std::optional<ExprValue> run() {
    auto v = expr(0);
    skip();
    if (!v || pos_ != s_.size()) return std::nullopt;
    ExprValue out;
    out.num = static_cast<int64_t>(v->num);
    out.den = static_cast<int64_t>(v->den);
    out.literals = literals_;
    return out;
  }

 private:
  void skip() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  // One operator of `set`, accepting the UTF-8 × and ÷ for * and /.
  char op(const char* set) {
    skip();
    if (pos_ >= s_.size()) return 0;
    char c = s_[pos_];
    size_t len = 1;
    if (s_.compare(pos_, 2, "\xC3\x97") == 0) c = '*', len = 2;
    if (s_.compare(pos_, 2, "\xC3\xB7") == 0) c = '/', len = 2;
    if (std::string_view(set).find(c) == std::string_view::npos) return 0;
    pos_ += len;
    return c;
  }
  std::optional<Rational> expr(int depth) {
    auto left = term(depth);
    while (left) {
      char c = op("+-");
      if (!c) break;
      auto right = term(depth);
      if (!right) return std::nullopt;
      Rational r{c == '+' ? left->num * right->den + right->num * left->den
                          : left->num * right->den - right->num * left->den,
                 left->den * right->den};
      if (!normalize(r)) return std::nullopt;
      left = r;
    }
    return left;
  }
  std::optional<Rational> term(int depth) {
    auto left = factor(depth);
    while (left) {
      char c = op("*/");
      if (!c) break;
      auto right = factor(depth);
      if (!right) return std::nullopt;
      Rational r = c == '*' ? Rational{left->num * right->num, left->den * right->den}
                            : Rational{left->num * right->den, left->den * right->num};
      if (!normalize(r)) return std::nullopt;
      left = r;
    }
    return left;
  }
  std::optional<Rational> factor(int depth) {
    skip();
    if (pos_ >= s_.size() || depth > 64) return std::nullopt;
    if (s_[pos_] == '(') {
      ++pos_;
      auto v = expr(depth + 1);
      skip();
      if (!v || pos_ >= s_.size() || s_[pos_] != ')') return std::nullopt;
      ++pos_;
      return v;
    }
    if (!std::isdigit(static_cast<unsigned char>(s_[pos_]))) return std::nullopt;
    i128 v = 0;
    for (; pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_])); ++pos_) {
      v = v * 10 + (s_[pos_] - '0');
      if (v > INT64_MAX) return std::nullopt;
    }
    literals_.push_back(static_cast<int64_t>(v));
    return Rational{v, 1};
  }

  std::string_view s_;
  size_t pos_ = 0;
  std::vector<int64_t> literals_;
};

// A plain integer with an optional sign and an optional trailing '.'.
std::optional<int64_t> parse_integer(std::string s) {
  s = trim(s);
  if (!s.empty() && s.back() == '.') s.pop_back();
  if (s.empty()) return std::nullopt;
  size_t i = (s[0] == '-' || s[0] == '+') ? 1 : 0;
  if (i == s.size() || s.size() - i > 18) return std::nullopt;
  for (size_t k = i; k < s.size(); ++k) {
    if (!std::isdigit(static_cast<unsigned char>(s[k]))) return std::nullopt;
  }
  int64_t v = std::stoll(s.substr(i));
  return s[0] == '-' ? -v : v;
}

bool check_countdown(const std::string& got, const std::string& answer) {
  auto ref = evaluate_expression(answer);
  if (!ref || ref->den != 1) {
    throw Error(ErrorKind::kUsage, str_cat("countdown: reference answer \"", answer,
                                           "\" is not an expression with an integer value"));
  }
  // "expr = 54" is fine: only the expression before '=' counts.
  auto mine = evaluate_expression(got.substr(0, got.find('=')));
  if (!mine || mine->num != ref->num || mine->den != 1) return false;
  std::map<int64_t, int> left;
  for (int64_t n : ref->literals) ++left[n];
  for (int64_t n : mine->literals) {
    if (--left[n] < 0) return false;  // not given, or used more often than given
  }
  return true;
}

}  // namespace

std::optional<ExprValue> evaluate_expression(const std::string& expr) {
  return Parser(expr).run();
}

std::optional<std::string> extract_final_answer(const std::string& completion) {
  size_t open = completion.rfind("<answer>");
  if (open != std::string::npos) {
    size_t start = open + std::string_view("<answer>").size();
    size_t close = completion.find("</answer>", start);
    if (close != std::string::npos) {
      std::string inner = trim(std::string_view(completion).substr(start, close - start));
      if (!inner.empty()) return inner;
      return std::nullopt;
    }
  }
  size_t think = completion.rfind("</think>");
  if (think == std::string::npos) return std::nullopt;
  std::string after = trim(std::string_view(completion).substr(think + 8));
  if (after.empty()) return std::nullopt;
  return after;
}

bool check_answer(const std::string& task, const std::string& completion,
                  const std::string& answer) {
  if (task != "arithmetic" && task != "countdown") {
    throw Error(ErrorKind::kUsage, str_cat("check_answer: unknown task \"", task,
                                           "\" (expected arithmetic or countdown)"));
  }
  std::optional<std::string> got = extract_final_answer(completion);
  if (!got) return false;
  if (task == "countdown") return check_countdown(*got, answer);
  auto want = parse_integer(answer);
  if (!want) {
    throw Error(ErrorKind::kUsage,
                str_cat("arithmetic: reference answer \"", answer, "\" is not an integer"));
  }
  auto value = parse_integer(*got);
  return value && *value == *want;
}

}  // namespace moetron::data
