// Exact-rational arithmetic with a floating fallback (roots, pi, values beyond int64) and a
// recursive-descent parser of normalised LaTeX / plain math, for the math-answer verifier
// (internal to src/rewards).
#pragma once

#include <optional>
#include <string_view>

namespace moetron::rewards::detail {

using i128 = __int128;

// Nesting limit of every recursive parse (completions are untrusted input).
constexpr int kMaxDepth = 64;
constexpr double kPi = 3.14159265358979323846;

// A value: exact rational num/den (reduced, both within int64) when `exact`, else `approx`
// only. `decimal`: a decimal literal or an irrational took part, so comparisons are numeric.
struct Number {
  bool exact = true;
  i128 num = 0, den = 1;
  double approx = 0;
  bool decimal = false;
  bool percent = false;
};

// A floating value (not exact).
Number inexact(double v, bool decimal);
// num/den reduced; beyond int64 it degrades to a double. nullopt for a zero denominator.
std::optional<Number> ratio(i128 num, i128 den, bool decimal);
// a op b for op in + - * /; nullopt for a division by zero.
std::optional<Number> arith(const Number& a, const Number& b, char op);

// The value of a normalised expression (see the grammar in math_expr.cpp); nullopt when it is
// not one (letters, unbalanced brackets, division by zero, nesting beyond kMaxDepth).
std::optional<Number> parse_expression(std::string_view s);

}  // namespace moetron::rewards::detail
