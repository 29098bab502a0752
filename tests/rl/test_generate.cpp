// Generation engine: cached greedy decoding equals greedy decoding by full forward passes (with
// prompts of different lengths, so left padding and per-row positions are exercised), sampler
// log-probs equal the trainer's token_logprobs, seeded sampling is reproducible, stops work.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "model/tiny.h"
#include "moetron/core/error.h"
#include "moetron/rl/generate.h"

namespace moetron::rl {
namespace {

model::DeepseekV3ForCausalLM tiny_model() {
  torch::manual_seed(7);
  auto cfg = model::testing::tiny_config(true, 0);
  cfg.model.max_position_embeddings = 64;
  return model::DeepseekV3ForCausalLM(cfg);
}

const std::vector<std::vector<int64_t>> kPrompts = {
    {3, 9, 27, 4}, {5}, {11, 12, 13, 14, 15, 16, 17}};

// Greedy continuation by re-running the whole sequence each step (no cache).
std::vector<int64_t> naive_greedy(model::DeepseekV3ForCausalLM& m, std::vector<int64_t> seq,
                                  int64_t n) {
  torch::NoGradGuard no_grad;
  std::vector<int64_t> out;
  for (int64_t i = 0; i < n; ++i) {
    model::ForwardOptions o;
    o.return_logits = true;
    auto ids = torch::tensor(seq, torch::kLong).unsqueeze(0);
    auto logits = m->forward(ids, {}, {}, {}, o).logits_BTV;
    const int64_t t = logits[0][-1].argmax().item<int64_t>();
    out.push_back(t);
    seq.push_back(t);
  }
  return out;
}

TEST(Generate, CachedGreedyEqualsFullForwardGreedy) {
  auto m = tiny_model();
  m->eval();
  SamplingOptions o;
  o.greedy = true;
  o.max_new_tokens = 12;
  auto got = generate(m, kPrompts, o);
  ASSERT_EQ(got.size(), kPrompts.size());
  std::set<int64_t> distinct;
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    auto want = naive_greedy(m, kPrompts[i], o.max_new_tokens);
    EXPECT_EQ(got[i].ids, want) << "prompt " << i;
    EXPECT_FALSE(got[i].stopped);
    distinct.insert(want.begin(), want.end());
  }
  EXPECT_GT(distinct.size(), 3u) << "degenerate model: every step emits the same token";
}

// Samples at `temperature`, then checks each token's sampler log-prob against the trainer's
// token_logprobs at the same temperature over the full sequence.
void expect_sampler_logprobs_match_trainer(double temperature, uint64_t seed) {
  auto m = tiny_model();
  SamplingOptions o;
  o.max_new_tokens = 10;
  o.seed = seed;
  o.temperature = temperature;
  auto got = generate(m, kPrompts, o);
  torch::NoGradGuard no_grad;
  m->eval();
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    std::vector<int64_t> seq = kPrompts[i];
    seq.insert(seq.end(), got[i].ids.begin(), got[i].ids.end());
    auto ids = torch::tensor(seq, torch::kLong).unsqueeze(0);
    auto lp = m->token_logprobs(ids, {}, {}, 256, temperature)[0];
    const int64_t p = static_cast<int64_t>(kPrompts[i].size());
    for (size_t j = 0; j < got[i].ids.size(); ++j) {
      EXPECT_NEAR(got[i].logprobs[j], lp[p - 1 + static_cast<int64_t>(j)].item<float>(), 1e-5)
          << "temperature " << temperature << " prompt " << i << " token " << j;
    }
  }
}

TEST(Generate, SamplerLogprobsEqualTrainerLogprobs) {
  expect_sampler_logprobs_match_trainer(1.0, 123);
}

TEST(Generate, TemperedSamplerLogprobsEqualTemperedTrainerLogprobs) {
  expect_sampler_logprobs_match_trainer(0.6, 321);
}

