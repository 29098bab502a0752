// The built-in verifiers: accuracy (math equivalence or the countdown rule by task), format
// (R1 / R1-Zero template), countdown, language consistency and DAPO's overlong punishment.
#include "moetron/rewards/verifiers.h"

#include <cmath>
#include <functional>
#include <utility>

#include "builtin.h"
#include "moetron/core/error.h"
#include "moetron/data/tasks.h"
#include "moetron/rewards/math_answer.h"
#include "text_util.h"

namespace moetron::rewards {
namespace {

using detail::trim;

bool is_blank(std::string_view s) {
  return trim(s).empty();
}

size_t count(std::string_view s, std::string_view what) {
  if (what.empty()) return 0;
  size_t n = 0;
  for (size_t at = s.find(what); at != std::string_view::npos;
       at = s.find(what, at + what.size())) {
    ++n;
  }
  return n;
}

// ---- countdown ----------------------------------------------------------------------------

// The final answer as the countdown checker wants it: the last <answer> tags' inside (required
// with answer_tags), else the text after the last think_close; a \boxed{} inside wins.
bool countdown_correct(const Sample& sample, const RewardContext& context) {
  const std::string& c = sample.completion;
  std::optional<std::string> got;
  const size_t close_tag = c.rfind("</answer>");
  const size_t open_tag =
      close_tag == std::string::npos ? std::string::npos : c.rfind("<answer>", close_tag);
  if (open_tag != std::string::npos) {
    got = c.substr(open_tag + 8, close_tag - open_tag - 8);
  } else if (!context.answer_tags) {
    const size_t close =
        context.think_close.empty() ? std::string::npos : c.rfind(context.think_close);
    if (close != std::string::npos) got = c.substr(close + context.think_close.size());
  }
  if (!got) return false;
  if (auto boxed = last_boxed(*got)) got = *boxed;
  std::string text = strip_trailing_special(*got);
  if (text.empty() || text.find("<answer>") != std::string::npos ||
      text.find("</answer>") != std::string::npos) {
    return false;
  }
  // The data module's checker owns the rule (numbers, multiplicities, exact value).
  return data::check_answer("countdown", "<answer>" + text + "</answer>", sample.answer);
}

// ---- language -----------------------------------------------------------------------------

enum class CharClass { kNeutral, kAsciiLetter, kLetter, kIdeograph, kSyllable };

// Decodes one UTF-8 code point at `i` (advancing it); invalid bytes decode as U+FFFD.
uint32_t next_code_point(std::string_view s, size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  int len = b0 < 0x80 ? 1 : (b0 >> 5) == 0x6 ? 2 : (b0 >> 4) == 0xE ? 3 : (b0 >> 3) == 0x1E ? 4 : 0;
  if (len == 0 || i + len > s.size()) {
    ++i;
    return 0xFFFD;
  }
  uint32_t cp = len == 1 ? b0 : len == 2 ? (b0 & 0x1F) : len == 3 ? (b0 & 0x0F) : (b0 & 0x07);
  for (int k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if ((b >> 6) != 0x2) {
      ++i;
      return 0xFFFD;
    }
    cp = (cp << 6) | (b & 0x3F);
  }
  i += len;
  return cp;
}

CharClass classify(uint32_t cp) {
  if (cp < 0x80) {
    return ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') ? CharClass::kAsciiLetter
                                                      : CharClass::kNeutral;
  }
  auto in = [cp](uint32_t lo, uint32_t hi) { return cp >= lo && cp <= hi; };
  if (in(0x4E00, 0x9FFF) || in(0x3400, 0x4DBF) || in(0xF900, 0xFAFF) || in(0x20000, 0x2FA1F)) {
    return CharClass::kIdeograph;
  }
  if (in(0x3040, 0x30FF) || in(0xAC00, 0xD7AF) || in(0x1100, 0x11FF) || in(0x31F0, 0x31FF)) {
    return CharClass::kSyllable;  // kana, Hangul: one word per character like ideographs
  }
  // Punctuation, symbols, spaces, digits and emoji outside ASCII.
  if (in(0x80, 0xBF) || cp == 0xD7 || cp == 0xF7 || in(0x2000, 0x2BFF) || in(0x2E00, 0x2E7F) ||
      in(0x3000, 0x303F) || in(0xFE00, 0xFE0F) || in(0xFE30, 0xFE4F) || in(0xFF00, 0xFF20) ||
      in(0xFF3B, 0xFF40) || in(0xFF5B, 0xFF65) || in(0xFFF0, 0xFFFF) || in(0x1F000, 0x1FAFF) ||
      in(0xE0000, 0xE007F) || in(0x0660, 0x0669) || in(0x06F0, 0x06F9) || in(0x0966, 0x096F)) {
    return CharClass::kNeutral;
  }
  return CharClass::kLetter;
}

// ---- verifier objects ---------------------------------------------------------------------

class RuleVerifier : public Verifier {
 public:
  RuleVerifier(std::string name, std::function<double(const Sample&)> rule)
      : name_(std::move(name)), rule_(std::move(rule)) {}
  const std::string& name() const override { return name_; }
  double score(const Sample& sample) const override { return rule_(sample); }

