// Math answer extraction and equivalence: a LaTeX-light normaliser, an exact-rational expression
// evaluator with a floating fallback (roots, pi, huge values), and the comparison rules of
// docs/rewards.md, chosen to agree with HF math-verify on the usual final-answer shapes.
#include "moetron/rewards/math_answer.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "math_expr.h"
#include "text_util.h"

namespace moetron::rewards {
namespace {

using namespace detail;

// Numeric comparisons: within half a unit of the 6th decimal place (the continuous counterpart
// of math-verify rounding both sides to 6 places), plus a 1e-12 relative slack for the double
// rounding of large values. A relative 1e-6 would accept 744711.5 for 744711.
constexpr double kAbsTol = 5e-7;
constexpr double kRelSlack = 1e-12;

// ---- normalisation ------------------------------------------------------------------------

// UTF-8 look-alikes to ASCII / LaTeX: minus signs, times, divide, dots, spaces, degree, pi.
std::string normalize_unicode(std::string s) {
  static const std::pair<const char*, const char*> kMap[] = {
      {"\u2212", "-"}, {"\u2013", "-"}, {"\u00d7", "*"}, {"\u00f7", "/"},     {"\u00b7", "*"},
      {"\u22c5", "*"}, {"\u00a0", " "}, {"\u2009", " "}, {"\u202f", " "},     {"\u2002", " "},
      {"\u2003", " "}, {"\u3000", " "}, {"\u00b0", ""},  {"\u03c0", "\\pi "}, {"\uff05", "%"},
  };
  for (const auto& [from, to] : kMap) replace_all(s, from, to);
  return s;
}

bool is_text_command(std::string_view name) {
  return name == "text" || name == "textbf" || name == "textit" || name == "textrm" ||
         name == "mbox" || name == "mathrm" || name == "textnormal" || name == "operatorname";
}

// LaTeX to the parser's dialect: drops math delimiters, sizing (\left \right \big), spacing
// (\! \, \; \: \quad ~), \displaystyle, degree marks; \dfrac \tfrac -> \frac; \% -> %;
// \{ \} -> { }; \mathbf{x} \boldsymbol{x} -> x. Text groups are kept (callers choose).
std::string normalize_latex(std::string_view in) {
  std::string s = normalize_unicode(std::string(in));
  replace_all(s, "^{\\circ}", "");
  replace_all(s, "^\\circ", "");
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const char c = s[i];
    if (c == '$') {
      ++i;
      continue;
    }
    if (c == '~') {
      out += ' ';
      ++i;
      continue;
    }
    if (c != '\\') {
      out += c;
      ++i;
      continue;
    }
    size_t e = i + 1;
    while (e < s.size() && is_alpha(s[e])) ++e;
    if (e == i + 1) {  // \X with a non-letter X
      const char x = i + 1 < s.size() ? s[i + 1] : '\0';
      if (x == '!' || x == ',' || x == ';' || x == ':' || x == ' ' || x == '$' || x == '(' ||
          x == ')' || x == '[' || x == ']') {
        if (x == ' ' || x == ';' || x == ':') out += ' ';
      } else if (x == '%' || x == '{' || x == '}') {
        out += x;
      } else {
        out.append(s, i, 2);
      }
      i += 2;
      continue;
    }
    const std::string name = s.substr(i + 1, e - i - 1);
    i = e;
    if (name == "left" || name == "right" || name == "bigl" || name == "bigr" || name == "Bigl" ||
        name == "Bigr" || name == "big" || name == "Big") {
      if (i < s.size() && s[i] == '.') ++i;  // \left. / \right.
      continue;
    }
    if (name == "displaystyle" || name == "circ" || name == "degree" || name == "mathbf" ||
        name == "boldsymbol" || name == "bf") {
      continue;  // \mathbf{x}: the braces remain as a group
    }
    if (name == "quad" || name == "qquad") {
      out += ' ';
      continue;
    }
    if (name == "dfrac" || name == "tfrac") {
      out += "\\frac";
      continue;
    }
    out += '\\';
    out += name;
  }
  return out;
}

// Removes \text{...}-like groups (with `keep_content` their inside stays).
std::string text_groups(std::string_view s, bool keep_content) {
  const std::vector<size_t> partner = brace_partners(s);
  std::vector<bool> drop(s.size(), false);  // closing braces of unwrapped groups
  std::string out;
  for (size_t i = 0; i < s.size();) {
    if (drop[i]) {
      ++i;
      continue;
    }
    if (s[i] == '\\') {
      size_t e = i + 1;
      while (e < s.size() && is_alpha(s[e])) ++e;
      std::string_view name = s.substr(i + 1, e - i - 1);
      size_t b = e;
      while (b < s.size() && is_space(s[b])) ++b;
      if (is_text_command(name) && b < s.size() && s[b] == '{' && partner[b] != std::string::npos) {
        if (keep_content) {
          drop[partner[b]] = true;  // iterative, so deep nesting cannot exhaust the stack
          i = b + 1;
        } else {
          i = partner[b] + 1;
        }
        continue;
      }
      out.append(s.substr(i, std::max<size_t>(e - i, 2)));
      i += std::max<size_t>(e - i, 2);
      continue;
    }
    out += s[i++];
  }
  return out;
}

// Outer \boxed{...} / \fbox{...} wrappers, surrounding whitespace and trailing periods.
std::string unwrap(std::string s) {
  for (;;) {
    size_t end = s.size();
    while (end > 0 && (is_space(s[end - 1]) || s[end - 1] == '.')) --end;
    s = trim(std::string_view(s).substr(0, end));
    bool changed = false;
    for (std::string_view cmd : {"\\boxed", "\\fbox"}) {
      if (!starts_with(s, cmd)) continue;
      size_t b = cmd.size();
      while (b < s.size() && is_space(s[b])) ++b;
      if (b < s.size() && s[b] == '{' && match_brace(s, b) == s.size() - 1) {
        s = s.substr(b + 1, s.size() - b - 2);
        changed = true;
      }
    }
    if (!changed) return s;
  }
}

std::string collapse_spaces(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (is_space(c)) {
      if (!out.empty() && out.back() != ' ') out += ' ';
    } else {
      out += c;
    }
  }
  return trim(out);
}

