// `moetron score`, `convert` and `tokenize` as a user runs them: exit codes, messages naming the
// file and line, and score output equal to HF transformers' log-probabilities.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <sstream>

#include "moetron/ckpt/safetensors.h"
#include "support/cli_runner.h"

namespace moetron {
namespace {

using namespace moetron::testing;

const std::string kFixture = std::string(MOETRON_FIXTURE_DIR) + "/hf/q_lora_grouped";

std::vector<nlohmann::json> parse_lines(const std::string& text) {
  std::vector<nlohmann::json> rows;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

// The fixture's input rows as {"ids": [...]} lines and HF's log-probabilities for them.
struct Inputs {
  std::string jsonl;
  torch::Tensor logprobs;
};
Inputs fixture_inputs() {
  auto expected = ckpt::load_safetensors(kFixture + "/expected.safetensors");
  auto ids = expected.at("input_ids");
  std::string jsonl;
  for (int64_t b = 0; b < ids.size(0); ++b) {
    nlohmann::json row;
    row["ids"] =
        std::vector<int64_t>(ids[b].data_ptr<int64_t>(), ids[b].data_ptr<int64_t>() + ids.size(1));
    jsonl += row.dump() + "\n";
  }
  return {jsonl, expected.at("logprobs")};
}

TEST(CliScore, MatchesTransformersLogprobs) {
  const std::string dir = scratch_dir();
  auto inputs = fixture_inputs();
  write_text(dir + "/in.jsonl", inputs.jsonl);
  const CliResult r = run_moetron(
      {"score", "--model", kFixture, "--input", "in.jsonl", "--output", "out.jsonl"}, dir);
  ASSERT_EQ(r.code, 0) << r.err;
  auto rows = parse_lines(read_text(dir + "/out.jsonl"));
  ASSERT_EQ(static_cast<int64_t>(rows.size()), inputs.logprobs.size(0));
  for (size_t b = 0; b < rows.size(); ++b) {
    auto got = rows[b]["logprobs"].get<std::vector<double>>();
    ASSERT_EQ(static_cast<int64_t>(got.size()), inputs.logprobs.size(1));
    double sum = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_NEAR(got[i], inputs.logprobs[b][i].item<double>(), 1e-4)
          << "row " << b << " pos " << i;
      sum += got[i];
    }
    EXPECT_NEAR(rows[b]["loss"].get<double>(), -sum / got.size(), 1e-9);
    EXPECT_EQ(rows[b]["tokens"].get<int64_t>(), static_cast<int64_t>(got.size()));
  }
}

TEST(CliScore, BadLinesNameFileAndLine) {
  const std::string dir = scratch_dir();
  write_text(dir + "/a.jsonl", "{\"ids\": [1, 2, 3]}\n{\"ids\": [1, 9999]}\n");
  CliResult r = run_moetron({"score", "--model", kFixture, "--input", "a.jsonl"}, dir);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("a.jsonl:2: token id 9999 is outside the vocabulary [0, 96)"),
            std::string::npos)
      << r.err;
  write_text(dir + "/b.jsonl", "{\"text\": \"hi\"}\n");
  r = run_moetron({"score", "--model", kFixture, "--input", "b.jsonl"}, dir);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("b.jsonl:1: expected an object {\"ids\": [...]}"), std::string::npos)
      << r.err;
  r = run_moetron({"score", "--input", "b.jsonl"}, dir);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--model is required"), std::string::npos) << r.err;
}

TEST(CliConvert, Fp32RoundTripScoresIdenticallyAndRefusesToClobber) {
  const std::string dir = scratch_dir();
  write_text(dir + "/in.jsonl", fixture_inputs().jsonl);
  CliResult r =
      run_moetron({"convert", "--from", kFixture, "--to", "conv", "--dtype", "fp32"}, dir);
  ASSERT_EQ(r.code, 0) << r.err;
  const CliResult a = run_moetron({"score", "--model", kFixture, "--input", "in.jsonl"}, dir);
  const CliResult b = run_moetron({"score", "--model", "conv", "--input", "in.jsonl"}, dir);
  ASSERT_EQ(a.code, 0);
  ASSERT_EQ(b.code, 0);
  EXPECT_EQ(a.out, b.out);
  r = run_moetron({"convert", "--from", kFixture, "--to", "conv"}, dir);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("conv"), std::string::npos) << r.err;
  r = run_moetron({"convert", "--from", kFixture, "--to", "x", "--dtype", "fp8"}, dir);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--dtype: expected bf16 or fp32, got 'fp8'"), std::string::npos) << r.err;
}

TEST(CliTokenize, ByteTokenizerRoundTrip) {
  const std::string dir = scratch_dir();
  write_text(dir + "/t.jsonl", "{\"text\": \"12+30=42\"}\n");
  CliResult r = run_moetron({"tokenize", "--input", "t.jsonl", "--output", "ids.jsonl"}, dir);
  ASSERT_EQ(r.code, 0) << r.err;
  auto ids = parse_lines(read_text(dir + "/ids.jsonl"))[0]["ids"].get<std::vector<int>>();
  ASSERT_EQ(ids.size(), 9u);  // <bos> + 8 bytes
  EXPECT_EQ(ids[0], 256);
  EXPECT_EQ(ids[1], '1');
  EXPECT_EQ(ids[8], '2');
  r = run_moetron({"tokenize", "--decode", "--input", "ids.jsonl"}, dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("12+30=42"), std::string::npos) << r.out;
  write_text(dir + "/bad.jsonl", "{\"text\": 5}\n");
  r = run_moetron({"tokenize", "--input", "bad.jsonl"}, dir);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("bad.jsonl:1"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace moetron