TEST(Generate, SeededSamplingIsReproducibleAndSeedMatters) {
  auto m = tiny_model();
  SamplingOptions o;
  o.max_new_tokens = 16;
  o.seed = 5;
  auto a = generate(m, kPrompts, o);
  auto b = generate(m, kPrompts, o);
  o.seed = 6;
  auto c = generate(m, kPrompts, o);
  bool differs = false;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].ids, b[i].ids);
    differs = differs || a[i].ids != c[i].ids;
  }
  EXPECT_TRUE(differs);
}

TEST(Generate, StopIdsEndRowsEarlyAndTopKOneIsGreedy) {
  auto m = tiny_model();
  SamplingOptions greedy;
  greedy.greedy = true;
  greedy.max_new_tokens = 12;
  auto g = generate(m, kPrompts, greedy);
  // Stop on the third token greedy produces for prompt 0: that row ends there, others go on.
  SamplingOptions o = greedy;
  o.stop_ids = {g[0].ids[2]};
  auto s = generate(m, kPrompts, o);
  ASSERT_TRUE(s[0].stopped);
  auto first = std::find(g[0].ids.begin(), g[0].ids.end(), g[0].ids[2]) - g[0].ids.begin();
  EXPECT_EQ(static_cast<int64_t>(s[0].ids.size()), first + 1);
  EXPECT_EQ(s[0].ids.back(), g[0].ids[2]);
  for (size_t i = 1; i < s.size(); ++i) {
    // Rows that continue are unaffected by the others' removal from the batch.
    const size_t n = s[i].ids.size();
    EXPECT_EQ(std::vector<int64_t>(g[i].ids.begin(), g[i].ids.begin() + n), s[i].ids);
  }
  SamplingOptions k1;
  k1.top_k = 1;
  k1.max_new_tokens = 12;
  k1.seed = 99;
  auto t = generate(m, kPrompts, k1);
  for (size_t i = 0; i < t.size(); ++i) EXPECT_EQ(t[i].ids, g[i].ids);
}

TEST(Generate, StopStringsEndRowsWhereTheTextFirstContainsThem) {
  auto m = tiny_model();
  SamplingOptions greedy;
  greedy.greedy = true;
  greedy.max_new_tokens = 12;
  auto g = generate(m, kPrompts, greedy);
  // A toy detokenizer: one letter per token, so a stop string can span two tokens.
  auto decode = [](const std::vector<int64_t>& ids) {
    std::string s;
    for (int64_t t : ids) s += static_cast<char>('a' + t % 26);
    return s;
  };
  const std::string text0 = decode(g[0].ids);
  const std::string stop = text0.substr(2, 2);  // tokens 2 and 3 of row 0
  SamplingOptions o = greedy;
  o.stop_strings = {stop};
  o.decode = decode;
  auto s = generate(m, kPrompts, o);
  for (size_t i = 0; i < s.size(); ++i) {
    const auto at = decode(g[i].ids).find(stop);
    const size_t want = at == std::string::npos ? g[i].ids.size() : at + stop.size();
    EXPECT_EQ(s[i].ids.size(), want) << "row " << i;
    EXPECT_EQ(s[i].stopped, at != std::string::npos) << "row " << i;
    EXPECT_EQ(std::vector<int64_t>(g[i].ids.begin(), g[i].ids.begin() + want), s[i].ids);
  }
  EXPECT_TRUE(s[0].stopped);
  o.decode = nullptr;
  EXPECT_THROW(generate(m, kPrompts, o), Error);
}

TEST(Generate, RejectsTooLongRequests) {
  auto m = tiny_model();
  SamplingOptions o;
  o.max_new_tokens = 100;
  EXPECT_THROW(generate(m, kPrompts, o), Error);
  EXPECT_THROW(generate(m, {{}}, SamplingOptions{}), Error);
}

}  // namespace
}  // namespace moetron::rl
