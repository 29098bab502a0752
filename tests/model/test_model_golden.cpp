// Golden: our DeepseekV3ForCausalLM loaded with HF-named weights reproduces HF transformers'
// DeepseekV3 logits and loss in fp32 (fixtures from tests/model/make_hf_fixtures.py; skipped
// when they have not been generated).
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

config::Config golden_config(bool yarn_qlora) {
  auto c = testing::tiny_config(yarn_qlora, 0);
  if (yarn_qlora) {
    config::RopeScaling y;
    y.factor = 4.0;
    y.original_max_position_embeddings = 16;
    y.mscale = 0.707;
    y.mscale_all_dim = 0.707;
    c.model.rope_scaling = y;
  }
  return c;
}

class HfGolden : public ::testing::TestWithParam<const char*> {};

TEST_P(HfGolden, LogitsAndLossMatchTransformers) {
  const std::string name = GetParam();
  const std::string path =
      std::string(MOETRON_FIXTURE_DIR) + "/model/hf_deepseek_v3_" + name + ".safetensors";
  if (!std::ifstream(path).good()) {
    GTEST_SKIP() << "no fixture " << path << " (run tests/model/make_hf_fixtures.py)";
  }
  auto data = read_safetensors(path);
  std::unordered_map<std::string, torch::Tensor> weights;
  for (auto& [k, v] : data) {
    if (k.rfind("weight.", 0) == 0) weights.emplace(k.substr(7), v);
  }
  torch::manual_seed(0);
  DeepseekV3ForCausalLM m(golden_config(name == std::string("yarn_qlora")));
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
}

INSTANTIATE_TEST_SUITE_P(Cases, HfGolden, ::testing::Values("yarn_qlora", "plain_no_qlora"));

}  // namespace
}  // namespace moetron::model
