// Exact-rational arithmetic with a floating fallback and the recursive-descent parser of
// normalised LaTeX / plain math (see math_expr.h).
#include "math_expr.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "text_util.h"

namespace moetron::rewards::detail {

Number inexact(double v, bool decimal) {
  Number n;
  n.exact = false;
  n.approx = v;
  n.decimal = decimal;
  return n;
}

// num/den reduced; beyond int64 it degrades to a double. nullopt for a zero denominator.
std::optional<Number> ratio(i128 num, i128 den, bool decimal) {
  if (den == 0) return std::nullopt;
  if (den < 0) num = -num, den = -den;
  i128 a = num < 0 ? -num : num, b = den;
  while (b != 0) {
    i128 t = a % b;
    a = b;
    b = t;
  }
  if (a > 1) num /= a, den /= a;
  const double approx = static_cast<double>(static_cast<long double>(num) / den);
  const i128 lim = INT64_MAX;
  if (num > lim || num < -lim || den > lim) return inexact(approx, decimal);
  Number n;
  n.num = num;
  n.den = den;
  n.approx = approx;
  n.decimal = decimal;
  return n;
}

std::optional<Number> arith(const Number& a, const Number& b, char op) {
  const bool decimal = a.decimal || b.decimal;
  if (a.exact && b.exact) {
    switch (op) {
      case '+':
        return ratio(a.num * b.den + b.num * a.den, a.den * b.den, decimal);
      case '-':
        return ratio(a.num * b.den - b.num * a.den, a.den * b.den, decimal);
      case '*':
        return ratio(a.num * b.num, a.den * b.den, decimal);
      default:
        return ratio(a.num * b.den, a.den * b.num, decimal);
    }
  }
  double v = 0;
  switch (op) {
    case '+':
      v = a.approx + b.approx;
      break;
    case '-':
      v = a.approx - b.approx;
      break;
    case '*':
      v = a.approx * b.approx;
      break;
    default:
      if (b.approx == 0) return std::nullopt;
      v = a.approx / b.approx;
  }
  if (!std::isfinite(v)) return std::nullopt;
  return inexact(v, decimal);
}

namespace {

std::optional<Number> negate(const Number& a) {
  Number r = a;
  r.num = -a.num;
  r.approx = -a.approx;
  return r;
}

// Integer k-th root of v >= 0 when exact, else nullopt.
std::optional<i128> exact_root(i128 v, int k) {
  if (v < 0) return std::nullopt;
  i128 r = static_cast<i128>(std::llround(std::pow(static_cast<long double>(v), 1.0L / k)));
  for (i128 c = std::max<i128>(0, r - 1); c <= r + 1; ++c) {
    i128 p = 1;
    bool over = false;
    for (int i = 0; i < k && !over; ++i) {
      p *= c;
      over = p > v;
    }
    if (!over && p == v) return c;
  }
  return std::nullopt;
}

std::optional<Number> root(const Number& a, int k) {
  if (k < 1 || a.approx < 0 || (a.exact && a.num < 0)) return std::nullopt;
  if (a.exact) {
    auto n = exact_root(a.num, k), d = exact_root(a.den, k);
    if (n && d) return ratio(*n, *d, a.decimal);
  }
  return inexact(std::pow(a.approx, 1.0 / k), true);
}

std::optional<Number> power(const Number& base, const Number& exp) {
  const bool decimal = base.decimal || exp.decimal;
  if (base.exact && exp.exact && exp.den == 1 && exp.num >= -64 && exp.num <= 64) {
    const int e = static_cast<int>(exp.num < 0 ? -exp.num : exp.num);
    std::optional<Number> acc = ratio(1, 1, decimal);
    for (int i = 0; i < e && acc; ++i) acc = arith(*acc, base, '*');
    if (!acc) return std::nullopt;
    acc->decimal = decimal;
    if (exp.num < 0) return arith(*ratio(1, 1, decimal), *acc, '/');
    return acc;
  }
  if (base.exact && exp.exact && exp.num == 1 && exp.den >= 2 && exp.den <= 64) {
    return root(base, static_cast<int>(exp.den));  // x^{1/2}
  }
  const double v = std::pow(base.approx, exp.approx);
  if (!std::isfinite(v)) return std::nullopt;
  return inexact(v, true);
}

// ---- expression parser --------------------------------------------------------------------

// Recursive descent over normalised LaTeX / plain math:
//   expr    := term (('+'|'-') term)*
//   term    := signed (('*'|'/'|\cdot|\times|\div| implicit) signed)*
//   signed  := ('+'|'-')* pow
//   pow     := primary ('^' exponent)?
//   primary := number | (expr) | [expr] | {expr} | \frac A B | \sqrt[n]{x} | \pi
// Implicit multiplication before ( { \frac \sqrt \pi; an integer literal directly followed by
// \frac is a mixed number (2\frac{1}{2} = 5/2). Letters fail the parse.
class Parser {
 public:
  explicit Parser(std::string_view s) : s_(s) {}

