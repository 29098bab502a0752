// Normalizers and pre-tokenizers of HF tokenizer.json (see pre_tokenizer.h).
#include "pre_tokenizer.h"

#include <algorithm>

#include "moetron/core/error.h"
#include "regex_pcre2.h"

namespace moetron::data {
namespace {

// GPT-2's split pattern, as HF's ByteLevel pre-tokenizer uses it with use_regex.
constexpr const char* kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

void regex_spans(const Regex& re, std::string_view piece, bool invert, std::vector<Span>& spans) {
  thread_local std::vector<std::pair<size_t, size_t>> matches;
  matches.clear();
  spans.clear();
  if (piece.empty()) {
    spans.push_back({0, 0, false});
    return;
  }
  re.find_all(piece, matches);
  size_t prev = 0;
  for (auto [s, e] : matches) {
    if (prev != s) spans.push_back({prev, s, invert});
    spans.push_back({s, e, !invert});
    prev = e;
  }
  if (prev != piece.size()) spans.push_back({prev, piece.size(), invert});
}

class SplitPre : public PreTokenizer {
 public:
  SplitPre(const std::string& pattern, SplitBehavior behavior, bool invert,
           const std::string& where)
      : re_(pattern, where), behavior_(behavior), invert_(invert) {}
  void apply(std::vector<std::string>& pieces) const override {
    std::vector<std::string> out;
    out.reserve(pieces.size() * 2);
    std::vector<Span> spans;
    for (const auto& p : pieces) {
      regex_spans(re_, p, invert_, spans);
      split_with_behavior(p, spans, behavior_, out);
    }
    pieces.swap(out);
  }

 private:
  Regex re_;
  SplitBehavior behavior_;
  bool invert_;
};

class ByteLevelPre : public PreTokenizer {
 public:
  ByteLevelPre(bool add_prefix_space, bool use_regex, const std::string& where)
      : add_prefix_space_(add_prefix_space) {
    if (use_regex) re_ = std::make_unique<Regex>(kGpt2Pattern, where);
  }
  void apply(std::vector<std::string>& pieces) const override {
    if (add_prefix_space_) {
      // HF prepends to every piece reaching this step, not only to the start of the text.
      for (auto& p : pieces) {
        if (!p.empty() && p[0] != ' ') p.insert(p.begin(), ' ');
      }
    }
    if (!re_) return;
    std::vector<std::string> out;
    out.reserve(pieces.size() * 4);
    std::vector<Span> spans;
    for (const auto& p : pieces) {
      regex_spans(*re_, p, false, spans);
      split_with_behavior(p, spans, SplitBehavior::kIsolated, out);
    }
    pieces.swap(out);
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> re_;
};

class DigitsPre : public PreTokenizer {
 public:
  explicit DigitsPre(bool individual) : individual_(individual) {}
  void apply(std::vector<std::string>& pieces) const override {
    std::vector<std::string> out;
    std::vector<Span> spans;
    for (const auto& p : pieces) {
      // Like HF's char-predicate pattern: every numeric character is its own match.
      spans.clear();
      size_t pos = 0, last = 0;
      while (pos < p.size()) {
        size_t start = pos;
        char32_t cp = unicode::next_code_point(p, pos);
        if (unicode::is_numeric(cp)) {
          if (last < start) spans.push_back({last, start, false});
          spans.push_back({start, pos, true});
          last = pos;
        }
      }
      if (last < p.size() || p.empty()) spans.push_back({last, p.size(), false});
      split_with_behavior(p, spans,
                          individual_ ? SplitBehavior::kIsolated : SplitBehavior::kContiguous, out);
    }
    pieces.swap(out);
  }

