// Golden: HfTokenizer against HF tokenizers on the fixtures of scripts/fixtures/hf_tokenizers.py
// (every id equal, decode equal to HF's, decode(encode(x)) == x where HF is lossless too).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "moetron/data/hf_tokenizer.h"

namespace moetron::data {
namespace {

const std::string kDir = std::string(MOETRON_FIXTURE_DIR) + "/tokenizers";

std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::ifstream f(path);
  EXPECT_TRUE(f) << "missing fixture " << path << " (run scripts/make_fixtures.sh)";
  std::vector<nlohmann::json> out;
  std::string line;
  while (std::getline(f, line)) out.push_back(nlohmann::json::parse(line));
  return out;
}

std::vector<std::string> case_names() {
  std::ifstream f(kDir + "/cases.json");
  if (!f) return {};
  auto j = nlohmann::json::parse(f);
  std::vector<std::string> names;
  for (const auto& c : j["cases"]) names.push_back(c["case"].get<std::string>());
  return names;
}

class HfParity : public ::testing::TestWithParam<std::string> {};

TEST(HfParityFixtures, Present) {
  auto names = case_names();
  ASSERT_GE(names.size(), 5u) << "fixtures missing in " << kDir;
}

TEST_P(HfParity, EncodeIdsAndDecodeMatchHf) {
  const std::string dir = kDir + "/" + GetParam();
  auto tok = HfTokenizer::from_file(dir + "/tokenizer.json");
  auto lines = read_jsonl(dir + "/encode.jsonl");
  ASSERT_GT(lines.size(), 100u);
  size_t total_ids = 0, mismatches = 0;
  for (const auto& rec : lines) {
    const std::string text = rec["text"].get<std::string>();
    auto want = rec["ids"].get<std::vector<int32_t>>();
    auto want_plain = rec["ids_plain"].get<std::vector<int32_t>>();
    auto got = tok->encode(text, true);
    auto got_plain = tok->encode(text, false);
    total_ids += want.size();
    if (got != want || got_plain != want_plain) {
      if (++mismatches <= 5) {
        ADD_FAILURE() << GetParam() << ": ids differ for " << nlohmann::json(text).dump()
                      << "\n  hf:  " << nlohmann::json(want).dump()
                      << "\n  got: " << nlohmann::json(got).dump();
      }
      continue;
    }
    EXPECT_EQ(tok->decode(want, false), rec["decoded"].get<std::string>()) << text;
    EXPECT_EQ(tok->decode(want, true), rec["decoded_skip"].get<std::string>()) << text;
    if (rec["lossless"].get<bool>()) {
      EXPECT_EQ(tok->decode(got_plain, false), text);
    }
  }
  EXPECT_EQ(mismatches, 0u) << "of " << lines.size() << " lines";
  EXPECT_GT(total_ids, 10000u);  // non-trivial
}

TEST_P(HfParity, DecodeArbitraryIdsMatchesHf) {
  const std::string dir = kDir + "/" + GetParam();
  auto tok = HfTokenizer::from_file(dir + "/tokenizer.json");
  auto lines = read_jsonl(dir + "/decode.jsonl");
  ASSERT_GT(lines.size(), 100u);
  size_t replacement = 0;
  for (const auto& rec : lines) {
    auto ids = rec["ids"].get<std::vector<int32_t>>();
    auto text = rec["text"].get<std::string>();
    EXPECT_EQ(tok->decode(ids, false), text) << nlohmann::json(ids).dump();
    EXPECT_EQ(tok->decode(ids, true), rec["text_skip"].get<std::string>())
        << nlohmann::json(ids).dump();
    replacement += text.find("\xEF\xBF\xBD") != std::string::npos;
  }
  EXPECT_GT(replacement, 10u);  // the cases do exercise invalid UTF-8
}

INSTANTIATE_TEST_SUITE_P(Fixtures, HfParity, ::testing::ValuesIn(case_names()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace moetron::data