  std::optional<Number> run() {
    auto v = expr(0);
    skip();
    if (!v || pos_ != s_.size()) return std::nullopt;
    return v;
  }

 private:
  struct Factor {
    Number value;
    bool int_literal = false;  // a bare integer literal, maybe signed (mixed-number head)
  };

  void skip() {
    while (pos_ < s_.size() && is_space(s_[pos_])) ++pos_;
  }
  char peek() {
    skip();
    return pos_ < s_.size() ? s_[pos_] : '\0';
  }
  // The command name at pos_ ("frac" for "\frac"), without consuming; "" if none.
  std::string_view peek_command() {
    skip();
    if (pos_ >= s_.size() || s_[pos_] != '\\') return {};
    size_t e = pos_ + 1;
    while (e < s_.size() && is_alpha(s_[e])) ++e;
    return s_.substr(pos_ + 1, e - pos_ - 1);
  }
  void take_command(std::string_view name) { pos_ += 1 + name.size(); }

  std::optional<Number> expr(int depth) {
    if (depth > kMaxDepth) return std::nullopt;
    auto left = term(depth);
    while (left) {
      const char c = peek();
      if (c != '+' && c != '-') break;
      ++pos_;
      auto right = term(depth);
      if (!right) return std::nullopt;
      left = arith(*left, *right, c);
    }
    return left;
  }

  std::optional<Number> term(int depth) {
    auto first = signed_factor(depth);
    if (!first) return std::nullopt;
    std::optional<Number> left = first->value;
    bool single_int = first->int_literal;
    while (left) {
      char op = 0;
      const char c = peek();
      const std::string_view cmd = peek_command();
      if (c == '*' || c == '/') {
        op = c;
        ++pos_;
      } else if (cmd == "cdot" || cmd == "times" || cmd == "div") {
        op = cmd == "div" ? '/' : '*';
        take_command(cmd);
      } else if (c == '(' || c == '{' || cmd == "frac" || cmd == "sqrt" || cmd == "pi") {
        op = 'i';
      } else {
        break;
      }
      auto right = signed_factor(depth);
      if (!right) return std::nullopt;
      // A mixed number: 2\frac{1}{2} = 2 + 1/2; -2\frac{1}{2} = -(2 + 1/2). Only a proper
      // exact fraction after an integer literal counts; 3\frac{\pi}{2} is a product.
      const bool mixed = op == 'i' && single_int && cmd == "frac" && right->value.exact &&
                         right->value.num >= 0 && right->value.num < right->value.den;
      if (mixed) {
        const bool negative = left->approx < 0;
        auto magnitude = arith(negative ? *negate(*left) : *left, right->value, '+');
        left = negative && magnitude ? negate(*magnitude) : magnitude;
      } else {
        left = arith(*left, right->value, op == 'i' ? '*' : op);
      }
      single_int = false;
    }
    return left;
  }

