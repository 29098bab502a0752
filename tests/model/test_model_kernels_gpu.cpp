// GPU: the tiny model with kernels.gate: cuda and kernels.permute: cuda gives the loss, the
// expert counts and the gradients of the reference implementations (fp32, and a bf16 autocast
// step stays close). Skipped without a CUDA device or CUDA kernels.
#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moetron/model/model.h"
#include "moetron/ops/impl.h"
#include "tiny.h"

namespace moetron::model {
namespace {

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.cpu().to(torch::kFloat64) - b.cpu().to(torch::kFloat64)).abs().max().item<double>();
}

std::pair<DeepseekV3ForCausalLM, DeepseekV3ForCausalLM> reference_and_kernels(uint64_t seed) {
  auto cfg = testing::tiny_config();
  auto kcfg = cfg;
  kcfg.kernels.gate = "cuda";
  kcfg.kernels.permute = "cuda";
  torch::manual_seed(seed);
  DeepseekV3ForCausalLM ref(cfg);
  torch::manual_seed(seed);
  DeepseekV3ForCausalLM ker(kcfg);
  // A non-zero correction bias, so the bias path of the selection is exercised.
  torch::manual_seed(seed + 1);
  for (size_t i = 0; i < ref->moe_layers().size(); ++i) {
    auto b = torch::randn({cfg.moe.n_routed_experts.value()}) * 0.05;
    torch::NoGradGuard no_grad;
    ref->moe_layers()[i]->gate->e_score_correction_bias.copy_(b);
    ker->moe_layers()[i]->gate->e_score_correction_bias.copy_(b);
  }
  ref->to(torch::kCUDA);
  ker->to(torch::kCUDA);
  return {ref, ker};
}

TEST(ModelKernelsGpu, CudaKernelsEqualReference) {
  if (!ops::cuda_available()) GTEST_SKIP() << "no CUDA device or no CUDA kernels in this build";
  auto [ref, ker] = reference_and_kernels(0);
  auto cfg = testing::tiny_config();
  torch::manual_seed(1);
  auto ids = torch::randint(0, cfg.model.vocab_size, {4, 32}, torch::kInt64).cuda();
  ref->train();
  ker->train();
  auto a = ref->forward(ids, ids);
  auto b = ker->forward(ids, ids);
  EXPECT_TRUE(torch::equal(a.expert_counts_ME.cpu(), b.expert_counts_ME.cpu()))
      << "routing differs";
  EXPECT_GT(a.expert_counts_ME.sum().item<int64_t>(), 0);
  EXPECT_NEAR(a.loss.item<double>(), b.loss.item<double>(), 1e-5);
  a.loss.backward();
  b.loss.backward();
  auto kp = ker->named_parameters();
  for (const auto& p : ref->named_parameters()) {
    ASSERT_TRUE(kp[p.key()].grad().defined()) << p.key();
    EXPECT_LT(max_abs_diff(p.value().grad(), kp[p.key()].grad()), 1e-5) << p.key();
  }
}

TEST(ModelKernelsGpu, Bf16AutocastStepWithKernelsIsClose) {
  if (!ops::cuda_available()) GTEST_SKIP() << "no CUDA device or no CUDA kernels in this build";
  auto [ref, ker] = reference_and_kernels(2);
  auto cfg = testing::tiny_config();
  torch::manual_seed(3);
  auto ids = torch::randint(0, cfg.model.vocab_size, {2, 32}, torch::kInt64).cuda();
  at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
  at::autocast::set_autocast_enabled(at::kCUDA, true);
  auto a = ref->forward(ids, ids);
  auto b = ker->forward(ids, ids);
  at::autocast::set_autocast_enabled(at::kCUDA, false);
  at::autocast::clear_cache();
  EXPECT_NEAR(a.loss.item<double>(), b.loss.item<double>(), 0.02);
  b.loss.backward();
  for (const auto& p : ker->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_TRUE(torch::isfinite(p.value().grad()).all().item<bool>()) << p.key();
  }
}

}  // namespace
}  // namespace moetron::model
