// GPU: the tiny model with kernels.attention: cuda gives the loss and gradients of the reference
// attention (with and without packing segments, and a bf16 autocast step stays close), and with
// kernels.decode_attention: cuda the generation engine's greedy completions and log-probs equal
// the reference engine's; at V2-Lite's MLA widths the absorbed path with the decode kernel equals
// the materialised path with the flash kernel. Skipped without a CUDA device or kernels.
#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "model/tiny.h"
#include "moetron/model/mla.h"
#include "moetron/model/model.h"
#include "moetron/ops/impl.h"
#include "moetron/rl/generate.h"

namespace moetron::model {
namespace {

#define SKIP_WITHOUT_CUDA() \
  if (!ops::cuda_available()) GTEST_SKIP() << "no CUDA device or no CUDA kernels in this build"

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.cpu().to(torch::kFloat64) - b.cpu().to(torch::kFloat64)).abs().max().item<double>();
}

// Two copies of one model on the GPU: reference attention, and the kernels named in `kernels`.
std::pair<DeepseekV3ForCausalLM, DeepseekV3ForCausalLM> pair_of(const config::Config& cfg,
                                                                bool attention, bool decode,
                                                                uint64_t seed) {
  auto kcfg = cfg;
  if (attention) kcfg.kernels.attention = "cuda";
  if (decode) kcfg.kernels.decode_attention = "cuda";
  torch::manual_seed(seed);
  DeepseekV3ForCausalLM ref(cfg);
  torch::manual_seed(seed);
  DeepseekV3ForCausalLM ker(kcfg);
  ref->to(torch::kCUDA);
  ker->to(torch::kCUDA);
  return {ref, ker};
}

TEST(ModelAttentionGpu, FlashAttentionLossAndGradientsEqualReference) {
  SKIP_WITHOUT_CUDA();
  auto cfg = testing::tiny_config();
  auto [ref, ker] = pair_of(cfg, true, false, 0);
  torch::manual_seed(1);
  const int64_t B = 3, T = 77;  // T: not a multiple of the tiles
  auto ids = torch::randint(0, cfg.model.vocab_size, {B, T}, torch::kInt64).cuda();
  auto seg = (torch::rand({B, T}) < 0.1).to(torch::kInt64).cumsum(1).cuda();
  for (const bool with_seg : {false, true}) {
    ref->zero_grad();
    ker->zero_grad();
    auto s = with_seg ? seg : torch::Tensor();
    auto a = ref->forward(ids, ids, {}, s);
    auto b = ker->forward(ids, ids, {}, s);
    EXPECT_NEAR(a.loss.item<double>(), b.loss.item<double>(), 1e-5) << "seg=" << with_seg;
    a.loss.backward();
    b.loss.backward();
    auto kp = ker->named_parameters();
    for (const auto& p : ref->named_parameters()) {
      ASSERT_TRUE(kp[p.key()].grad().defined()) << p.key();
      EXPECT_LT(max_abs_diff(p.value().grad(), kp[p.key()].grad()), 1e-4)
          << p.key() << " seg=" << with_seg;
    }
  }
}

TEST(ModelAttentionGpu, Bf16AutocastStepWithFlashAttentionIsClose) {
  SKIP_WITHOUT_CUDA();
  auto cfg = testing::tiny_config();
  auto [ref, ker] = pair_of(cfg, true, false, 2);
  torch::manual_seed(3);
  auto ids = torch::randint(0, cfg.model.vocab_size, {2, 64}, torch::kInt64).cuda();
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

// The generation engine (left-padded prefill of prompts of different lengths, then decode steps
// over the latent cache, rows finishing at different steps) with the decode kernel, and with
// both kernels, gives the reference engine's greedy tokens and log-probs.
TEST(ModelAttentionGpu, GreedyGenerationsEqualReference) {
  SKIP_WITHOUT_CUDA();
  auto cfg = testing::tiny_config(true, 0);
  cfg.model.max_position_embeddings = 128;
  const std::vector<std::vector<int64_t>> prompts = {
      {3, 9, 27, 4}, {5}, {11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21}, {7, 7, 2}};
  rl::SamplingOptions o;
  o.greedy = true;
  o.max_new_tokens = 40;
  o.stop_ids = {60};
  for (const bool both : {false, true}) {
    auto [ref, ker] = pair_of(cfg, both, true, 4);
    auto want = rl::generate(ref, prompts, o);
    auto got = rl::generate(ker, prompts, o);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(got[i].ids, want[i].ids) << "prompt " << i << " both=" << both;
      ASSERT_EQ(got[i].logprobs.size(), want[i].logprobs.size());
      for (size_t t = 0; t < want[i].logprobs.size(); ++t) {
        EXPECT_NEAR(got[i].logprobs[t], want[i].logprobs[t], 1e-4) << "prompt " << i;
      }
    }
  }
}

// V2-Lite's MLA widths (16 heads, q/k 192, v 128, kv_lora_rank 512, rope 64): the absorbed
// path with the decode kernel equals the materialised path with the flash kernel (and both
// equal their references), fp32.
TEST(ModelAttentionGpu, V2LiteWidthsAbsorbedDecodeKernelEqualsFlashKernel) {
  SKIP_WITHOUT_CUDA();
  auto cfg = testing::tiny_config();
  cfg.model.hidden_size = 256;
  cfg.model.num_attention_heads = 16;
  cfg.mla.q_lora_rank = std::nullopt;
  cfg.mla.kv_lora_rank = 512;
  cfg.mla.qk_nope_head_dim = 128;
  cfg.mla.qk_rope_head_dim = 64;
  cfg.mla.v_head_dim = 128;
  torch::manual_seed(5);
  MlaAttention attn(cfg);
  attn->reset_parameters(0.05);
  attn->to(torch::kCUDA);
  RotaryEmbedding rope(cfg);
  const int64_t B = 2, T = 150;
  auto x = torch::randn({B, T, cfg.model.hidden_size}, torch::kCUDA);
  auto pos = default_position_ids(B, T, torch::kCUDA);
  auto ang = rope.angles(pos, torch::kFloat32);
  auto full_ref = attn(x, ang);
  attn->set_attention_impl(ops::Impl::kCuda);
  auto full_ker = attn(x, ang);
  EXPECT_LT(max_abs_diff(full_ker, full_ref), 1e-4);
  auto cache = attn->latent_kv(x, ang);
  auto mask = cache_causal_mask(pos, T);
  auto abs_ref = attn->forward_absorbed(x, ang, cache, mask);
  attn->set_decode_attention_impl(ops::Impl::kCuda);
  auto abs_ker = attn->forward_absorbed(x, ang, cache, mask);
  EXPECT_LT(max_abs_diff(abs_ker, abs_ref), 1e-4);
  EXPECT_LT(max_abs_diff(abs_ker, full_ker), 1e-4);
}

}  // namespace
}  // namespace moetron::model
