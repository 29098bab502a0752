// Parity with HF transformers' DeepseekV3ForCausalLM through the user-facing path: each fixture
// is an HF checkpoint directory (scripts/fixtures/hf_deepseek_v3.py) loaded by our importer;
// log-probabilities, loss and gradients must match HF's, and our export must reload in HF with
// identical tensors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "moetron/ckpt/hf_model.h"
#include "moetron/ckpt/safetensors.h"
#include "moetron/core/error.h"
#include "moetron/core/files.h"
#include "moetron/model/hf_names.h"
#include "support/venv_python.h"

namespace moetron {
namespace {

const char* const kCases[] = {"q_lora_grouped", "no_q_lora_tied", "yarn", "wide_shared"};

std::string case_dir(const std::string& name) {
  return std::string(MOETRON_FIXTURE_DIR) + "/hf/" + name;
}

// Relative error with a floor, so tiny reference values do not blow it up.
double rel_err(const torch::Tensor& got, const torch::Tensor& want) {
  const double scale = std::max(want.abs().max().item<double>(), 1e-6);
  return (got - want).abs().max().item<double>() / scale;
}

class HfParity : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    dir_ = case_dir(GetParam());
    ASSERT_TRUE(std::filesystem::exists(dir_ + "/expected.safetensors"))
        << "missing fixture " << dir_ << " (scripts/make_fixtures.sh generates it)";
    expected_ = ckpt::load_safetensors(dir_ + "/expected.safetensors");
  }
  std::string dir_;
  std::map<std::string, torch::Tensor> expected_;
};

TEST_P(HfParity, LogprobsLossAndGradientsMatch) {
  auto loaded = ckpt::load_hf_model(dir_);
  auto& m = loaded.model;
  const auto ids = expected_.at("input_ids");
  ASSERT_EQ(ids.dim(), 2);
  ASSERT_GT(std::get<0>(torch::_unique(ids)).numel(), 10) << "fixture input is trivial";

  {
    torch::NoGradGuard no_grad;
    auto logprobs = m->token_logprobs(ids);
    const double err = (logprobs - expected_.at("logprobs")).abs().max().item<double>();
    EXPECT_LT(err, 1e-4) << "max |logprob - HF|";
    RecordProperty("max_logprob_err", std::to_string(err));
  }

  m->zero_grad();
  auto out = m->forward(ids, ids);
  const double want_loss = expected_.at("loss").item<double>();
  EXPECT_LT(std::abs(out.loss.item<double>() - want_loss) / want_loss, 1e-5)
      << "loss " << out.loss.item<double>() << " vs HF " << want_loss;
  out.loss.backward();

  // Gradients under HF names: copy each parameter's gradient into a twin model and let the
  // name mapping slice experts exactly as it does for weights.
  model::DeepseekV3ForCausalLM twin(loaded.config);
  {
    torch::NoGradGuard no_grad;
    auto src = m->named_parameters();
    for (auto& item : twin->named_parameters()) {
      const auto& g = src[item.key()].grad();
      item.value().copy_(g.defined() ? g : torch::zeros_like(item.value()));
    }
  }
  std::map<std::string, torch::Tensor> grads;
  for (auto& [name, t] : model::to_hf_tensors(twin)) grads[name] = t;
  int checked = 0;
  for (const auto& [key, want] : expected_) {
    if (key.rfind("grad.", 0) != 0) continue;
    const std::string name = key.substr(5);
    ASSERT_TRUE(grads.count(name)) << "no parameter for " << name;
    ASSERT_GT(want.abs().max().item<double>(), 0) << name << ": HF gradient is zero";
    EXPECT_LT(rel_err(grads[name], want), 1e-4) << "gradient of " << name;
    ++checked;
  }
  EXPECT_GE(checked, 6);
}

TEST_P(HfParity, ExportReloadsInTransformersWithIdenticalTensors) {
  const std::string python = testing::venv_python();
  ASSERT_TRUE(testing::python_has(python, "transformers"))
      << "no venv Python with transformers (scripts/test.sh installs it)";
  auto loaded = ckpt::load_hf_model(dir_);
  const std::string out = ::testing::TempDir() + "moetron_export_" + GetParam();
  remove_tree(out);
  remove_tree(out + ".resaved");
  ckpt::save_hf_model(out, loaded.model, torch::kFloat32);
  const std::string cmd = "HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error " + python + " " +
                          MOETRON_SOURCE_DIR + "/scripts/fixtures/check_hf_reload.py " + out + " " +
                          dir_ + " > " + out + ".log 2>&1";
  const int rc = std::system(cmd.c_str());
  EXPECT_EQ(rc, 0) << read_text_file(out + ".log");
  remove_tree(out);
  remove_tree(out + ".resaved");
}

INSTANTIATE_TEST_SUITE_P(Cases, HfParity, ::testing::ValuesIn(kCases));

TEST(HfParity, MissingAndUnexpectedTensorsAreListed) {
  const std::string src = case_dir("q_lora_grouped");
  const std::string dir = ::testing::TempDir() + "moetron_broken_ckpt";
  remove_tree(dir);
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(src + "/config.json", dir + "/config.json");
  auto tensors = ckpt::load_safetensors(src + "/model.safetensors");
  tensors.erase("model.layers.1.mlp.experts.3.up_proj.weight");
  tensors.erase("model.norm.weight");
  tensors["model.layers.1.mlp.experts.99.up_proj.weight"] = torch::zeros({2, 2});
  ckpt::NamedTensors named(tensors.begin(), tensors.end());
  ckpt::save_safetensors(dir + "/model.safetensors", named);
  try {
    ckpt::load_hf_model(dir);
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(dir), std::string::npos) << msg;
    EXPECT_NE(msg.find("model.layers.1.mlp.experts.3.up_proj.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("model.norm.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("model.layers.1.mlp.experts.99.up_proj.weight"), std::string::npos) << msg;
  }
  remove_tree(dir);
}

}  // namespace
}  // namespace moetron
