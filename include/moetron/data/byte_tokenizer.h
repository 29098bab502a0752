// ByteTokenizer: ids 0..255 are bytes, then the special tokens of the built-in tasks.
// Fixed layout (part of checkpoints, never reorder): 256 <bos>, 257 <eos>, 258 <pad>,
// 259 <think>, 260 </think>, 261 <answer>, 262 </answer>, 263 <user>, 264 <assistant>,
// 265 <sep>; vocab_size() == 266.
#pragma once

#include <array>

#include "moetron/data/tokenizer.h"

namespace moetron::data {

class ByteTokenizer : public Tokenizer {
 public:
  static constexpr int32_t kBos = 256, kEos = 257, kPad = 258, kThink = 259, kEndThink = 260,
                           kAnswer = 261, kEndAnswer = 262, kUser = 263, kAssistant = 264,
                           kSep = 265;
  static constexpr int32_t kVocabSize = 266;
  static const std::array<const char*, kVocabSize - 256>& special_names();

  // Special-token strings in the text (e.g. "<think>") become their ids; add_special_tokens
  // prepends <bos>.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const override;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const override;
  int32_t vocab_size() const override { return kVocabSize; }
  std::optional<int32_t> token_to_id(std::string_view token) const override;
  std::optional<std::string> id_to_token(int32_t id) const override;
  bool is_special(int32_t id) const override { return id >= 256 && id < kVocabSize; }
  std::optional<int32_t> bos_id() const override { return kBos; }
  std::optional<int32_t> eos_id() const override { return kEos; }
  std::optional<int32_t> pad_id() const override { return kPad; }
  std::string name() const override { return "byte"; }
};

}  // namespace moetron::data