// The text key: lower case, spaces dropped except one between two letters/digits ("x = 5" ->
// "x=5", "\\text{Yes}" -> "yes", but "56 854" stays two tokens).
std::string text_key(std::string_view s) {
  const std::string in = collapse_spaces(s);
  std::string out;
  for (size_t i = 0; i < in.size(); ++i) {
    const char c = in[i];
    if (c == ' ') {
      const auto alnum = [](char x) { return is_alpha(x) || is_digit(x); };
      if (!out.empty() && i + 1 < in.size() && alnum(out.back()) && alnum(in[i + 1])) out += c;
      continue;
    }
    out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return out;
}

// Top-level positions of `c` (outside (), [], {}).
std::vector<size_t> top_level(std::string_view s, char c) {
  std::vector<size_t> at;
  int depth = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    const char x = s[i];
    if (x == '(' || x == '[' || x == '{') ++depth;
    if (x == ')' || x == ']' || x == '}') --depth;
    if (depth == 0 && x == c) at.push_back(i);
  }
  return at;
}

// "x = 5" -> "5": the part after the last top-level '=' (not <=, >=, !=).
std::string after_equals(const std::string& s) {
  const std::vector<size_t> equals = top_level(s, '=');
  for (auto it = equals.rbegin(); it != equals.rend(); ++it) {
    const size_t at = *it;
    if (at > 0 && (s[at - 1] == '<' || s[at - 1] == '>' || s[at - 1] == '!')) continue;
    std::string rhs = trim(std::string_view(s).substr(at + 1));
    return rhs.empty() ? s : rhs;
  }
  return s;
}

