// HfTokenizer: tokenizer.json parsing and HF's encode pipeline (added tokens on raw text,
// normalizer, added tokens on normalized text, pre-tokenizers, BPE, template) and decoder.
#include "moetron/data/hf_tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <unordered_map>

#include "added_vocab.h"
#include "bpe_model.h"
#include "byte_level.h"
#include "json_view.h"
#include "moetron/core/error.h"
#include "moetron/core/files.h"
#include "pre_tokenizer.h"
#include "unicode.h"

namespace moetron::data {
namespace {

enum class Kind : uint8_t { kNone, kModel, kAdded, kSpecial };

// A tokenizer file the user named is a config input: a missing one is a config error.
std::string read_file(const std::string& path) {
  try {
    return read_text_file(path);
  } catch (const Error& e) {
    throw Error(ErrorKind::kConfig, str_cat("tokenizer file: ", e.what()));
  }
}

nlohmann::json parse_json(const std::string& text, const std::string& source) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(ErrorKind::kConfig, str_cat(source, ": invalid JSON: ", e.what()));
  }
}

}  // namespace

struct HfTokenizer::Impl {
  std::string source;
  Normalizer normalizer;
  PreTokenizerChain pre;
  std::unique_ptr<BpeModel> model;
  AddedVocab added;
  std::vector<AddedToken> added_tokens;
  std::unordered_map<std::string, int32_t> added_by_content;
  // Per id: kind, token text, and what the decoder emits for it.
  std::vector<Kind> kind;
  std::vector<std::string> token;
  std::vector<std::string> decoded;
  bool byte_level_decoder = false;
  std::vector<int32_t> prefix, suffix;  // template ids around the sequence
  std::optional<int32_t> template_bos;
  std::optional<int32_t> bos, eos, pad;

  void parse(const JsonView& root);
  void parse_added(const JsonView& list);
  void parse_post(const JsonView& node, bool& have_template);
  void parse_decoder(const JsonView& node);
  void pick_special_ids(const std::string& config_path);
  void set_id(int32_t id, Kind k, const std::string& text) {
    if (static_cast<size_t>(id) >= kind.size()) {
      kind.resize(id + 1, Kind::kNone);
      token.resize(id + 1);
    }
    kind[id] = k;
    token[id] = text;
  }
};

void HfTokenizer::Impl::parse(const JsonView& root) {
  root.expect_object();
  for (const char* key : {"truncation", "padding"}) {
    if (auto v = root.find(key)) v->fail("is not supported (set it to null)");
  }
  normalizer = Normalizer::parse(root.find("normalizer"));
  pre = PreTokenizerChain::parse(root.find("pre_tokenizer"));
  model = std::make_unique<BpeModel>(root.at("model"), pre.byte_level);
  for (const auto& [text, id] : model->vocab()) set_id(id, Kind::kModel, text);
  if (auto list = root.find("added_tokens")) parse_added(*list);

  std::vector<std::string> normalized;
  for (const auto& t : added_tokens) {
    normalized.push_back(t.normalized && !normalizer.empty() ? normalizer.apply(t.content)
                                                             : t.content);
  }
  added.build(added_tokens, normalized);

  bool have_template = false;
  if (auto post = root.find("post_processor")) parse_post(*post, have_template);
  if (auto dec = root.find("decoder")) parse_decoder(*dec);

  decoded.resize(token.size());
  std::string raw;
  for (size_t id = 0; id < token.size(); ++id) {
    // HF's ByteLevel decoder maps a token through the byte table only when every character is in
    // it, else keeps its UTF-8 (so "<think>" stays text while a content like "café" becomes raw
    // byte 0xE9, which is HF's behaviour and kept for parity).
    if (byte_level_decoder && byte_level::decode(token[id], raw)) {
      decoded[id] = raw;
    } else {
      decoded[id] = token[id];
    }
  }
}

