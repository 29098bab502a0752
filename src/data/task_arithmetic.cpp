// The arithmetic task: multi-digit + - * problems with column-by-column <think> traces (carries,
// borrows, partial products) the way a person works them on paper; with more than two terms,
// + - chains worked left to right with one line per running total.
#include <algorithm>
#include <sstream>

#include "moetron/core/error.h"
#include "task_internal.h"

namespace moetron::data::tasks {
namespace {

const char* kPlaces[] = {"ones",      "tens",          "hundreds",
                         "thousands", "ten-thousands", "hundred-thousands",
                         "millions",  "ten-millions",  "hundred-millions",
                         "billions",  "ten-billions",  "hundred-billions"};

std::string place(size_t i) {
  return i < std::size(kPlaces) ? kPlaces[i] : "digit " + std::to_string(i + 1);
}

int digit(int64_t v, size_t i) {
  for (size_t k = 0; k < i; ++k) v /= 10;
  return static_cast<int>(v % 10);
}

size_t num_digits(int64_t v) {
  size_t n = 1;
  while (v >= 10) v /= 10, ++n;
  return n;
}

int64_t random_operand(Rng& rng, int64_t max_digits) {
  int64_t digits = rng.uniform(1, max_digits);
  if (digits == 1) return rng.uniform(0, 9);
  int64_t lo = 1;
  for (int64_t i = 1; i < digits; ++i) lo *= 10;
  return rng.uniform(lo, lo * 10 - 1);
}

void column_add(std::ostream& os, int64_t a, int64_t b) {
  os << "Add " << a << " and " << b << " column by column from the right.\n";
  const size_t n = std::max(num_digits(a), num_digits(b));
  int carry = 0;
  for (size_t i = 0; i < n; ++i) {
    int s = digit(a, i) + digit(b, i) + carry;
    os << place(i) << ": " << digit(a, i) << " + " << digit(b, i);
    if (carry) os << " + carry " << carry;
    os << " = " << s << ", write " << s % 10;
    carry = s / 10;
    if (carry) os << ", carry " << carry;
    os << "\n";
  }
  if (carry) os << "The final carry " << carry << " becomes the leading digit.\n";
}

void column_sub(std::ostream& os, int64_t a, int64_t b) {  // a >= b >= 0
  os << "Subtract " << b << " from " << a << " column by column from the right.\n";
  const size_t n = num_digits(a);
  int borrow = 0;
  for (size_t i = 0; i < n; ++i) {
    int top = digit(a, i) - borrow, bottom = digit(b, i);
    os << place(i) << ": " << digit(a, i);
    if (borrow) os << " - borrow 1";
    os << " - " << bottom;
    borrow = top < bottom ? 1 : 0;
    if (borrow) os << ", too small, borrow 10: " << top + 10 << " - " << bottom;
    os << " = " << top + 10 * borrow - bottom << "\n";
  }
}

void long_multiply(std::ostream& os, int64_t a, int64_t b) {
  if (a == 0 || b == 0) {
    os << "One factor is 0, so the product is 0.\n";
    return;
  }
  os << "Multiply " << a << " by each digit of " << b << ", shifting by its place.\n";
  int64_t total = 0, scale = 1;
  std::vector<int64_t> parts;
  for (size_t i = 0; i < num_digits(b); ++i, scale *= 10) {
    int d = digit(b, i);
    int64_t part = a * d * scale;
    os << a << " * " << d;
    if (scale > 1) os << " * " << scale;
    os << " = " << part << "\n";
    if (part != 0) parts.push_back(part);
  }
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i > 0)
      os << "Running sum: " << total << " + " << parts[i] << " = " << total + parts[i] << "\n";
    total += parts[i];
  }
}

// "a op b op c ...", evaluated left to right: every step is one line "total op x = new total",
// so a chain is a composition of binary facts that other chains also contain.
Problem make_chain(Rng& rng, const TaskDataOptions& options) {
  const int64_t terms = rng.uniform(2, options.max_terms);
  std::vector<int64_t> xs;
  std::string ops;
  for (int64_t i = 0; i < terms; ++i) {
    xs.push_back(random_operand(rng, options.max_digits));
    if (i > 0) ops += options.ops[rng.uniform(0, static_cast<int64_t>(options.ops.size()) - 1)];
  }
  std::string key = std::to_string(xs[0]), spaced = key;
  std::ostringstream trace;
  trace << "Work left to right, keeping a running total.\n";
  int64_t total = xs[0];
  for (size_t i = 1; i < xs.size(); ++i) {
    const char op = ops[i - 1];
    const int64_t next = op == '+' ? total + xs[i] : total - xs[i];
    trace << total << " " << op << " " << xs[i] << " = " << next << "\n";
    total = next;
    key += op + std::to_string(xs[i]);
    spaced += std::string(" ") + op + " " + std::to_string(xs[i]);
  }
  trace << "So " << spaced << " = " << total << ".";

  Problem p;
  p.key = key;
  p.prompt = "What is " + spaced + "?";
  p.answer = std::to_string(total);
  p.final = p.answer;
  p.reasoning = trace.str();
  p.line = p.key + "=" + p.answer;
  return p;
}

}  // namespace

Problem make_arithmetic(Rng& rng, const TaskDataOptions& options) {
  if (options.max_terms > 2) return make_chain(rng, options);
  int64_t a = random_operand(rng, options.max_digits);
  int64_t b = random_operand(rng, options.max_digits);
  const char op = options.ops[rng.uniform(0, static_cast<int64_t>(options.ops.size()) - 1)];
  int64_t result = op == '+' ? a + b : op == '-' ? a - b : a * b;

  std::ostringstream trace;
  if (op == '+') {
    column_add(trace, a, b);
  } else if (op == '-') {
    if (a >= b) {
      column_sub(trace, a, b);
    } else {
      trace << b << " is larger than " << a << ", so the result is negative: compute " << b << " - "
            << a << " and negate it.\n";
      column_sub(trace, b, a);
    }
  } else {
    long_multiply(trace, a, b);
  }
  trace << "So " << a << " " << op << " " << b << " = " << result << ".";

  Problem p;
  p.key = std::to_string(a) + op + std::to_string(b);
  p.prompt = "What is " + std::to_string(a) + " " + op + " " + std::to_string(b) + "?";
  p.answer = std::to_string(result);
  p.final = p.answer;
  p.reasoning = trace.str();
  p.line = p.key + "=" + p.answer;
  return p;
}

}  // namespace moetron::data::tasks