// "1,234" / "-12,345.5": digits grouped by three with commas, the whole string.
bool is_thousands(std::string_view s) {
  size_t i = (!s.empty() && (s[0] == '-' || s[0] == '+')) ? 1 : 0;
  size_t lead = 0;
  while (i < s.size() && is_digit(s[i])) ++i, ++lead;
  if (lead < 1 || lead > 3 || i >= s.size() || s[i] != ',') return false;
  while (i < s.size() && s[i] == ',') {
    for (size_t k = 1; k <= 3; ++k) {
      if (i + k >= s.size() || !is_digit(s[i + k])) return false;
    }
    i += 4;
  }
  if (i < s.size() && s[i] == '.') {
    ++i;
    if (i >= s.size()) return false;
    while (i < s.size() && is_digit(s[i])) ++i;
  }
  return i == s.size();
}

// ---- answers ------------------------------------------------------------------------------

struct Answer {
  enum Kind { kNumber, kList, kText } kind = kText;
  Number number;
  std::vector<Answer> items;
  char open = 0, close = 0;  // list brackets: ( [ { or 0 for a bare "a, b"
  std::string key;           // text_key() of the answer with \text{} unwrapped
};

std::optional<Number> parse_number(std::string s) {
  s = trim(s);
  bool percent = false;
  if (!s.empty() && s.back() == '%') {
    percent = true;
    s = trim(s.substr(0, s.size() - 1));
  }
  if (is_thousands(s)) s.erase(std::remove(s.begin(), s.end(), ','), s.end());
  auto n = parse_expression(s);
  if (!n) {
    // Units: "5 cm", "5\,\text{cm}", "12 \mbox{ dollars}" -> the number before them.
    std::string bare = collapse_spaces(text_groups(s, false));
    size_t end = bare.size();  // drop trailing " word"s (letters only), scanning once
    for (;;) {
      size_t b = end;
      while (b > 0 && is_alpha(bare[b - 1])) --b;
      if (b == end || b == 0 || bare[b - 1] != ' ') break;
      end = b - 1;
    }
    bare.resize(end);
    if (!bare.empty() && bare != s) {
      if (bare.back() == '%') return parse_number(bare);
      if (is_thousands(bare)) bare.erase(std::remove(bare.begin(), bare.end(), ','), bare.end());
      n = parse_expression(bare);
    }
  }
  if (n) n->percent = n->percent || percent;
  return n;
}

Answer parse_answer(std::string_view raw, int depth = 0);

// "(1, 2]", "\{1, 2\}" (normalised to "{1, 2}"), or a bare "1, 2": the items, or nullopt.
std::optional<Answer> parse_list(const std::string& s, int depth) {
  if (depth > kMaxDepth) return std::nullopt;
  if (is_thousands(s) ||
      (!s.empty() && s.back() == '%' && is_thousands(trim(s.substr(0, s.size() - 1))))) {
    return std::nullopt;
  }
  Answer list;
  list.kind = Answer::kList;
  std::string_view inner = s;
  if (s.size() >= 2 && (s[0] == '(' || s[0] == '[' || s[0] == '{')) {
    int level = 0;
    size_t end = std::string::npos;
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] == '(' || s[i] == '[' || s[i] == '{') ++level;
      if ((s[i] == ')' || s[i] == ']' || s[i] == '}') && --level == 0) {
        end = i;
        break;
      }
    }
    if (end == s.size() - 1) {
      list.open = s[0];
      list.close = s.back();
      if ((list.open == '{') != (list.close == '}')) return std::nullopt;
      inner = std::string_view(s).substr(1, s.size() - 2);
    }
  }
  std::vector<size_t> commas = top_level(inner, ',');
  if (commas.empty()) return std::nullopt;
  size_t from = 0;
  commas.push_back(inner.size());
  for (size_t at : commas) {
    std::string item = trim(inner.substr(from, at - from));
    if (item.empty()) return std::nullopt;
    list.items.push_back(parse_answer(item, depth + 1));
    from = at + 1;
  }
  return list;
}