void HfTokenizer::Impl::parse_added(const JsonView& list) {
  list.expect_array();
  int64_t max_added = -1;
  for (size_t i = 0; i < list.size(); ++i) {
    JsonView t = list.at(i);
    AddedToken tok;
    tok.content = t.at("content").str();
    tok.special = t.flag("special", false);
    tok.lstrip = t.flag("lstrip", false);
    tok.rstrip = t.flag("rstrip", false);
    tok.single_word = t.flag("single_word", false);
    tok.normalized = t.flag("normalized", !tok.special);
    int64_t id = t.at("id").integer();
    if (tok.content.empty()) t.at("content").fail("an added token cannot be empty");
    if (added_by_content.count(tok.content)) {
      t.at("content").fail(str_cat("duplicate added token '", tok.content, "'"));
    }
    // HF re-numbers added tokens on load: a content in the model vocab keeps the vocab id,
    // others follow the largest added id or the vocab size. A file that disagrees would give
    // different ids in HF, so refuse it rather than guess.
    int64_t expected;
    auto in_vocab = model->vocab().find(tok.content);
    if (in_vocab != model->vocab().end()) {
      expected = in_vocab->second;
    } else {
      auto n = static_cast<int64_t>(model->size());
      expected = max_added >= 0 && (max_added >= n || n == 0) ? max_added + 1 : n;
    }
    if (id != expected) {
      t.at("id").fail(str_cat("added token '", tok.content, "' has id ", id,
                              " but HF tokenizers assigns it id ", expected,
                              " (added ids must follow the model vocab without gaps)"));
    }
    tok.id = static_cast<int32_t>(id);
    max_added = std::max(max_added, id);
    added_by_content.emplace(tok.content, tok.id);
    set_id(tok.id, tok.special ? Kind::kSpecial : Kind::kAdded, tok.content);
    added_tokens.push_back(tok);
  }
}

void HfTokenizer::Impl::parse_post(const JsonView& node, bool& have_template) {
  std::string type = node.at("type").str();
  if (type == "Sequence") {
    JsonView list = node.at("processors");
    list.expect_array();
    for (size_t i = 0; i < list.size(); ++i) parse_post(list.at(i), have_template);
  } else if (type == "ByteLevel") {
    // Only adjusts offsets; ids are unchanged.
  } else if (type == "TemplateProcessing") {
    if (have_template) node.fail("more than one TemplateProcessing is not supported");
    have_template = true;
    JsonView specials = node.at("special_tokens");
    JsonView single = node.at("single");
    single.expect_array();
    bool seen_a = false;
    for (size_t i = 0; i < single.size(); ++i) {
      JsonView item = single.at(i);
      if (auto seq = item.find("Sequence")) {
        std::string which = seq->at("id").str();
        if (which != "A" || seen_a) seq->at("id").fail("single template must hold $A once");
        seen_a = true;
      } else if (auto sp = item.find("SpecialToken")) {
        std::string name = sp->at("id").str();
        auto entry = specials.find(name);
        if (!entry) sp->at("id").fail(str_cat("'", name, "' is not in special_tokens"));
        JsonView ids = entry->at("ids");
        ids.expect_array();
        for (size_t k = 0; k < ids.size(); ++k) {
          int64_t id = ids.at(k).integer();
          if (id < 0 || id > INT32_MAX) ids.at(k).fail("expected a token id");
          (seen_a ? suffix : prefix).push_back(static_cast<int32_t>(id));
        }
      } else {
        item.fail("expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
      }
    }
    if (!seen_a) single.fail("single template has no $A");
    if (!prefix.empty()) template_bos = prefix.front();
  } else {
    node.at("type").fail(str_cat("unsupported post_processor type '", type,
                                 "' (supported: TemplateProcessing, ByteLevel, Sequence)"));
  }
}

void HfTokenizer::Impl::parse_decoder(const JsonView& node) {
  std::string type = node.at("type").str();
  if (type == "Sequence") {
    JsonView list = node.at("decoders");
    list.expect_array();
    for (size_t i = 0; i < list.size(); ++i) parse_decoder(list.at(i));
  } else if (type == "ByteLevel") {
    byte_level_decoder = true;
  } else {
    node.at("type").fail(
        str_cat("unsupported decoder type '", type, "' (supported: ByteLevel, Sequence)"));
  }
}

void HfTokenizer::Impl::pick_special_ids(const std::string& config_path) {
  auto lookup = [&](const std::string& s) -> std::optional<int32_t> {
    auto a = added_by_content.find(s);
    if (a != added_by_content.end()) return a->second;
    auto m = model->vocab().find(s);
    if (m != model->vocab().end()) return m->second;
    return std::nullopt;
  };
  std::optional<std::string> names[3];
  if (!config_path.empty() && std::filesystem::exists(config_path)) {
    nlohmann::json cfg = parse_json(read_file(config_path), config_path);
    JsonView root(cfg, "", config_path);
    const char* keys[3] = {"bos_token", "eos_token", "pad_token"};
    for (int k = 0; k < 3; ++k) {
      if (!root.is_object()) root.expect_object();
      auto v = root.find(keys[k]);
      if (!v) continue;
      names[k] = v->is_object() ? v->at("content").str() : v->str();
      if (!lookup(*names[k])) v->fail(str_cat("token '", *names[k], "' is not in the vocabulary"));
    }
  }
  auto first_known = [&](std::initializer_list<const char*> list) -> std::optional<int32_t> {
    for (const char* s : list) {
      if (auto id = lookup(s)) return id;
    }
    return std::nullopt;
  };
  bos = names[0] ? lookup(*names[0]) : template_bos;
  if (!bos) bos = first_known({"<｜begin▁of▁sentence｜>", "<|begin_of_text|>", "<s>", "<bos>"});
  eos = names[1] ? lookup(*names[1])
                 : first_known({"<｜end▁of▁sentence｜>", "<|end_of_text|>", "<|endoftext|>", "</s>",
                                "<eos>", "<|im_end|>"});
  pad = names[2] ? lookup(*names[2]) : first_known({"<｜▁pad▁｜>", "<pad>", "<|pad|>"});
}

HfTokenizer::HfTokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HfTokenizer::~HfTokenizer() = default;

std::unique_ptr<HfTokenizer> HfTokenizer::from_json(const std::string& json,
                                                    const std::string& source) {
  auto impl = std::make_unique<Impl>();
  impl->source = source;
  nlohmann::json doc = parse_json(json, source);
  impl->parse(JsonView(doc, "", impl->source));
  impl->pick_special_ids("");
  return std::unique_ptr<HfTokenizer>(new HfTokenizer(std::move(impl)));
}

std::unique_ptr<HfTokenizer> HfTokenizer::from_file(const std::string& path) {
  std::filesystem::path p(path);
  if (std::filesystem::is_directory(p)) p /= "tokenizer.json";
  auto impl = std::make_unique<Impl>();
  impl->source = p.string();
  nlohmann::json doc = parse_json(read_file(impl->source), impl->source);
  impl->parse(JsonView(doc, "", impl->source));
  impl->pick_special_ids((p.parent_path() / "tokenizer_config.json").string());
  return std::unique_ptr<HfTokenizer>(new HfTokenizer(std::move(impl)));
}

std::vector<int32_t> HfTokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const Impl& m = *impl_;
  size_t bad = unicode::find_invalid_utf8(text);
  if (bad != std::string_view::npos) {
    throw Error(str_cat("tokenizer ", m.source, ": input is not valid UTF-8 (byte offset ", bad,
                        "); clean it with moetron::data::utf8_lossy"));
  }
  std::vector<int32_t> ids(m.prefix.begin(),
                           add_special_tokens ? m.prefix.end() : m.prefix.begin());
  std::vector<Piece> raw, pieces;
  if (m.added.empty(false)) {
    raw.push_back({std::string(text), -1});
  } else {
    m.added.split(text, false, raw);
  }
  for (auto& p : raw) {
    if (p.id >= 0) {
      pieces.push_back(std::move(p));
      continue;
    }
    std::string norm = m.normalizer.empty() ? std::move(p.text) : m.normalizer.apply(p.text);
    if (m.added.empty(true)) {
      pieces.push_back({std::move(norm), -1});
    } else {
      m.added.split(norm, true, pieces);
    }
  }
  std::vector<std::string> words;
  for (auto& p : pieces) {
    if (p.id >= 0) {
      ids.push_back(p.id);
      continue;
    }
    if (p.text.empty()) continue;
    words.clear();
    words.push_back(std::move(p.text));
    m.pre.apply(words);
    for (const auto& w : words) m.model->tokenize(w, ids);
  }
  if (add_special_tokens) ids.insert(ids.end(), m.suffix.begin(), m.suffix.end());
  return ids;
}

