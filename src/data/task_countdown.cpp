// The countdown task: reach a target from 3-4 numbers with + - * /. Instances come from random
// expression trees (so each is solvable); traces show a few failed attempts, then the success.
#include <algorithm>
#include <optional>
#include <sstream>

#include "moetron/core/error.h"
#include "task_internal.h"

namespace moetron::data::tasks {
namespace {

// A partial result: its value, its expression and the precedence of its top operator
// (3 = a literal, 2 = * /, 1 = + -), for minimal parentheses.
struct Item {
  int64_t value;
  std::string expr;
  int prec;
};

std::string operand(const Item& it, int op_prec, bool right_of_noncommutative) {
  bool wrap = it.prec < op_prec || (right_of_noncommutative && it.prec == op_prec);
  return wrap ? "(" + it.expr + ")" : it.expr;
}

// Combines two items with `op` when the result stays a positive integer (intermediate values in
// the generated traces are kept natural so they read like hand search). Larger operand first for
// - and /.
std::optional<Item> combine(const Item& x, const Item& y, char op) {
  const Item& a = (op == '-' || op == '/') && y.value > x.value ? y : x;
  const Item& b = &a == &x ? y : x;
  int64_t v = 0;
  switch (op) {
    case '+':
      v = a.value + b.value;
      break;
    case '*':
      v = a.value * b.value;
      break;
    case '-':
      v = a.value - b.value;
      break;
    case '/':
      if (b.value <= 1 || a.value % b.value != 0) return std::nullopt;
      v = a.value / b.value;
      break;
  }
  if (v <= 0) return std::nullopt;
  int prec = (op == '+' || op == '-') ? 1 : 2;
  bool noncomm = op == '-' || op == '/';
  return Item{v, operand(a, prec, false) + op + operand(b, prec, noncomm), prec};
}

struct Step {
  int64_t a, b, result;
  char op;
};

// One random walk: repeatedly combine two random items until one remains or `stop_at` appears.
// Returns the final item (the one equal to stop_at when reached) and the steps taken.
Item random_walk(Rng& rng, std::vector<Item> items, std::vector<Step>& steps, int64_t stop_at) {
  steps.clear();
  while (items.size() > 1) {
    std::optional<Item> made;
    size_t i = 0, j = 0;
    char op = '+';
    for (int tries = 0; tries < 32 && !made; ++tries) {
      i = static_cast<size_t>(rng.uniform(0, static_cast<int64_t>(items.size()) - 1));
      j = static_cast<size_t>(rng.uniform(0, static_cast<int64_t>(items.size()) - 2));
      if (j >= i) ++j;
      op = "+-*/"[rng.uniform(0, 3)];
      made = combine(items[i], items[j], op);
    }
    if (!made) made = combine(items[i], items[j], op = '+');  // + always works
    int64_t hi = std::max(items[i].value, items[j].value),
            lo = std::min(items[i].value, items[j].value);
    bool ordered = op == '-' || op == '/';
    steps.push_back(
        {ordered ? hi : items[i].value, ordered ? lo : items[j].value, made->value, op});
    items.erase(items.begin() + static_cast<std::ptrdiff_t>(std::max(i, j)));
    items.erase(items.begin() + static_cast<std::ptrdiff_t>(std::min(i, j)));
    items.push_back(*made);
    if (made->value == stop_at) return *made;
  }
  return items[0];
}

void write_steps(std::ostream& os, const std::vector<Step>& steps) {
  for (size_t i = 0; i < steps.size(); ++i) {
    os << (i ? ", " : "") << steps[i].a << " " << steps[i].op << " " << steps[i].b << " = "
       << steps[i].result;
  }
}

std::string join(const std::vector<int64_t>& v, const char* sep) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + std::to_string(v[i]);
  return s;
}

}  // namespace

Problem make_countdown(Rng& rng, const TaskDataOptions& options) {
  for (int attempt = 0; attempt < 10000; ++attempt) {
    const int64_t n = rng.uniform(3, options.max_numbers);
    std::vector<int64_t> numbers;
    std::vector<Item> leaves;
    for (int64_t k = 0; k < n; ++k) {
      numbers.push_back(rng.uniform(1, options.max_number));
      leaves.push_back({numbers.back(), std::to_string(numbers.back()), 3});
    }
    // The reference solution uses every number (the checker reads the given numbers off it).
    std::vector<Step> steps;
    Item solution = random_walk(rng, leaves, steps, -1);
    const int64_t target = solution.value;
    if (target < 1 || target > options.max_target) continue;
    if (std::find(numbers.begin(), numbers.end(), target) != numbers.end()) continue;

    std::ostringstream trace;
    trace << "Target " << target << " from " << join(numbers, ", ")
          << ". Combine two numbers at a time and check each result.\n";
    std::string final_expr = solution.expr;
    std::vector<Step> solved = steps;
    const int64_t failed = rng.uniform(0, 3);
    for (int64_t f = 0; f < failed; ++f) {
      std::vector<Step> tried;
      Item got = random_walk(rng, leaves, tried, target);
      if (got.value == target) {  // a random attempt hit it: that is the solution we report
        final_expr = got.expr;
        solved = tried;
        break;
      }
      trace << "Try ";
      write_steps(trace, tried);
      trace << ". " << got.value << " is not " << target << ", back up.\n";
    }
    trace << "Try ";
    write_steps(trace, solved);
    trace << ". That reaches " << target << ".\n";
    trace << "Check: " << final_expr << " = " << target << ", each number used at most once.";

    std::vector<int64_t> sorted = numbers;
    std::sort(sorted.begin(), sorted.end());
    Problem p;
    p.key = join(sorted, ",") + "->" + std::to_string(target);
    p.prompt = "Using the numbers " + join(numbers, ", ") + ", make " + std::to_string(target) +
               ". You may use + - * / and parentheses, each number at most once.";
    p.answer = solution.expr;
    p.final = final_expr;
    p.reasoning = trace.str();
    p.line = join(numbers, " ") + " -> " + std::to_string(target) + ": " + final_expr + "=" +
             std::to_string(target);
    p.fields = {{"numbers", numbers}, {"target", target}};
    return p;
  }
  throw Error(ErrorKind::kUsage,
              str_cat("countdown: no instance with a target in [1, ", options.max_target,
                      "] after 10000 draws; raise max_target or lower max_number"));
}

}  // namespace moetron::data::tasks
