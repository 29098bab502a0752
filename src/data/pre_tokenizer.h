// HF normalizers (Unicode forms) and pre-tokenizers (Split, ByteLevel, Digits, Sequence)
// parsed from tokenizer.json, with HF's exact delimiter behaviours.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "json_view.h"
#include "unicode.h"

namespace moetron::data {

// A chain of Unicode normal forms (NFC, NFD, NFKC, NFKD, or a Sequence of them).
class Normalizer {
 public:
  static Normalizer parse(const std::optional<JsonView>& node);
  bool empty() const { return forms_.empty(); }
  std::string apply(std::string_view text) const;

 private:
  static void collect(const JsonView& node, std::vector<unicode::NormalForm>& forms);
  std::vector<unicode::NormalForm> forms_;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// One stretch of a piece: a match of the splitting pattern or the text between two matches.
struct Span {
  size_t start;
  size_t end;
  bool is_match;
};

// Applies HF's SplitDelimiterBehavior to `spans` (which cover `piece`) and appends the non-empty
// resulting substrings to `out`.
void split_with_behavior(std::string_view piece, const std::vector<Span>& spans,
                         SplitBehavior behavior, std::vector<std::string>& out);

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces every piece by its sub-pieces; never produces empty pieces.
  virtual void apply(std::vector<std::string>& pieces) const = 0;
};

// The steps of a pre_tokenizer entry with nested Sequences flattened. `byte_level` tells whether
// the chain ends in ByteLevel: the BPE model then maps bytes itself (ByteLevel anywhere else is
// rejected, as nothing downstream would see the mapped text).
struct PreTokenizerChain {
  std::vector<std::unique_ptr<PreTokenizer>> steps;
  bool byte_level = false;
  static PreTokenizerChain parse(const std::optional<JsonView>& node);
  void apply(std::vector<std::string>& pieces) const {
    for (const auto& s : steps) s->apply(pieces);
  }
};

}  // namespace moetron::data