Answer parse_answer(std::string_view raw, int depth) {
  std::string s = collapse_spaces(unwrap(normalize_latex(unwrap(std::string(raw)))));
  Answer a;
  a.key = text_key(text_groups(s, true));
  s = after_equals(s);
  if (auto list = parse_list(s, depth)) {
    list->key = a.key;
    return *list;
  }
  if (auto n = parse_number(s)) {
    a.kind = Answer::kNumber;
    a.number = *n;
  }
  return a;
}

bool is_math(const Answer& a) {
  if (a.kind == Answer::kText) return false;
  return std::all_of(a.items.begin(), a.items.end(), is_math);
}

bool is_raw_integer(const Number& n) {
  return n.exact && n.den == 1 && !n.decimal;
}

Number percent_value(const Number& n) {
  if (!n.percent) return n;
  Number hundred = *ratio(100, 1, false);
  Number v = *arith(n, hundred, '/');
  v.percent = false;
  return v;
}

// math-verify's rules: a percentage X% is X/100, and when both sides are integers (no decimal
// point) X% also equals X; exact rationals compare exactly, and so does an integer against a
// decimal; otherwise (a decimal against a non-terminating fraction, an irrational)
// |a - b| <= 5e-7 (+ 1e-12 relative).
bool numbers_equal(const Number& a, const Number& b) {
  if (a.percent != b.percent && is_raw_integer(a) && is_raw_integer(b) && a.num == b.num) {
    return true;
  }
  const Number x = percent_value(a), y = percent_value(b);
  if (x.exact && y.exact && x.num == y.num && x.den == y.den) return true;
  if (x.exact && y.exact && !x.decimal && !y.decimal) return false;
  // An integer is only matched exactly: 7.0 is 7, 7.0000001 is not (as math-verify).
  if (x.exact && y.exact && (is_raw_integer(x) || is_raw_integer(y))) return false;
  const double scale = std::max(std::fabs(x.approx), std::fabs(y.approx));
  return std::fabs(x.approx - y.approx) <= kAbsTol + kRelSlack * scale;
}

bool equivalent(const Answer& gold, const Answer& pred);

bool lists_equal(const Answer& g, const Answer& p) {
  if (g.items.size() != p.items.size()) return false;
  const bool g_set = g.open == 0 || g.open == '{', p_set = p.open == 0 || p.open == '{';
  if (g_set && p_set) {  // unordered: each gold item matches a distinct predicted one
    std::vector<bool> used(p.items.size(), false);
    for (const Answer& gi : g.items) {
      bool found = false;
      for (size_t k = 0; k < p.items.size() && !found; ++k) {
        if (!used[k] && equivalent(gi, p.items[k])) used[k] = found = true;
      }
      if (!found) return false;
    }
    return true;
  }
  if (g.open == '{' || p.open == '{') return false;  // a set is not a tuple
  if (g.open != 0 && p.open != 0 && (g.open != p.open || g.close != p.close)) return false;
  for (size_t i = 0; i < g.items.size(); ++i) {
    if (!equivalent(g.items[i], p.items[i])) return false;
  }
  return true;
}

bool equivalent(const Answer& gold, const Answer& pred) {
  if (!gold.key.empty() && gold.key == pred.key) return true;
  if (gold.kind == Answer::kNumber && pred.kind == Answer::kNumber) {
    return numbers_equal(gold.number, pred.number);
  }
  if (gold.kind == Answer::kList && pred.kind == Answer::kList) return lists_equal(gold, pred);
  return false;
}

