// Added tokens of HF tokenizer.json and HF's matching rules: leftmost-longest over the raw text
// (normalized=false) or over the normalized text (normalized=true), then single_word / lstrip /
// rstrip exactly as tokenizers' AddedVocabulary applies them.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moetron::data {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;
};

// A stretch of input: an added token (id >= 0) or text still to pre-tokenize (id < 0).
struct Piece {
  std::string text;
  int32_t id = -1;
};

class AddedVocab {
 public:
  // `normalized_contents[i]` is tokens[i].content after the tokenizer's normalizer (the form a
  // normalized token is matched in).
  void build(const std::vector<AddedToken>& tokens,
             const std::vector<std::string>& normalized_contents);

  // Splits `text` by the raw (normalized=false) or the normalized tokens; appends the pieces.
  void split(std::string_view text, bool normalized_set, std::vector<Piece>& out) const;
  bool empty(bool normalized_set) const { return sets_[normalized_set].patterns.empty(); }

 private:
  struct MatchSet {
    // (content, token index), grouped by first byte, longest first within a group.
    std::vector<std::pair<std::string, size_t>> patterns;
    std::array<uint32_t, 257> bucket{};  // patterns of first byte b: [bucket[b], bucket[b+1])
    // Leftmost-longest match at or after `from`.
    bool find(std::string_view s, size_t from, size_t& start, size_t& len, size_t& index) const;
  };
  std::vector<AddedToken> tokens_;
  MatchSet sets_[2];
};

}  // namespace moetron::data