 private:
  std::string name_;
  std::function<double(const Sample&)> rule_;
};

std::unique_ptr<Verifier> make_accuracy(const RewardContext& context) {
  return std::make_unique<RuleVerifier>("accuracy", [context](const Sample& s) {
    if (s.task == "countdown") return countdown_correct(s, context) ? 1.0 : 0.0;
    if (s.task != "arithmetic" && s.task != "math" && !s.task.empty()) {
      throw Error(ErrorKind::kUsage,
                  str_cat("accuracy: unknown task \"", s.task,
                          "\" (expected arithmetic, countdown, math or empty for math)"));
    }
    return math_answer_correct(s.completion, s.answer, context.think_close, context.answer_tags)
               ? 1.0
               : 0.0;
  });
}

std::unique_ptr<Verifier> make_language(const RewardContext& context) {
  MOETRON_CHECK_CONFIG(language_supported(context.language),
                       "language: unsupported target language '", context.language,
                       "' (known: en, zh)");
  return std::make_unique<RuleVerifier>("language", [context](const Sample& s) {
    return language_fraction(reasoning_text(s.completion, context), context.language);
  });
}

std::unique_ptr<Verifier> make_overlong(const RewardContext& context) {
  MOETRON_CHECK_CONFIG(context.overlong_buffer >= 0, "overlong: rl.overlong_buffer (",
                       context.overlong_buffer, ") must be >= 0");
  MOETRON_CHECK_CONFIG(
      context.overlong_buffer == 0 || context.overlong_buffer < context.max_new_tokens,
      "overlong: rl.overlong_buffer (", context.overlong_buffer, ") must be < rl.max_new_tokens (",
      context.max_new_tokens, ")");
  return std::make_unique<RuleVerifier>("overlong", [context](const Sample& s) {
    const int64_t length =
        s.num_tokens >= 0 ? s.num_tokens : static_cast<int64_t>(s.completion.size());
    return overlong_penalty(length, context.max_new_tokens, context.overlong_buffer);
  });
}

}  // namespace

bool format_ok(const std::string& completion, const RewardContext& context) {
  const std::string text = strip_trailing_special(completion);
  const std::string& open = context.think_open;
  const std::string& close = context.think_close;
  if (close.empty() || count(text, close) != 1 || count(text, open) > 1) return false;
  const size_t close_at = text.find(close);
  if (!open.empty()) {
    const size_t open_at = text.find(open);
    if (open_at != std::string::npos &&
        (open_at > close_at || !is_blank(std::string_view(text).substr(0, open_at)))) {
      return false;
    }
  }
  const std::string rest = trim(std::string_view(text).substr(close_at + close.size()));
  if (!context.answer_tags) return !rest.empty();
  constexpr std::string_view kOpen = "<answer>", kClose = "</answer>";
  if (rest.size() < kOpen.size() + kClose.size() || rest.compare(0, kOpen.size(), kOpen) != 0 ||
      rest.compare(rest.size() - kClose.size(), kClose.size(), kClose) != 0 ||
      count(rest, kOpen) != 1 || count(rest, kClose) != 1) {
    return false;
  }
  return !is_blank(
      std::string_view(rest).substr(kOpen.size(), rest.size() - kOpen.size() - kClose.size()));
}

std::string reasoning_text(const std::string& completion, const RewardContext& context) {
  const size_t close =
      context.think_close.empty() ? std::string::npos : completion.find(context.think_close);
  if (close == std::string::npos) return completion;
  size_t begin = 0;
  if (!context.think_open.empty()) {
    const size_t open = completion.rfind(context.think_open, close);
    if (open != std::string::npos) begin = open + context.think_open.size();
  }
  return completion.substr(begin, close - begin);
}

bool language_supported(const std::string& language) {
  return language == "en" || language == "zh";
}

double language_fraction(std::string_view text, const std::string& language) {
  MOETRON_CHECK_CONFIG(language_supported(language), "language: unsupported target language '",
                       language, "' (known: en, zh)");
  const bool en = language == "en";
  int64_t words = 0, target = 0;
  bool in_word = false, all_ascii = true;
  auto end_word = [&] {
    if (!in_word) return;
    ++words;
    if (en && all_ascii) ++target;
    in_word = false;
  };
  for (size_t i = 0; i < text.size();) {
    const CharClass c = classify(next_code_point(text, i));
    if (c == CharClass::kAsciiLetter || c == CharClass::kLetter) {
      if (!in_word) in_word = true, all_ascii = true;
      all_ascii = all_ascii && c == CharClass::kAsciiLetter;
      continue;
    }
    end_word();
    if (c == CharClass::kIdeograph || c == CharClass::kSyllable) {
      ++words;
      if (!en && c == CharClass::kIdeograph) ++target;
    }
  }
  end_word();
  return words == 0 ? 1.0 : static_cast<double>(target) / static_cast<double>(words);
}

double overlong_penalty(int64_t length, int64_t max_new_tokens, int64_t overlong_buffer) {
  if (overlong_buffer <= 0) return 0.0;
  const int64_t expected = max_new_tokens - overlong_buffer;
  if (length <= expected) return 0.0;
  if (length <= max_new_tokens) {
    return static_cast<double>(expected - length) / static_cast<double>(overlong_buffer);
  }
  return -1.0;
}

namespace detail {

void add_builtin_verifiers(std::map<std::string, VerifierFactory>& out) {
  out["accuracy"] = make_accuracy;
  out["format"] = [](const RewardContext& context) -> std::unique_ptr<Verifier> {
    return std::make_unique<RuleVerifier>("format", [context](const Sample& s) {
      return format_ok(s.completion, context) ? 1.0 : 0.0;
    });
  };
  out["countdown"] = [](const RewardContext& context) -> std::unique_ptr<Verifier> {
    return std::make_unique<RuleVerifier>("countdown", [context](const Sample& s) {
      return countdown_correct(s, context) ? 1.0 : 0.0;
    });
  };
  out["language"] = make_language;
  out["overlong"] = make_overlong;
}

}  // namespace detail
}  // namespace moetron::rewards