 private:
  bool individual_;
};

SplitBehavior parse_behavior(const JsonView& node) {
  std::string b = node.str();
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  node.fail(str_cat("unknown split behavior '", b,
                    "' (supported: Removed, Isolated, MergedWithPrevious, MergedWithNext, "
                    "Contiguous)"));
}

void parse_steps(const JsonView& node, PreTokenizerChain& chain) {
  std::string type = node.at("type").str();
  if (chain.byte_level) {
    node.fail(str_cat("pre-tokenizer '", type,
                      "' after ByteLevel is not supported (ByteLevel must come last)"));
  }
  if (type == "Sequence") {
    JsonView list = node.at("pretokenizers");
    list.expect_array();
    for (size_t i = 0; i < list.size(); ++i) parse_steps(list.at(i), chain);
  } else if (type == "Split") {
    JsonView pattern = node.at("pattern");
    pattern.expect_object();
    std::string source;
    if (auto re = pattern.find("Regex")) {
      source = re->str();
    } else if (auto lit = pattern.find("String")) {
      source = Regex::escape(lit->str());
    } else {
      pattern.fail("expected {\"Regex\": ...} or {\"String\": ...}");
    }
    chain.steps.push_back(std::make_unique<SplitPre>(source, parse_behavior(node.at("behavior")),
                                                     node.flag("invert", false), pattern.where()));
  } else if (type == "ByteLevel") {
    chain.steps.push_back(std::make_unique<ByteLevelPre>(
        node.flag("add_prefix_space", true), node.flag("use_regex", true), node.where()));
    chain.byte_level = true;
  } else if (type == "Digits") {
    chain.steps.push_back(std::make_unique<DigitsPre>(node.flag("individual_digits", false)));
  } else {
    node.at("type").fail(str_cat("unsupported pre-tokenizer type '", type,
                                 "' (supported: Sequence, Split, ByteLevel, Digits)"));
  }
}

}  // namespace

void split_with_behavior(std::string_view piece, const std::vector<Span>& spans,
                         SplitBehavior behavior, std::vector<std::string>& out) {
  // Mirrors HF's NormalizedString::split: first merge spans by behaviour, then drop empties.
  thread_local std::vector<std::pair<size_t, size_t>> kept;
  kept.clear();
  bool prev_match = false;
  switch (behavior) {
    case SplitBehavior::kRemoved:
      for (const auto& s : spans) {
        if (!s.is_match) kept.emplace_back(s.start, s.end);
      }
      break;
    case SplitBehavior::kIsolated:
      for (const auto& s : spans) kept.emplace_back(s.start, s.end);
      break;
    case SplitBehavior::kContiguous:
      for (const auto& s : spans) {
        if (s.is_match == prev_match && !kept.empty()) {
          kept.back().second = s.end;
        } else {
          kept.emplace_back(s.start, s.end);
        }
        prev_match = s.is_match;
      }
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (const auto& s : spans) {
        if (s.is_match && !prev_match && !kept.empty()) {
          kept.back().second = s.end;
        } else {
          kept.emplace_back(s.start, s.end);
        }
        prev_match = s.is_match;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      for (size_t i = spans.size(); i-- > 0;) {
        const auto& s = spans[i];
        if (s.is_match && !prev_match && !kept.empty()) {
          kept.back().first = s.start;
        } else {
          kept.emplace_back(s.start, s.end);
        }
        prev_match = s.is_match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
  }
  for (auto [s, e] : kept) {
    if (e > s) out.emplace_back(piece.substr(s, e - s));
  }
}

PreTokenizerChain PreTokenizerChain::parse(const std::optional<JsonView>& node) {
  PreTokenizerChain chain;
  if (node) parse_steps(*node, chain);
  return chain;
}

void Normalizer::collect(const JsonView& node, std::vector<unicode::NormalForm>& forms) {
  std::string type = node.at("type").str();
  if (type == "Sequence") {
    JsonView list = node.at("normalizers");
    list.expect_array();
    for (size_t i = 0; i < list.size(); ++i) collect(list.at(i), forms);
  } else if (type == "NFC") {
    forms.push_back(unicode::NormalForm::kNFC);
  } else if (type == "NFD") {
    forms.push_back(unicode::NormalForm::kNFD);
  } else if (type == "NFKC") {
    forms.push_back(unicode::NormalForm::kNFKC);
  } else if (type == "NFKD") {
    forms.push_back(unicode::NormalForm::kNFKD);
  } else {
    node.at("type").fail(str_cat("unsupported normalizer type '", type,
                                 "' (supported: Sequence, NFC, NFD, NFKC, NFKD)"));
  }
}

Normalizer Normalizer::parse(const std::optional<JsonView>& node) {
  Normalizer n;
  if (node) collect(*node, n.forms_);
  return n;
}

std::string Normalizer::apply(std::string_view text) const {
  std::string s(text);
  for (auto f : forms_) s = unicode::normalize(s, f);
  return s;
}

}  // namespace moetron::data