std::string HfTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  const Impl& m = *impl_;
  std::string out;
  bool first = true;
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= m.kind.size() || m.kind[id] == Kind::kNone) continue;
    if (skip_special_tokens && m.kind[id] == Kind::kSpecial) continue;
    if (!m.byte_level_decoder && !first) out.push_back(' ');  // HF joins with spaces
    out += m.decoded[id];
    first = false;
  }
  return m.byte_level_decoder ? unicode::utf8_lossy(out) : out;
}

int32_t HfTokenizer::vocab_size() const {
  return static_cast<int32_t>(impl_->kind.size());
}

std::optional<int32_t> HfTokenizer::token_to_id(std::string_view token) const {
  std::string key(token);
  auto a = impl_->added_by_content.find(key);
  if (a != impl_->added_by_content.end()) return a->second;
  auto m = impl_->model->vocab().find(key);
  if (m != impl_->model->vocab().end()) return m->second;
  return std::nullopt;
}

std::optional<std::string> HfTokenizer::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->kind.size() || impl_->kind[id] == Kind::kNone) {
    return std::nullopt;
  }
  return impl_->token[id];
}

bool HfTokenizer::is_special(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->kind.size() &&
         impl_->kind[id] == Kind::kSpecial;
}

std::optional<int32_t> HfTokenizer::bos_id() const {
  return impl_->bos;
}
std::optional<int32_t> HfTokenizer::eos_id() const {
  return impl_->eos;
}
std::optional<int32_t> HfTokenizer::pad_id() const {
  return impl_->pad;
}
std::string HfTokenizer::name() const {
  return impl_->source;
}

}  // namespace moetron::data
