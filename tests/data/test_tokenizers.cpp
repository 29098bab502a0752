// Tokenizers, unit: byte tokenizer, added-token flags on a hand-built tokenizer.json, errors
// naming the JSON path, the JSONL helper, the regex dialect and UTF-8 lossy decoding.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "byte_level.h"
#include "moetron/core/error.h"
#include "moetron/data/byte_tokenizer.h"
#include "moetron/data/hf_tokenizer.h"
#include "moetron/data/tokenizer.h"
#include "pre_tokenizer.h"
#include "regex_pcre2.h"
#include "unicode.h"

namespace moetron::data {
namespace {

using Ids = std::vector<int32_t>;

std::string ch(unsigned char b) {
  std::string s;
  unicode::append_utf8(s, byte_level::byte_to_char(b));
  return s;
}

// A byte-level BPE whose id for byte b is b, merges h+e, l+l, he+ll, hell+o (ids 256..259),
// then added tokens from 260 on.
nlohmann::json tiny_tokenizer() {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[ch(static_cast<unsigned char>(b))] = b;
  vocab["he"] = 256;
  vocab["ll"] = 257;
  vocab["hell"] = 258;
  vocab["hello"] = 259;
  auto tok = [](int id, const char* content, bool special, bool lstrip, bool rstrip,
                bool single_word, bool normalized) {
    return nlohmann::json{{"id", id},
                          {"content", content},
                          {"special", special},
                          {"lstrip", lstrip},
                          {"rstrip", rstrip},
                          {"single_word", single_word},
                          {"normalized", normalized}};
  };
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens",
           {tok(260, "<s>", true, false, false, false, false),
            tok(261, "[L]", true, true, false, false, false),
            tok(262, "[R]", false, false, true, false, false),
            tok(263, "word", false, false, false, true, false),
            tok(264, "<s>x", false, false, false, false, false),
            tok(265, "\xC3\xA9t\xC3\xA9", false, false, false, false, true)}},  // "été", NFC
          {"normalizer", {{"type", "NFC"}}},
          {"pre_tokenizer",
           {{"type", "ByteLevel"},
            {"add_prefix_space", false},
            {"trim_offsets", true},
            {"use_regex", true}}},
          {"post_processor",
           {{"type", "TemplateProcessing"},
            {"single",
             {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
            {"pair", nlohmann::json::array()},
            {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {260}}, {"tokens", {"<s>"}}}}}}}},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", nullptr},
            {"ignore_merges", false},
            {"vocab", vocab},
            {"merges", {"h e", "l l", nlohmann::json::array({"he", "ll"}), "hell o"}}}}};
}

std::unique_ptr<HfTokenizer> load(const nlohmann::json& j) {
  return HfTokenizer::from_json(j.dump(), "tiny.json");
}