// The inside of the last $...$ / $$...$$ / \(...\) / \[...\] span of prose; nullopt if none.
std::optional<std::string> last_math_span(std::string_view text) {
  std::optional<std::string> best;
  size_t best_end = 0;
  // Unescaped '$' signs pair up in order ("$$" counts as one delimiter).
  std::vector<size_t> dollars;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\\') {
      ++i;
      continue;
    }
    if (text[i] != '$') continue;
    const size_t len = (i + 1 < text.size() && text[i + 1] == '$') ? 2 : 1;
    dollars.push_back(i);
    i += len - 1;
  }
  for (size_t k = 0; k + 1 < dollars.size(); k += 2) {
    const size_t open = dollars[k];
    const size_t open_len = (open + 1 < text.size() && text[open + 1] == '$') ? 2 : 1;
    const size_t close = dollars[k + 1];
    best = std::string(text.substr(open + open_len, close - open - open_len));
    best_end = close;
  }
  for (auto [o, c] : {std::pair<std::string_view, std::string_view>{"\\(", "\\)"},
                      std::pair<std::string_view, std::string_view>{"\\[", "\\]"}}) {
    const size_t close = text.rfind(c);
    if (close == std::string::npos) continue;
    const size_t open = text.rfind(o, close);
    if (open == std::string::npos) continue;
    if (!best || close > best_end) {
      best = std::string(text.substr(open + 2, close - open - 2));
      best_end = close;
    }
  }
  if (best && trim(*best).empty()) return std::nullopt;
  return best;
}

// The last number of prose: optional sign, digits with optional ",ddd" groups and decimals,
// an optional "/ d" fraction tail and an optional % (or \%).
std::optional<std::string> last_number(std::string_view text) {
  std::optional<std::string> last;
  size_t i = 0;
  while (i < text.size()) {
    const bool starts =
        is_digit(text[i]) || (text[i] == '.' && i + 1 < text.size() && is_digit(text[i + 1]) &&
                              (i == 0 || !is_digit(text[i - 1])));
    if (!starts || (i > 0 && (is_digit(text[i - 1]) || is_alpha(text[i - 1])))) {
      ++i;
      continue;
    }
    size_t b = i;
    if (b > 0 && text[b - 1] == '-' &&
        (b < 2 || !(std::isalnum(static_cast<unsigned char>(text[b - 2])) || text[b - 2] == ')'))) {
      --b;
    }
    size_t e = i;
    while (e < text.size() && is_digit(text[e])) ++e;
    if (e - i <= 3) {  // thousands groups
      while (e + 3 < text.size() && text[e] == ',' && is_digit(text[e + 1]) &&
             is_digit(text[e + 2]) && is_digit(text[e + 3]) &&
             (e + 4 >= text.size() || !is_digit(text[e + 4]))) {
        e += 4;
      }
    }
    bool decimal = false;
    if (e + 1 < text.size() && text[e] == '.' && is_digit(text[e + 1])) {
      decimal = true;
      ++e;
      while (e < text.size() && is_digit(text[e])) ++e;
    }
    if (!decimal) {  // "3/4", "3 / 4"
      size_t f = e;
      while (f < text.size() && text[f] == ' ') ++f;
      if (f < text.size() && text[f] == '/') {
        ++f;
        while (f < text.size() && text[f] == ' ') ++f;
        if (f < text.size() && is_digit(text[f])) {
          while (f < text.size() && is_digit(text[f])) ++f;
          e = f;
        }
      }
    }
    if (e < text.size() && text[e] == '%') {
      ++e;
    } else if (e + 1 < text.size() && text[e] == '\\' && text[e + 1] == '%') {
      e += 2;
    }
    last = std::string(text.substr(b, e - b));
    i = e;
  }
  return last;
}

std::optional<std::string> last_answer_tag(std::string_view text) {
  const size_t close = text.rfind("</answer>");
  if (close == std::string::npos) return std::nullopt;
  const size_t open = text.rfind("<answer>", close);
  if (open == std::string::npos) return std::nullopt;
  return std::string(text.substr(open + 8, close - open - 8));
}

}  // namespace

