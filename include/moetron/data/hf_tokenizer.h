// HfTokenizer: byte-level BPE from a HF tokenizer.json (DeepSeek-V3, Qwen2, Llama-3, GPT-2
// layouts), id-for-id equal to HF tokenizers. Supported: normalizers NFC/NFD/NFKC/NFKD/Sequence;
// pre-tokenizers Split/ByteLevel/Digits/Sequence; model BPE; post-processors
// TemplateProcessing/ByteLevel/Sequence; decoders ByteLevel/Sequence or none. Anything else is
// an error naming the file and JSON path.
#pragma once

#include <memory>

#include "moetron/data/tokenizer.h"

namespace moetron::data {

class HfTokenizer : public Tokenizer {
 public:
  // Reads `path`; bos/eos/pad come from a tokenizer_config.json beside it when present, else
  // the BOS of the post-processor template and well-known special-token names.
  static std::unique_ptr<HfTokenizer> from_file(const std::string& path);
  // `source` names the text in error messages.
  static std::unique_ptr<HfTokenizer> from_json(const std::string& json, const std::string& source);
  ~HfTokenizer() override;

  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const override;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const override;
  int32_t vocab_size() const override;
  std::optional<int32_t> token_to_id(std::string_view token) const override;
  std::optional<std::string> id_to_token(int32_t id) const override;
  bool is_special(int32_t id) const override;
  std::optional<int32_t> bos_id() const override;
  std::optional<int32_t> eos_id() const override;
  std::optional<int32_t> pad_id() const override;
  std::string name() const override;

 private:
  struct Impl;
  explicit HfTokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace moetron::data
