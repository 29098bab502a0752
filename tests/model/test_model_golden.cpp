// Golden: our DeepseekV3ForCausalLM loaded with HF-named weights reproduces HF transformers'
// DeepseekV3 and DeepseekV2 (softmax / greedy / group-limited routing) logits and loss in fp32
// (fixtures from tests/model/make_hf_fixtures.py; skipped when they have not been generated).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "moetron/model/hf_names.h"
#include "moetron/model/model.h"
#include "tiny.h"

namespace moetron::model {
namespace {

// Minimal safetensors reader for the fixture (F32 / I64 only).
std::unordered_map<std::string, torch::Tensor> read_safetensors(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  uint64_t n = 0;
  f.read(reinterpret_cast<char*>(&n), 8);
  std::string header(n, '\0');
  f.read(header.data(), static_cast<std::streamsize>(n));
  std::vector<char> data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::unordered_map<std::string, torch::Tensor> out;
  const auto json = nlohmann::json::parse(header);
  for (auto it = json.begin(); it != json.end(); ++it) {
    const std::string name = it.key();
    const auto& info = it.value();
    if (name == "__metadata__") continue;
    const std::string dt = info.at("dtype").get<std::string>();
    auto dtype = dt == "F32" ? torch::kFloat32 : torch::kInt64;
    const auto shape = info.at("shape").get<std::vector<int64_t>>();
    const auto begin = info.at("data_offsets").at(0).get<size_t>();
    const auto end = info.at("data_offsets").at(1).get<size_t>();
    auto t = torch::empty(shape, dtype);
    EXPECT_EQ(static_cast<size_t>(t.nbytes()), end - begin) << name;
    std::memcpy(t.data_ptr(), data.data() + begin, end - begin);
    out.emplace(name, t);
  }
  return out;
}

// Mirrors CASES in make_hf_fixtures.py.
config::Config golden_config(const std::string& name) {
  config::RopeScaling yarn;
  yarn.factor = 4.0;
  yarn.original_max_position_embeddings = 16;
  yarn.mscale = 0.707;
  yarn.mscale_all_dim = 0.707;
  auto c = testing::tiny_config(name == "yarn_qlora" || name == "v2_group_limited", 0);
  if (name == "yarn_qlora" || name == "v2_lite_greedy") c.model.rope_scaling = yarn;
  if (name.rfind("v2_", 0) == 0) {
    c.moe.scoring_func = config::ScoringFunc::kSoftmax;
    c.moe.norm_topk_prob = false;
  }
  if (name == "v2_lite_greedy") {
    c.moe.topk_method = config::TopkMethod::kGreedy;
    c.moe.n_group = 1;
    c.moe.topk_group = 1;
    c.moe.routed_scaling_factor = 1.0;
  }
  if (name == "v2_group_limited") {
    c.moe.topk_method = config::TopkMethod::kGroupLimitedGreedy;
    c.moe.topk_group = 1;  // K = 2 from one group: differs from greedy
    c.moe.routed_scaling_factor = 16.0;
  }
  return c;
}

class HfGolden : public ::testing::TestWithParam<const char*> {};

TEST_P(HfGolden, LogitsAndLossMatchTransformers) {
  const std::string name = GetParam();
  const std::string path =
      std::string(MOETRON_FIXTURE_DIR) + "/model/hf_deepseek_" + name + ".safetensors";
  if (!std::ifstream(path).good()) {
    GTEST_SKIP() << "no fixture " << path << " (run tests/model/make_hf_fixtures.py)";
  }
  auto data = read_safetensors(path);
  std::unordered_map<std::string, torch::Tensor> weights;
  for (auto& [k, v] : data) {
    if (k.rfind("weight.", 0) == 0) weights.emplace(k.substr(7), v);
  }
  torch::manual_seed(0);
  DeepseekV3ForCausalLM m(golden_config(name));
  load_hf_tensors(m, weights);  // also proves the names line up exactly
  m->eval();
  auto ids = data.at("input_ids");
  ForwardOptions opt;
  opt.return_logits = true;
  auto out = m->forward(ids, data.at("labels"), {}, {}, opt);
  auto err = (out.logits_BTV - data.at("logits")).abs().max().item<double>();
  EXPECT_LT(err, 1e-5) << "max |logits - HF|";
  std::cout << "[golden " << name << "] max |logits - HF| = " << err << "\n";
  EXPECT_NEAR(out.main_loss.item<double>(), data.at("loss")[0].item<double>(), 1e-5);
  auto pos = default_position_ids(2, 12, torch::kCPU) + 5;
  auto shifted = m->forward(ids, {}, pos, {}, opt).logits_BTV;
  EXPECT_LT((shifted - data.at("logits_pos5")).abs().max().item<double>(), 1e-5);
  // Routing must be non-trivial for this to mean anything.
  EXPECT_GE((out.expert_counts_ME > 0).sum().item<int64_t>(), 8);

  // The case discriminates: a neighbouring rule on the same weights changes the logits
  // (YaRN -> plain RoPE; group-limited -> greedy; otherwise the correction bias zeroed).
  auto other = golden_config(name);
  bool zero_bias = false;
  if (other.model.rope_scaling) {
    other.model.rope_scaling.reset();
  } else if (other.moe.topk_method == config::TopkMethod::kGroupLimitedGreedy) {
    other.moe.topk_method = config::TopkMethod::kGreedy;
  } else {
    zero_bias = true;
  }
  DeepseekV3ForCausalLM m2(other);
  load_hf_tensors(m2, weights);
  m2->eval();
  if (zero_bias) {
    torch::NoGradGuard g;
    for (auto& l : m2->moe_layers()) l->gate->e_score_correction_bias.zero_();
  }
  auto alt = m2->forward(ids, {}, {}, {}, opt).logits_BTV;
  EXPECT_GT((alt - data.at("logits")).abs().max().item<double>(), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Cases, HfGolden,
                         ::testing::Values("yarn_qlora", "plain_no_qlora", "v2_lite_greedy",
                                           "v2_group_limited"));

}  // namespace
}  // namespace moetron::model