std::optional<std::string> last_boxed(std::string_view text) {
  size_t from = text.size();
  // A brace that does not close before `limit` leaves every earlier brace unclosed from there
  // on too, so later searches stop at it (linear time for "\\boxed{\\boxed{\\boxed{...").
  size_t limit = text.size();
  while (from > 0) {
    size_t boxed = text.rfind("\\boxed", from - 1), fbox = text.rfind("\\fbox", from - 1);
    size_t at = boxed == std::string::npos  ? fbox
                : fbox == std::string::npos ? boxed
                                            : std::max(boxed, fbox);
    if (at == std::string::npos) return std::nullopt;
    const size_t name_end = at + (at == boxed ? 6 : 5);
    size_t b = name_end;
    from = at;
    if (b < text.size() && is_alpha(text[b])) continue;  // \boxedsomething
    while (b < text.size() && is_space(text[b])) ++b;
    if (b < text.size() && text[b] == '{') {
      if (b >= limit) continue;
      const size_t close = match_brace(text.substr(0, limit), b);
      if (close != std::string::npos) return std::string(text.substr(b + 1, close - b - 1));
      limit = b;
      continue;
    }
    if (b > name_end && b < text.size()) {  // "\boxed 5": one token
      size_t e = b;
      while (e < text.size() && !is_space(text[e]) && text[e] != '$') ++e;
      if (e > b) return std::string(text.substr(b, e - b));
    }
  }
  return std::nullopt;
}

std::string strip_trailing_special(std::string_view text) {
  std::string_view s = text;  // shrinks from the end; copied once
  for (;;) {
    while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
    if (ends_with(s, "</s>")) {
      s.remove_suffix(4);
      continue;
    }
    bool stripped = false;
    for (auto [open, close] :
         {std::pair<std::string_view, std::string_view>{"<|", "|>"},
          std::pair<std::string_view, std::string_view>{"<\uff5c", "\uff5c>"}}) {
      if (!ends_with(s, close)) continue;
      const size_t at = s.rfind(open, s.size() - close.size());
      if (at == std::string::npos || at + open.size() > s.size() - close.size()) continue;
      std::string_view name =
          s.substr(at + open.size(), s.size() - close.size() - at - open.size());
      if (std::any_of(name.begin(), name.end(), is_space)) continue;
      s = s.substr(0, at);
      stripped = true;
      break;
    }
    if (!stripped) return trim(s);
  }
}

std::optional<AnswerCandidate> extract_answer_candidate(const std::string& completion,
                                                        const std::string& think_close,
                                                        bool answer_tags) {
  if (answer_tags) {
    auto inner = last_answer_tag(completion);
    if (!inner) return std::nullopt;
    if (auto boxed = last_boxed(*inner)) return AnswerCandidate{*boxed, false};
    std::string text = trim(*inner);
    if (text.empty()) return std::nullopt;
    return AnswerCandidate{text, true};
  }
  if (auto boxed = last_boxed(completion)) return AnswerCandidate{*boxed, false};
  if (auto inner = last_answer_tag(completion)) {
    std::string text = trim(*inner);
    if (text.empty()) return std::nullopt;
    return AnswerCandidate{text, true};
  }
  std::string_view rest = completion;
  if (!think_close.empty()) {
    const size_t close = completion.rfind(think_close);
    if (close != std::string::npos) rest = rest.substr(close + think_close.size());
  }
  std::string text = strip_trailing_special(rest);
  if (text.empty()) return std::nullopt;
  return AnswerCandidate{text, true};
}

bool math_answers_equivalent(const std::string& reference, const AnswerCandidate& candidate) {
  const Answer gold = parse_answer(reference);
  if (!candidate.free_text) return equivalent(gold, parse_answer(candidate.text));
  const std::string text = normalize_unicode(strip_trailing_special(candidate.text));
  const Answer whole = parse_answer(text);
  if (is_math(whole) || equivalent(gold, whole)) return equivalent(gold, whole);
  if (auto span = last_math_span(text)) {
    if (auto boxed = last_boxed(*span)) return equivalent(gold, parse_answer(*boxed));
    return equivalent(gold, parse_answer(*span));
  }
  if (auto number = last_number(text)) return equivalent(gold, parse_answer(*number));
  return false;
}

bool math_answer_correct(const std::string& completion, const std::string& reference,
                         const std::string& think_close, bool answer_tags) {
  auto candidate = extract_answer_candidate(completion, think_close, answer_tags);
  return candidate && math_answers_equivalent(reference, *candidate);
}

}  // namespace moetron::rewards
