// The tokenizer interface shared by the byte tokenizer and HF tokenizer.json BPE, the loader
// that picks one from a spec string, and the JSONL encode/decode helper behind the CLI.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moetron::data {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids of `text`. With add_special_tokens the tokenizer's template adds its special
  // tokens (e.g. a BOS). Special-token strings inside `text` become their ids. HfTokenizer needs
  // valid UTF-8 (else moetron::Error naming the byte offset; see utf8_lossy); ByteTokenizer takes
  // any bytes. Safe to call from several threads.
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const = 0;
  // Text of `ids`; byte runs that are not valid UTF-8 decode to U+FFFD (one per maximal invalid
  // subpart, as HF does). Ids outside the vocabulary are skipped, as HF does.
  virtual std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const = 0;

  // One past the largest id (the embedding rows a model needs at least).
  virtual int32_t vocab_size() const = 0;
  virtual std::optional<int32_t> token_to_id(std::string_view token) const = 0;
  virtual std::optional<std::string> id_to_token(int32_t id) const = 0;
  virtual bool is_special(int32_t id) const = 0;
  virtual std::optional<int32_t> bos_id() const = 0;
  virtual std::optional<int32_t> eos_id() const = 0;
  virtual std::optional<int32_t> pad_id() const = 0;
  // "byte" or the tokenizer.json path it was loaded from.
  virtual std::string name() const = 0;
};

// spec: "byte" for ByteTokenizer, otherwise the path of a HF tokenizer.json (or of a directory
// holding one). Errors (moetron::Error, config kind) name the file and JSON path at fault.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec);

// JSONL in, JSONL out, one line per line. Encode mode reads {"text": "..."} and writes
// {"ids": [...]} (with add_special_tokens); decode mode reads {"ids": [...]} and writes
// {"text": "..."} (special tokens kept). Blank lines are copied as blank lines. A malformed line
// throws moetron::Error naming `input_name` and the 1-based line number.
void tokenize_jsonl(const Tokenizer& tokenizer, std::istream& in, std::ostream& out, bool decode,
                    const std::string& input_name);

// Rust's String::from_utf8_lossy: invalid UTF-8 subparts become U+FFFD (for cleaning inputs).
std::string utf8_lossy(std::string_view bytes);

}  // namespace moetron::data
