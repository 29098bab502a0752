// GPU: the tiny model on CUDA equals the CPU model (forward, losses, counts, grads), the
// absorbed MLA path equals the materialised one, and a bf16 autocast step is finite.
// Skipped without a CUDA device.
#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moetron/model/losses.h"
#include "moetron/model/mla.h"
#include "moetron/model/model.h"
#include "tiny.h"

namespace moetron::model {
namespace {

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.cpu().to(torch::kFloat64) - b.cpu().to(torch::kFloat64)).abs().max().item<double>();
}

#define SKIP_WITHOUT_CUDA() \
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device"

TEST(ModelGpu, CudaEqualsCpuForwardBackward) {
  SKIP_WITHOUT_CUDA();
  auto cfg = testing::tiny_config();
  torch::manual_seed(0);
  DeepseekV3ForCausalLM cpu(cfg);
  torch::manual_seed(0);
  DeepseekV3ForCausalLM gpu(cfg);
  gpu->to(torch::kCUDA);
  torch::manual_seed(1);
  auto ids = torch::randint(0, cfg.model.vocab_size, {2, 16}, torch::kInt64);
  auto seg = torch::tensor({0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2}, torch::kInt64)
                 .unsqueeze(0)
                 .expand({2, 16})
                 .contiguous();
  ForwardOptions opt;
  opt.return_logits = true;
  for (bool with_seg : {false, true}) {
    cpu->zero_grad();
    gpu->zero_grad();
    auto a = cpu->forward(ids, ids, {}, with_seg ? seg : torch::Tensor(), opt);
    auto b = gpu->forward(ids.cuda(), ids.cuda(), {}, with_seg ? seg.cuda() : torch::Tensor(), opt);
    EXPECT_TRUE(torch::equal(a.expert_counts_ME, b.expert_counts_ME.cpu())) << "routing differs";
    EXPECT_LT(max_abs_diff(a.logits_BTV, b.logits_BTV), 1e-4);
    EXPECT_NEAR(a.loss.item<double>(), b.loss.item<double>(), 1e-4);
    a.loss.backward();
    b.loss.backward();
    auto gp = gpu->named_parameters();
    for (const auto& p : cpu->named_parameters()) {
      EXPECT_LT(max_abs_diff(p.value().grad(), gp[p.key()].grad()), 1e-4) << p.key();
    }
  }
  // Chunked log-probs on the device.
  cpu->eval();
  gpu->eval();
  EXPECT_LT(max_abs_diff(cpu->token_logprobs(ids), gpu->token_logprobs(ids.cuda(), {}, {}, 3)),
            1e-4);
}

TEST(ModelGpu, AbsorbedEqualsMaterialisedOnCuda) {
  SKIP_WITHOUT_CUDA();
  auto cfg = testing::tiny_config();
  torch::manual_seed(2);
  MlaAttention attn(cfg);
  attn->reset_parameters(0.2);
  attn->to(torch::kCUDA);
  RotaryEmbedding rope(cfg);
  const int64_t B = 2, T = 33;
  auto x = torch::randn({B, T, cfg.model.hidden_size}, torch::kCUDA);
  auto pos = default_position_ids(B, T, torch::kCUDA);
  auto ang = rope.angles(pos, torch::kFloat32);
  auto full = attn(x, ang);
  auto cache = attn->latent_kv(x, ang);
  auto absorbed = attn->forward_absorbed(x, ang, cache, cache_causal_mask(pos, T));
  EXPECT_LT(max_abs_diff(full, absorbed), 1e-5);
}

TEST(ModelGpu, Bf16AutocastStepIsFinite) {
  SKIP_WITHOUT_CUDA();
  auto cfg = testing::tiny_config();
  torch::manual_seed(3);
  DeepseekV3ForCausalLM m(cfg);
  m->to(torch::kCUDA);
  auto ids = torch::randint(0, cfg.model.vocab_size, {2, 32}, torch::kInt64).cuda();
  double fp32_loss = m->forward(ids, ids).loss.item<double>();
  at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
  at::autocast::set_autocast_enabled(at::kCUDA, true);
  auto out = m->forward(ids, ids);
  at::autocast::set_autocast_enabled(at::kCUDA, false);
  at::autocast::clear_cache();
  out.loss.backward();
  EXPECT_NEAR(out.loss.item<double>(), fp32_loss, 0.05);
  for (const auto& p : m->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_TRUE(torch::isfinite(p.value().grad()).all().item<bool>()) << p.key();
  }
  for (auto& l : m->moe_layers()) {
    EXPECT_EQ(l->gate->e_score_correction_bias.scalar_type(), torch::kFloat32);
  }
}

}  // namespace
}  // namespace moetron::model
