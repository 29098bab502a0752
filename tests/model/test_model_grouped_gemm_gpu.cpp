// GPU: the tiny model with kernels.grouped_gemm: cuda gives the loss, the expert counts and the
// gradients of the reference experts (fp32), and with every kernel on (gate, permute, grouped
// GEMM) a bf16 autocast training step stays close to the reference and its AdamW step is finite.
// Skipped without a CUDA device or CUDA kernels.
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

std::pair<DeepseekV3ForCausalLM, DeepseekV3ForCausalLM> pair_of_models(
    const config::Config& kernel_cfg, uint64_t seed) {
  auto cfg = testing::tiny_config();
  torch::manual_seed(seed);
  DeepseekV3ForCausalLM ref(cfg);
  torch::manual_seed(seed);
  DeepseekV3ForCausalLM ker(kernel_cfg);
  ref->to(torch::kCUDA);
  ker->to(torch::kCUDA);
  ref->train();
  ker->train();
  return {ref, ker};
}

TEST(ModelGroupedGemmGpu, CudaEqualsReference) {
  if (!ops::cuda_available()) GTEST_SKIP() << "no CUDA device or no CUDA kernels in this build";
  auto kcfg = testing::tiny_config();
  kcfg.kernels.grouped_gemm = "cuda";
  auto [ref, ker] = pair_of_models(kcfg, 0);
  for (auto& moe : ker->moe_layers()) ASSERT_EQ(moe->experts->impl(), ops::Impl::kCuda);
  torch::manual_seed(1);
  auto ids = torch::randint(0, kcfg.model.vocab_size, {4, 32}, torch::kInt64).cuda();
  auto a = ref->forward(ids, ids);
  auto b = ker->forward(ids, ids);
  EXPECT_TRUE(torch::equal(a.expert_counts_ME.cpu(), b.expert_counts_ME.cpu()));
  EXPECT_NEAR(a.loss.item<double>(), b.loss.item<double>(), 1e-5);
  a.loss.backward();
  b.loss.backward();
  auto kp = ker->named_parameters();
  for (const auto& p : ref->named_parameters()) {
    ASSERT_TRUE(kp[p.key()].grad().defined()) << p.key();
    EXPECT_LT(max_abs_diff(p.value().grad(), kp[p.key()].grad()), 1e-5) << p.key();
  }
}

TEST(ModelGroupedGemmGpu, AllKernelsBf16AutocastStep) {
  if (!ops::cuda_available()) GTEST_SKIP() << "no CUDA device or no CUDA kernels in this build";
  auto kcfg = testing::tiny_config();
  kcfg.kernels.gate = "cuda";
  kcfg.kernels.permute = "cuda";
  kcfg.kernels.grouped_gemm = "cuda";
  auto [ref, ker] = pair_of_models(kcfg, 2);
  torch::manual_seed(3);
  auto ids = torch::randint(0, kcfg.model.vocab_size, {2, 64}, torch::kInt64).cuda();
  auto step = [&](DeepseekV3ForCausalLM& m) {
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
    at::autocast::set_autocast_enabled(at::kCUDA, true);
    auto out = m->forward(ids, ids);
    at::autocast::set_autocast_enabled(at::kCUDA, false);
    at::autocast::clear_cache();
    out.loss.backward();
    return out.loss.item<double>();
  };
  const double la = step(ref), lb = step(ker);
  EXPECT_NEAR(la, lb, 0.02);
  torch::optim::AdamW opt(ker->parameters(), torch::optim::AdamWOptions(1e-3));
  for (const auto& p : ker->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_TRUE(torch::isfinite(p.value().grad()).all().item<bool>()) << p.key();
  }
  opt.step();
  for (const auto& p : ker->named_parameters()) {
    EXPECT_TRUE(torch::isfinite(p.value()).all().item<bool>()) << p.key();
  }
}

}  // namespace
}  // namespace moetron::model