  std::optional<Factor> signed_factor(int depth) {
    if (depth > kMaxDepth) return std::nullopt;
    const char c = peek();
    if (c == '-' || c == '+') {
      ++pos_;
      auto f = signed_factor(depth + 1);
      if (f && c == '-') f->value = *negate(f->value);
      return f;
    }
    const size_t start = pos_;
    auto base = primary(depth);
    if (!base) return std::nullopt;
    const bool literal = is_digit(s_[start]) && base->exact && base->den == 1 && !base->decimal;
    if (peek() != '^') return Factor{*base, literal};
    ++pos_;
    auto exp = exponent(depth);
    if (!exp) return std::nullopt;
    auto v = power(*base, *exp);
    if (!v) return std::nullopt;
    return Factor{*v, false};
  }

  std::optional<Number> exponent(int depth) {
    if (depth > kMaxDepth) return std::nullopt;
    const char c = peek();
    if (c == '-' || c == '+') {
      ++pos_;
      auto e = exponent(depth + 1);
      if (e && c == '-') return negate(*e);
      return e;
    }
    return primary(depth + 1);
  }

  // A \frac / \sqrt argument: a braced group, one digit (\frac12), or a command (\frac\pi2).
  std::optional<Number> argument(int depth) {
    const char c = peek();
    if (is_digit(c)) {
      ++pos_;
      return ratio(c - '0', 1, false);
    }
    if (c == '{' || c == '\\') return primary(depth + 1);
    return std::nullopt;
  }

  std::optional<Number> group(int depth, char close) {
    ++pos_;
    auto v = expr(depth + 1);
    if (!v || peek() != close) return std::nullopt;
    ++pos_;
    return v;
  }

  std::optional<Number> primary(int depth) {
    if (depth > kMaxDepth) return std::nullopt;
    const char c = peek();
    if (c == '(') return group(depth, ')');
    if (c == '[') return group(depth, ']');
    if (c == '{') return group(depth, '}');
    if (is_digit(c) || (c == '.' && pos_ + 1 < s_.size() && is_digit(s_[pos_ + 1]))) {
      return literal();
    }
    const std::string_view cmd = peek_command();
    if (cmd == "frac") {
      take_command(cmd);
      auto num = argument(depth), den = num ? argument(depth) : std::nullopt;
      if (!num || !den) return std::nullopt;
      return arith(*num, *den, '/');
    }
    if (cmd == "sqrt") {
      take_command(cmd);
      int k = 2;
      if (peek() == '[') {
        auto n = group(depth, ']');
        if (!n || !n->exact || n->den != 1 || n->num < 1 || n->num > 64) return std::nullopt;
        k = static_cast<int>(n->num);
      }
      auto x = argument(depth);
      return x ? root(*x, k) : std::nullopt;
    }
    if (cmd == "pi") {
      take_command(cmd);
      return inexact(kPi, true);
    }
    return std::nullopt;
  }

  // digits [. digits] or . digits; exact as n / 10^k while it fits, else a double.
  std::optional<Number> literal() {
    const size_t start = pos_;
    i128 num = 0, den = 1;
    bool fits = true, decimal = false;
    auto digits = [&](bool fraction) {
      for (; pos_ < s_.size() && is_digit(s_[pos_]); ++pos_) {
        if (num > INT64_MAX / 10 || den > INT64_MAX / 10) fits = false;
        if (!fits) continue;
        num = num * 10 + (s_[pos_] - '0');
        if (fraction) den *= 10;
      }
    };
    digits(false);
    if (pos_ + 1 < s_.size() && s_[pos_] == '.' && is_digit(s_[pos_ + 1])) {
      ++pos_;
      decimal = true;
      digits(true);
    }
    if (fits) return ratio(num, den, decimal);
    const std::string text(s_.substr(start, pos_ - start));
    return inexact(std::strtod(text.c_str(), nullptr), decimal);
  }

  std::string_view s_;
  size_t pos_ = 0;
};

}  // namespace

std::optional<Number> parse_expression(std::string_view s) {
  return Parser(s).run();
}

}  // namespace moetron::rewards::detail
