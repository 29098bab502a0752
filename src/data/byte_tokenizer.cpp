// ByteTokenizer: raw bytes plus a fixed table of task special tokens (see byte_tokenizer.h).
#include "moetron/data/byte_tokenizer.h"

#include <cstring>

#include "unicode.h"

namespace moetron::data {

const std::array<const char*, ByteTokenizer::kVocabSize - 256>& ByteTokenizer::special_names() {
  static const std::array<const char*, kVocabSize - 256> names = {
      "<bos>",    "<eos>",     "<pad>",  "<think>",     "</think>",
      "<answer>", "</answer>", "<user>", "<assistant>", "<sep>"};
  return names;
}

std::vector<int32_t> ByteTokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() + 1);
  if (add_special_tokens) ids.push_back(kBos);
  const auto& names = special_names();
  size_t i = 0;
  while (i < text.size()) {
    if (text[i] == '<') {
      // Longest special name starting here (names never prefix each other today, but stay safe).
      int32_t best = -1;
      size_t best_len = 0;
      for (size_t k = 0; k < names.size(); ++k) {
        size_t n = std::strlen(names[k]);
        if (n > best_len && text.compare(i, n, names[k]) == 0) {
          best = static_cast<int32_t>(256 + k);
          best_len = n;
        }
      }
      if (best >= 0) {
        ids.push_back(best);
        i += best_len;
        continue;
      }
    }
    ids.push_back(static_cast<unsigned char>(text[i]));
    ++i;
  }
  return ids;
}

std::string ByteTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  std::string bytes;
  bytes.reserve(ids.size());
  for (int32_t id : ids) {
    if (id >= 0 && id < 256) {
      bytes.push_back(static_cast<char>(id));
    } else if (is_special(id) && !skip_special_tokens) {
      bytes += special_names()[id - 256];
    }
  }
  return unicode::utf8_lossy(bytes);
}

std::optional<int32_t> ByteTokenizer::token_to_id(std::string_view token) const {
  const auto& names = special_names();
  for (size_t k = 0; k < names.size(); ++k) {
    if (token == names[k]) return static_cast<int32_t>(256 + k);
  }
  if (token.size() == 1) return static_cast<unsigned char>(token[0]);
  return std::nullopt;
}

std::optional<std::string> ByteTokenizer::id_to_token(int32_t id) const {
  if (id >= 0 && id < 256) return std::string(1, static_cast<char>(id));
  if (is_special(id)) return std::string(special_names()[id - 256]);
  return std::nullopt;
}

}  // namespace moetron::data