std::string error_of(const nlohmann::json& j) {
  try {
    load(j);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return "";
}

TEST(ByteTokenizer, BytesSpecialsAndRoundTrip) {
  ByteTokenizer t;
  EXPECT_EQ(t.vocab_size(), 266);
  EXPECT_EQ(t.encode("ab", true), (Ids{ByteTokenizer::kBos, 'a', 'b'}));
  EXPECT_EQ(t.encode("<think>x</think><answer>", false),
            (Ids{ByteTokenizer::kThink, 'x', ByteTokenizer::kEndThink, ByteTokenizer::kAnswer}));
  EXPECT_EQ(t.encode("<thin", false), (Ids{'<', 't', 'h', 'i', 'n'}));
  std::string text = "h\xC3\xA9 <answer>42</answer>\n\xF0\x9F\xA4\x96";
  EXPECT_EQ(t.decode(t.encode(text, false), false), text);
  EXPECT_EQ(t.decode(t.encode("<bos>a<eos>", false), true), "a");
  EXPECT_EQ(t.decode({0xE2, 0x82, 'a'}, false),
            "\xEF\xBF\xBD"
            "a");
  EXPECT_EQ(t.token_to_id("<pad>"), ByteTokenizer::kPad);
  EXPECT_EQ(t.id_to_token(ByteTokenizer::kSep), "<sep>");
  EXPECT_FALSE(t.id_to_token(266).has_value());
  EXPECT_EQ(load_tokenizer("byte")->name(), "byte");
}

TEST(HfTokenizer, MergesTemplateAndDecode) {
  auto t = load(tiny_tokenizer());
  EXPECT_EQ(t->encode("hello", false), (Ids{259}));
  EXPECT_EQ(t->encode("hello", true), (Ids{260, 259}));
  EXPECT_EQ(t->encode("hell hello", false), (Ids{258, 32, 259}));  // "hell", " hello"
  EXPECT_EQ(t->bos_id(), 260);
  EXPECT_EQ(t->vocab_size(), 266);
  EXPECT_EQ(t->token_to_id("hell"), 258);
  EXPECT_EQ(t->id_to_token(32), ch(' '));
  EXPECT_EQ(t->decode({260, 259, 32, 0xE2, 0x82}, false), "<s>hello \xEF\xBF\xBD");
  EXPECT_EQ(t->decode({260, 259}, true), "hello");
  EXPECT_EQ(t->decode({259, 99999, -1}, false), "hello");  // unknown ids skipped, as HF
  EXPECT_THROW(t->encode("a\xFF", false), Error);
}

TEST(HfTokenizer, AddedTokenFlags) {
  auto t = load(tiny_tokenizer());
  // lstrip eats the spaces before [L]; they are not tokenized.
  EXPECT_EQ(t->encode("a  [L]b", false), (Ids{'a', 261, 'b'}));
  // rstrip eats spaces and newlines after [R].
  EXPECT_EQ(t->encode("[R] \n b", false), (Ids{262, 'b'}));
  // single_word: only when not touching word characters on either side.
  EXPECT_EQ(t->encode("word", false), (Ids{263}));
  EXPECT_EQ(t->encode("(word)", false), (Ids{'(', 263, ')'}));
  EXPECT_EQ(t->encode("words", false), (Ids{'w', 'o', 'r', 'd', 's'}));
  EXPECT_EQ(t->encode("_word", false), (Ids{'_', 'w', 'o', 'r', 'd'}));
  // Leftmost-longest: "<s>x" beats "<s>".
  EXPECT_EQ(t->encode("<s>x<s>", false), (Ids{264, 260}));
  // normalized=true matches after NFC: decomposed e + U+0301 composes to the token's content.
  EXPECT_EQ(t->encode("e\xCC\x81t\xC3\xA9", false), (Ids{265}));
  EXPECT_TRUE(t->is_special(260));
  EXPECT_FALSE(t->is_special(262));
  EXPECT_EQ(t->decode({262, 263}, true), "[R]word");
}

TEST(HfTokenizer, ErrorsNameFileAndJsonPath) {
  auto j = tiny_tokenizer();
  j["model"]["type"] = "WordPiece";
  EXPECT_NE(error_of(j).find("tiny.json: model.type: unsupported model type 'WordPiece'"),
            std::string::npos);

  j = tiny_tokenizer();
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers", {{{"type", "Digits"}}, {{"type", "Whitespace"}}}}};
  EXPECT_NE(error_of(j).find("pre_tokenizer.pretokenizers[1].type: unsupported pre-tokenizer"),
            std::string::npos);

  j = tiny_tokenizer();
  j["normalizer"] = {{"type", "Lowercase"}};
  EXPECT_NE(error_of(j).find("normalizer.type: unsupported normalizer type 'Lowercase'"),
            std::string::npos);

  j = tiny_tokenizer();
  j["model"]["merges"][1] = "l l l";
  EXPECT_NE(error_of(j).find("model.merges[1]: expected \"left right\""), std::string::npos);

  j = tiny_tokenizer();
  j["model"]["merges"][0] = "h z9";
  EXPECT_NE(error_of(j).find("model.merges[0]: merge 'h' + 'z9'"), std::string::npos);

  j = tiny_tokenizer();
  j["added_tokens"][2]["id"] = 300;
  EXPECT_NE(error_of(j).find("added_tokens[2].id: added token '[R]' has id 300"),
            std::string::npos);

  j = tiny_tokenizer();
  j["pre_tokenizer"] = {
      {"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
  EXPECT_NE(error_of(j).find("pre_tokenizer.pattern: cannot compile regex"), std::string::npos);

  j = tiny_tokenizer();
  j["pre_tokenizer"]["behavior"] = "Sideways";
  j["pre_tokenizer"]["type"] = "Split";
  j["pre_tokenizer"]["pattern"] = {{"String", " "}};
  EXPECT_NE(error_of(j).find("pre_tokenizer.behavior: unknown split behavior 'Sideways'"),
            std::string::npos);

  j = tiny_tokenizer();
  j["model"].erase("vocab");
  EXPECT_NE(error_of(j).find("model.vocab: required field is missing"), std::string::npos);

  j = tiny_tokenizer();
  j["truncation"] = {{"max_length", 8}};
  EXPECT_NE(error_of(j).find("truncation: is not supported"), std::string::npos);

  try {
    HfTokenizer::from_json("{\"model\": ", "broken.json");
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("broken.json: invalid JSON"), std::string::npos);
  }
  EXPECT_THROW(load_tokenizer("/nonexistent/tokenizer.json"), Error);
}

TEST(HfTokenizer, DirectorySpecAndTokenizerConfig) {
  namespace fs = std::filesystem;
  fs::path dir = fs::path(::testing::TempDir()) / "moetron_tok_dir";
  fs::create_directories(dir);
  std::ofstream(dir / "tokenizer.json") << tiny_tokenizer().dump();
  auto t = load_tokenizer(dir.string());
  EXPECT_EQ(t->bos_id(), 260);  // from the template
  EXPECT_FALSE(t->eos_id().has_value());
  std::ofstream(dir / "tokenizer_config.json")
      << R"({"bos_token": {"content": "[L]"}, "eos_token": "[R]", "pad_token": null})";
  t = load_tokenizer((dir / "tokenizer.json").string());
  EXPECT_EQ(t->bos_id(), 261);
  EXPECT_EQ(t->eos_id(), 262);
  EXPECT_FALSE(t->pad_id().has_value());
  std::ofstream(dir / "tokenizer_config.json") << R"({"eos_token": "<nope>"})";
  try {
    load_tokenizer(dir.string());
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer_config.json: eos_token: token '<nope>'"),
              std::string::npos);
  }
  fs::remove_all(dir);
}

TEST(HfTokenizer, ConcurrentEncodeMatchesSerial) {
  auto t = load(tiny_tokenizer());
  std::vector<std::string> texts;
  for (int i = 0; i < 200; ++i) {
    texts.push_back("hello word " + std::to_string(i * 7919) + " [R] x  [L]hell\u00e9" +
                    std::string(i % 13, ' ') + "<s>");
  }
  std::vector<Ids> serial;
  for (const auto& s : texts) serial.push_back(t->encode(s, true));
  std::vector<std::vector<Ids>> got(4);
  std::vector<std::thread> pool;
  for (int k = 0; k < 4; ++k) {
    pool.emplace_back([&, k] {
      for (const auto& s : texts) got[k].push_back(t->encode(s, true));
    });
  }
  for (auto& th : pool) th.join();
  for (int k = 0; k < 4; ++k) EXPECT_EQ(got[k], serial);
}

TEST(TokenizeJsonl, EncodeDecodeAndLineErrors) {
  ByteTokenizer t;
  std::istringstream in("{\"text\": \"hi\"}\n\n{\"text\": \"<eos>\", \"other\": 1}\n");
  std::ostringstream out;
  tokenize_jsonl(t, in, out, false, "in.jsonl");
  EXPECT_EQ(out.str(), "{\"ids\":[256,104,105]}\n\n{\"ids\":[256,257]}\n");

  std::istringstream back("{\"ids\":[256,104,105]}\n{\"ids\":[226,130]}\n");
  std::ostringstream text;
  tokenize_jsonl(t, back, text, true, "ids.jsonl");
  EXPECT_EQ(text.str(), "{\"text\":\"<bos>hi\"}\n{\"text\":\"\xEF\xBF\xBD\"}\n");

  auto line_error = [&](const std::string& input, bool decode) {
    std::istringstream bad(input);
    std::ostringstream sink;
    try {
      tokenize_jsonl(t, bad, sink, decode, "data.jsonl");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(line_error("{\"text\":\"a\"}\n{\"text\": 3}\n", false).find("data.jsonl:2: "),
            std::string::npos);
  EXPECT_NE(line_error("{\"text\":\"a\"}\n\nnot json\n", false).find("data.jsonl:3: invalid JSON"),
            std::string::npos);
  EXPECT_NE(line_error("{\"ids\":[1,\"x\"]}\n", true).find("data.jsonl:1: \"ids\" must hold"),
            std::string::npos);
}

TEST(Regex, OnigurumaDialect) {
  std::vector<std::pair<size_t, size_t>> m;
  // \s includes U+0085 (NEL) like Oniguruma's White_Space, and not U+001C.
  Regex space("\\s", "test");
  space.find_all(
      "a\xC2\x85"
      "b\x1C",
      m);
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0], (std::pair<size_t, size_t>{1, 3}));
  // ^ and $ are line anchors (Ruby syntax); \h is a hex digit.
  m.clear();
  Regex anchor("^a", "test");
  anchor.find_all("a\na", m);
  EXPECT_EQ(m.size(), 2u);
  EXPECT_EQ(Regex::translate("[\\s\\p{L}]\\h\\u3040"),
            "[\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}"
            "\\x{205F}\\x{3000}\\p{L}][0-9a-fA-F]\\x{3040}");
  // Empty matches: like the onig crate, one per character position without repeats.
  m.clear();
  Regex star("a*", "test");
  star.find_all("baab", m);
  EXPECT_EQ(m, (std::vector<std::pair<size_t, size_t>>{{0, 0}, {1, 3}, {4, 4}}));
  EXPECT_EQ(Regex::escape("a.b*"), "a\\.b\\*");
}

TEST(SplitBehavior, MatchesHfOnAxbxx) {
  // Spans of "axbxx" split by "x": a | x | b | x | x.
  std::vector<Span> spans = {
      {0, 1, false}, {1, 2, true}, {2, 3, false}, {3, 4, true}, {4, 5, true}};
  auto run = [&](SplitBehavior b) {
    std::vector<std::string> out;
    split_with_behavior("axbxx", spans, b, out);
    return out;
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(run(SplitBehavior::kMergedWithPrevious), (V{"ax", "bx", "x"}));
  EXPECT_EQ(run(SplitBehavior::kMergedWithNext), (V{"a", "xb", "x", "x"}));
  EXPECT_EQ(run(SplitBehavior::kContiguous), (V{"a", "x", "b", "xx"}));
  EXPECT_EQ(run(SplitBehavior::kRemoved), (V{"a", "b"}));
  EXPECT_EQ(run(SplitBehavior::kIsolated), (V{"a", "x", "b", "x", "x"}));
}

TEST(Unicode, LossyMaximalSubparts) {
  EXPECT_EQ(utf8_lossy("\xF0\x9F\x98"), "\xEF\xBF\xBD");
  EXPECT_EQ(utf8_lossy("\xE0\x80\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(utf8_lossy("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(utf8_lossy("a\xC3"), "a\xEF\xBF\xBD");
  EXPECT_EQ(utf8_lossy("\xE2\x28\xA1"), "\xEF\xBF\xBD(\xEF\xBF\xBD");
  EXPECT_EQ(utf8_lossy("ok \xC3\xA9"), "ok \xC3\xA9");
  EXPECT_EQ(unicode::normalize("e\xCC\x81", unicode::NormalForm::kNFC), "\xC3\xA9");
  EXPECT_EQ(byte_level::byte_to_char(' '), U'\u0120');
  EXPECT_EQ(byte_level::byte_to_char('!'), U'!');
  EXPECT_EQ(byte_level::char_to_byte(U'\u0143'), 0xAD);
}

}  // namespace
}  // namespace moetron::data
