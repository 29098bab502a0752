// RMSNorm, RoPE (interleaved == HF permute+rotate_half, YaRN oracles of SPEC 7.2), softmax
// scales, causal attention (block-causal path == the softmax formula, values and gradients), and
// MLA: absorbed latent path == materialised path, incremental latent decoding.
#include <limits>

#include <gtest/gtest.h>

#include <torch/torch.h>
#include <array>

#include <ATen/Parallel.h>

#include "moetron/core/error.h"
#include "moetron/model/attention.h"
#include "moetron/model/mla.h"
#include "moetron/model/rms_norm.h"
#include "moetron/model/rope.h"
#include "tiny.h"

namespace moetron::model {
namespace {

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

TEST(RMSNorm, MatchesFormulaInDouble) {
  torch::manual_seed(0);
  RMSNorm norm(8, 1e-6);
  {
    torch::NoGradGuard g;
    norm->weight.normal_(1.0, 0.3);
  }
  auto x = torch::randn({3, 5, 8}) * 4;
  auto y = norm(x);
  auto xd = x.to(torch::kFloat64);
  auto want = norm->weight.to(torch::kFloat64) * xd / torch::sqrt(xd.pow(2).mean(-1, true) + 1e-6);
  EXPECT_LT(max_abs_diff(y, want), 1e-5);
  EXPECT_EQ(y.scalar_type(), torch::kFloat32);
}

// The hand-written backward against autograd through the formula (the norm computes in fp32
// whatever the input dtype, hence the fp32-level tolerance).
TEST(RMSNorm, GradientsMatchAutogradOfTheFormula) {
  torch::manual_seed(6);
  auto x = (torch::randn({3, 5, 8}, torch::kFloat64) * 3).requires_grad_();
  auto w = (torch::rand({8}, torch::kFloat64) + 0.5).requires_grad_();
  auto g = torch::randn({3, 5, 8}, torch::kFloat64);
  rms_norm(x, w, 1e-6).backward(g);
  auto dx = x.grad().clone(), dw = w.grad().clone();
  x.mutable_grad().reset();
  w.mutable_grad().reset();
  (w * (x * torch::rsqrt(x.pow(2).mean(-1, true) + 1e-6))).backward(g);
  EXPECT_LT(max_abs_diff(dx, x.grad()), 1e-5);
  EXPECT_LT(max_abs_diff(dw, w.grad()), 1e-5);
  EXPECT_EQ(dx.scalar_type(), torch::kFloat64);
}

TEST(RMSNorm, Bf16CastsBeforeTheWeight) {
  torch::manual_seed(1);
  auto x = torch::randn({4, 16}).to(torch::kBFloat16);
  auto w = (torch::rand({16}) + 0.5).to(torch::kBFloat16);
  auto y = rms_norm(x, w, 1e-6);
  auto x32 = x.to(torch::kFloat32);
  auto want = w * (x32 * torch::rsqrt(x32.pow(2).mean(-1, true) + 1e-6)).to(torch::kBFloat16);
  EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(y, want));
}

// HF apply_rotary_pos_emb_interleave: permute [x0,x1,..] -> [evens, odds], then rotate_half
// with cos/sin = cat(freqs, freqs). Its output is ours with dims permuted (SPEC 1.4, 10.2).
torch::Tensor hf_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  const int64_t P = x.size(-1);
  auto perm = x.unflatten(-1, {P / 2, 2}).transpose(-1, -2).flatten(-2);
  auto c = torch::cat({cos, cos}, -1), s = torch::cat({sin, sin}, -1);
  auto x1 = perm.narrow(-1, 0, P / 2), x2 = perm.narrow(-1, P / 2, P / 2);
  auto rot = torch::cat({-x2, x1}, -1);
  return perm * c + rot * s;
}

TEST(Rope, InterleavedEqualsHfPermuteRotateHalf) {
  torch::manual_seed(2);
  RotaryEmbedding rope(64, 10000.0, std::nullopt);
  auto pos = torch::tensor({{0, 1, 7, 100, 4095}}, torch::kInt64);
  auto ang = rope.angles(pos, torch::kFloat32);
  auto x = torch::randn({1, 5, 64});
  auto ours = apply_rope_interleaved(x, ang);
  auto hf = hf_rope(x, ang.cos_BTR, ang.sin_BTR);
  // Re-permute HF's [evens, odds] output back to interleaved order.
  auto hf_back = hf.unflatten(-1, {2, 32}).transpose(-1, -2).flatten(-2);
  EXPECT_LT(max_abs_diff(ours, hf_back), 1e-6);
  // Plain half-split RoPE (pairs (j, j+32)) is a different model: must not match.
  auto c = torch::cat({ang.cos_BTR, ang.cos_BTR}, -1),
       s = torch::cat({ang.sin_BTR, ang.sin_BTR}, -1);
  auto half = x * c + torch::cat({-x.narrow(-1, 32, 32), x.narrow(-1, 0, 32)}, -1) * s;
  EXPECT_GT(max_abs_diff(ours, half), 1e-2);
  // Position 0 is the identity.
  EXPECT_LT(max_abs_diff(ours.select(1, 0), x.select(1, 0)), 1e-7);
}

// The rotation (complex multiplication for fp32/fp64) against the real pair formula, values and
// gradients, on strided inputs: a head-major slice at an even offset (used as a complex view)
// and at an odd one (copied first); bf16 takes the real formula and stays close.
TEST(Rope, ComplexRotationMatchesPairFormulaWithGradients) {
  torch::manual_seed(5);
  RotaryEmbedding rope(8, 10000.0, std::nullopt);
  auto ang = rope.angles(default_position_ids(2, 5, torch::kCPU), torch::kFloat64);
  auto formula = [&](const torch::Tensor& x) {
    auto c = ang.cos_BTR.unsqueeze(2), s = ang.sin_BTR.unsqueeze(2);
    auto pairs = x.unflatten(-1, {4, 2});
    auto e = pairs.select(-1, 0), o = pairs.select(-1, 1);
    return torch::stack({e * c - o * s, e * s + o * c}, -1).flatten(-2);
  };
  for (const int64_t offset : {4, 3}) {
    auto base = torch::randn({2, 5, 3, 16}, torch::kFloat64);
    auto g = torch::randn({2, 5, 3, 8}, torch::kFloat64);
    auto b1 = base.clone().requires_grad_(), b2 = base.clone().requires_grad_();
    auto ours = apply_rope_interleaved(b1.narrow(-1, offset, 8), ang);
    auto want = formula(b2.narrow(-1, offset, 8));
    EXPECT_LT(max_abs_diff(ours, want), 1e-12) << "offset " << offset;
    ours.backward(g);
    want.backward(g);
    EXPECT_LT(max_abs_diff(b1.grad(), b2.grad()), 1e-12) << "offset " << offset;
  }
  auto x = torch::randn({2, 5, 3, 8});
  auto bf16 = apply_rope_interleaved(x.to(torch::kBFloat16), ang);
  EXPECT_EQ(bf16.scalar_type(), torch::kBFloat16);
  EXPECT_LT(max_abs_diff(bf16, formula(x.to(torch::kFloat64))), 5e-2);
}

TEST(Rope, ScoresDependOnlyOnRelativeOffset) {
  torch::manual_seed(3);
  RotaryEmbedding rope(8, 10000.0, std::nullopt);
  auto q = torch::randn({1, 1, 8}), k = torch::randn({1, 1, 8});
  auto at = [&](const torch::Tensor& v, int64_t p) {
    return apply_rope_interleaved(
        v, rope.angles(torch::tensor({{p}}, torch::kInt64), torch::kFloat32));
  };
  const double s1 = (at(q, 10) * at(k, 3)).sum().item<double>();
  const double s2 = (at(q, 57) * at(k, 50)).sum().item<double>();
  const double s3 = (at(q, 10) * at(k, 4)).sum().item<double>();
  EXPECT_NEAR(s1, s2, 1e-5);
  EXPECT_GT(std::abs(s1 - s3), 1e-4);
}

TEST(Rope, YarnInvFreqMatchesSpecOracles) {
  config::RopeScaling y;  // V3: factor 40, L0 4096, beta 32/1
  auto inv = rope_inv_freq(64, 10000.0, y);
  ASSERT_EQ(inv.size(0), 32);
  auto plain = rope_inv_freq(64, 10000.0, std::nullopt);
  const std::vector<std::pair<int, double>> oracle = {
      {0, 1.0},          {10, 5.623413e-2}, {11, 3.900693e-2}, {16, 5.5e-3},
      {22, 1.778279e-4}, {23, 3.333804e-5}, {31, 3.333804e-6}};
  for (auto [j, want] : oracle) {
    EXPECT_NEAR(inv[j].item<double>() / want, 1.0, 2e-6) << "inv_freq[" << j << "]";
  }
  EXPECT_NEAR(plain[11].item<double>(), 4.216965e-2, 1e-7);
  EXPECT_NEAR(plain[16].item<double>(), 1.0e-2, 1e-8);
  // j <= 10 unchanged, j >= 23 divided by 40.
  EXPECT_TRUE(torch::equal(inv.narrow(0, 0, 11), plain.narrow(0, 0, 11)));
  EXPECT_LT((inv.narrow(0, 23, 9) / (plain.narrow(0, 23, 9) / 40) - 1).abs().max().item<double>(),
            1e-6);
}

TEST(Rope, SoftmaxScalesMatchSpec) {
  auto c = testing::v3_config();
  c.model.rope_scaling.reset();
  EXPECT_NEAR(softmax_scale(c.model, c.mla), 0.0721688, 1e-7);
  c = testing::v3_config();
  EXPECT_NEAR(softmax_scale(c.model, c.mla), 0.1352338, 1e-7);
  c = testing::v2_lite_config();
  EXPECT_NEAR(softmax_scale(c.model, c.mla), 0.1147214, 1e-7);
  EXPECT_NEAR(yarn_get_mscale(40, 1.0), 1.368888, 1e-6);
  EXPECT_DOUBLE_EQ(RotaryEmbedding(c).attention_factor(), 1.0);
}

// ---- MLA ----------------------------------------------------------------------------------

config::Config mla_config(bool q_lora, bool yarn) {
  auto c = testing::tiny_config(q_lora);
  c.model.hidden_size = 64;  // SPEC 10.1: d 64, n_h 4, q_lora 32, kv_lora 16, nope 8, rope 4, v 8
  c.mla.q_lora_rank = q_lora ? std::optional<int64_t>(32) : std::nullopt;
  if (yarn) {
    config::RopeScaling y;
    y.original_max_position_embeddings = 16;
    y.mscale_all_dim = 0.707;
    y.mscale = 0.707;
    c.model.rope_scaling = y;
  }
  return c;
}

class MlaPaths : public ::testing::TestWithParam<std::tuple<bool, bool>> {};

TEST_P(MlaPaths, AbsorbedEqualsMaterialised) {
  auto [q_lora, yarn] = GetParam();
  auto cfg = mla_config(q_lora, yarn);
  torch::manual_seed(4);
  MlaAttention attn(cfg);
  attn->reset_parameters(0.2);
  RotaryEmbedding rope(cfg);
  const int64_t B = 2, T = 9;
  auto x = torch::randn({B, T, 64});
  auto pos = default_position_ids(B, T, torch::kCPU) + 3;  // offset positions: any shift
  auto ang = rope.angles(pos, torch::kFloat32);
  auto full = attn(x, ang);
  auto cache = attn->latent_kv(x, ang);
  ASSERT_EQ(cache.c_kv_BSC.sizes(), (std::vector<int64_t>{B, T, 16}));
  ASSERT_EQ(cache.k_pe_BSP.sizes(), (std::vector<int64_t>{B, T, 4}));
  auto mask = cache_causal_mask(torch::arange(T).unsqueeze(0).expand({B, T}), T);
  auto absorbed = attn->forward_absorbed(x, ang, cache, mask);
  EXPECT_GT(full.abs().mean().item<double>(), 1e-2);  // non-trivial outputs
  EXPECT_LT(max_abs_diff(full, absorbed), 1e-5);
  EXPECT_EQ(q_lora, !attn->q_a_proj.is_empty());
  EXPECT_EQ(q_lora, attn->q_proj.is_empty());
}

INSTANTIATE_TEST_SUITE_P(QLoraYarn, MlaPaths,
                         ::testing::Combine(::testing::Bool(), ::testing::Bool()));

TEST(Mla, IncrementalLatentDecodingMatchesFullSequence) {
  auto cfg = mla_config(true, false);
  torch::manual_seed(5);
  MlaAttention attn(cfg);
  attn->reset_parameters(0.2);
  RotaryEmbedding rope(cfg);
  const int64_t T = 8;
  auto x = torch::randn({1, T, 64});
  auto pos = default_position_ids(1, T, torch::kCPU);
  auto full = attn(x, rope.angles(pos, torch::kFloat32));
  // Grow the cache one token at a time, as a decoder would.
  std::vector<torch::Tensor> c_kv, k_pe;
  for (int64_t t = 0; t < T; ++t) {
    auto xt = x.narrow(1, t, 1);
    auto ang_t = rope.angles(pos.narrow(1, t, 1), torch::kFloat32);
    auto entry = attn->latent_kv(xt, ang_t);
    c_kv.push_back(entry.c_kv_BSC);
    k_pe.push_back(entry.k_pe_BSP);
    LatentKV cache{torch::cat(c_kv, 1), torch::cat(k_pe, 1)};
    auto out =
        attn->forward_absorbed(xt, ang_t, cache, cache_causal_mask(pos.narrow(1, t, 1), t + 1));
    EXPECT_LT(max_abs_diff(out, full.narrow(1, t, 1)), 1e-5) << "t=" << t;
  }
}

TEST(Mla, KvLayernormSkipsRopeDims) {
  auto cfg = mla_config(true, false);
  torch::manual_seed(6);
  MlaAttention attn(cfg);
  attn->reset_parameters(0.2);
  RotaryEmbedding rope(cfg);
  auto x = torch::randn({1, 3, 64});
  auto ang = rope.angles(default_position_ids(1, 3, torch::kCPU), torch::kFloat32);
  auto lat = attn->latent_kv(x, ang);
  auto raw = attn->kv_a_proj_with_mqa(x);
  auto c = raw.narrow(-1, 0, 16);
  EXPECT_LT(max_abs_diff(lat.c_kv_BSC, c * torch::rsqrt(c.pow(2).mean(-1, true) + 1e-6)), 1e-5);
  EXPECT_LT(max_abs_diff(lat.k_pe_BSP, apply_rope_interleaved(raw.narrow(-1, 16, 4), ang)), 1e-6);
}

TEST(Mla, SegmentMaskEqualsCausalForOneSegmentAndBlocksOthers) {
  auto cfg = mla_config(true, false);
  torch::manual_seed(7);
  MlaAttention attn(cfg);
  attn->reset_parameters(0.2);
  RotaryEmbedding rope(cfg);
  const int64_t T = 7;
  auto x = torch::randn({1, T, 64});
  auto ang = rope.angles(default_position_ids(1, T, torch::kCPU), torch::kFloat32);
  auto one_segment = attn(x, ang, torch::zeros({1, T}, torch::kInt64));
  EXPECT_LT(max_abs_diff(one_segment, attn(x, ang)), 1e-6);
  auto seg = torch::tensor({{0, 0, 0, 1, 1, 1, 1}}, torch::kInt64);
  auto a = attn(x, ang, seg);
  auto x2 = x.clone();
  x2.narrow(1, 0, 3).normal_();
  auto b = attn(x2, ang, seg);
  EXPECT_LT(max_abs_diff(a.narrow(1, 3, 4), b.narrow(1, 3, 4)), 1e-6);
  EXPECT_GT(max_abs_diff(attn(x, ang).narrow(1, 3, 4), attn(x2, ang).narrow(1, 3, 4)), 1e-3);
}

TEST(Mla, AbsorbedRejectsBadMask) {
  auto cfg = mla_config(true, false);
  MlaAttention attn(cfg);
  RotaryEmbedding rope(cfg);
  auto x = torch::randn({1, 3, 64});
  auto ang = rope.angles(default_position_ids(1, 3, torch::kCPU), torch::kFloat32);
  auto cache = attn->latent_kv(x, ang);
  EXPECT_THROW(attn->forward_absorbed(x, ang, cache, torch::ones({1, 3, 2}, torch::kBool)), Error);
}

// softmax(q kᵀ · scale) v over the allowed [B, T, T] pairs, by the formula (autograd backward).
torch::Tensor attention_formula(const torch::Tensor& q, const torch::Tensor& k,
                                const torch::Tensor& v, double scale,
                                const torch::Tensor& allowed_BTT) {
  auto scores = torch::matmul(q, k.transpose(-1, -2)) * scale;
  scores = scores.masked_fill(allowed_BTT.logical_not().unsqueeze(1),
                              -std::numeric_limits<double>::infinity());
  return torch::matmul(torch::softmax(scores, -1), v);
}

// Values and q/k/v gradients of the block-causal path against the formula, in fp64 so that any
// difference is a bug, not round-off: plain causal and with segments, T not a multiple of the
// block (a short last block), value heads narrower than q/k heads.
TEST(Attention, BlockCausalMatchesFormulaWithGradients) {
  torch::manual_seed(3);
  const int64_t B = 2, H = 3, T = 37, K = 6, V = 4;
  const double scale = 0.4;
  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  auto q = torch::randn({B, H, T, K}, opts), k = torch::randn({B, H, T, K}, opts);
  auto v = torch::randn({B, H, T, V}, opts), g = torch::randn({B, H, T, V}, opts);
  auto causal = causal_segment_mask(T, {}, torch::kCPU).expand({B, T, T});
  auto segments = torch::cat({torch::zeros({B, 20}), torch::ones({B, T - 20})}, 1);
  auto segmented = causal_segment_mask(T, segments.to(torch::kInt64), torch::kCPU);
  for (const bool use_segments : {false, true}) {
    auto allowed = use_segments ? segmented : causal;
    std::vector<torch::Tensor> grads[2];
    torch::Tensor outs[2];
    for (int path = 0; path < 2; ++path) {
      auto qi = q.clone().requires_grad_(), ki = k.clone().requires_grad_();
      auto vi = v.clone().requires_grad_();
      outs[path] = path == 0 ? attention_formula(qi, ki, vi, scale, allowed)
                             : blocked_causal_attention(qi, ki, vi, scale,
                                                        use_segments ? segmented : torch::Tensor(),
                                                        /*block=*/8);
      outs[path].backward(g);
      grads[path] = {qi.grad(), ki.grad(), vi.grad()};
    }
    EXPECT_LT(max_abs_diff(outs[0], outs[1]), 1e-12) << "segments " << use_segments;
    for (size_t i = 0; i < 3; ++i) {
      EXPECT_LT(max_abs_diff(grads[0][i], grads[1][i]), 1e-12)
          << "segments " << use_segments << " grad " << i;
    }
  }
}

// fp32 on CPU takes the fused kernel (ops::cpu::causal_attention_*): values and q/k/v gradients
// against the fp64 formula at fp32 round-off, plain causal and with segments, T not a multiple of
// the kernel's row block or vector width, narrow and wide heads, two threads.
TEST(Attention, FusedCpuFp32MatchesFormulaWithGradients) {
  const int saved_threads = at::get_num_threads();
  at::set_num_threads(2);
  torch::manual_seed(4);
  const double scale = 0.3;
  for (const auto& [T, K, V] :
       std::vector<std::array<int64_t, 3>>{{37, 6, 4}, {70, 24, 16}, {129, 48, 40}}) {
    const int64_t B = 2, H = 3;
    auto q = torch::randn({B, H, T, K}), k = torch::randn({B, H, T, K});
    auto v = torch::randn({B, H, T, V}), g = torch::randn({B, H, T, V});
    auto segments = torch::cat({torch::zeros({B, T / 2}), torch::ones({B, T - T / 2})}, 1);
    auto segmented = causal_segment_mask(T, segments.to(torch::kInt64), torch::kCPU);
    auto causal = causal_segment_mask(T, {}, torch::kCPU).expand({B, T, T});
    for (const bool use_segments : {false, true}) {
      const auto what = "T " + std::to_string(T) + " K " + std::to_string(K) + " segments " +
                        std::to_string(use_segments);
      auto qi = q.clone().requires_grad_(), ki = k.clone().requires_grad_();
      auto vi = v.clone().requires_grad_();
      auto o = causal_attention(qi, ki, vi, scale, use_segments ? segmented : torch::Tensor());
      o.backward(g);
      auto qd = q.to(torch::kFloat64).requires_grad_(), kd = k.to(torch::kFloat64).requires_grad_();
      auto vd = v.to(torch::kFloat64).requires_grad_();
      auto want = attention_formula(qd, kd, vd, scale, use_segments ? segmented : causal);
      want.backward(g.to(torch::kFloat64));
      EXPECT_LT(max_abs_diff(o, want), 2e-6) << what;
      EXPECT_LT(max_abs_diff(qi.grad(), qd.grad()), 1e-5) << what;
      EXPECT_LT(max_abs_diff(ki.grad(), kd.grad()), 1e-5) << what;
      EXPECT_LT(max_abs_diff(vi.grad(), vd.grad()), 1e-5) << what;
    }
  }
  at::set_num_threads(saved_threads);
}

// bf16 (CPU autocast): values and gradients against the fp64 formula on the same bf16-rounded
// inputs, no further off than HF's eager recipe in bf16 (matmuls in bf16, softmax in fp32, the
// probabilities cast back to bf16 before the value matmul), plain causal and with segments.
TEST(Attention, BlockCausalBf16IsAsAccurateAsEagerBf16) {
  torch::manual_seed(5);
  const int64_t B = 2, H = 3, T = 150, K = 24, V = 16;
  const double scale = 1.0 / std::sqrt(static_cast<double>(K));
  auto bf = [](const torch::Tensor& t) { return t.to(torch::kBFloat16); };
  auto q = bf(torch::randn({B, H, T, K})), k = bf(torch::randn({B, H, T, K}));
  auto v = bf(torch::randn({B, H, T, V})), g = bf(torch::randn({B, H, T, V}));
  auto segments = torch::cat({torch::zeros({B, 70}), torch::ones({B, T - 70})}, 1);
  auto segmented = causal_segment_mask(T, segments.to(torch::kInt64), torch::kCPU);
  auto causal = causal_segment_mask(T, {}, torch::kCPU).expand({B, T, T});
  auto eager = [&](const torch::Tensor& qi, const torch::Tensor& ki, const torch::Tensor& vi,
                   const torch::Tensor& allowed) {
    auto scores = torch::matmul(qi, ki.transpose(-1, -2)) * scale;
    scores = scores.masked_fill(allowed.logical_not().unsqueeze(1),
                                -std::numeric_limits<double>::infinity());
    return torch::matmul(torch::softmax(scores, -1, torch::kFloat32).to(qi.scalar_type()), vi);
  };
  for (const bool use_segments : {false, true}) {
    auto allowed = use_segments ? segmented : causal;
    // 0: fp64 formula, 1: block-causal bf16, 2: eager bf16.
    torch::Tensor outs[3];
    std::vector<torch::Tensor> grads[3];
    for (int path = 0; path < 3; ++path) {
      auto dtype = path == 0 ? torch::kFloat64 : torch::kBFloat16;
      auto leaf = [&](const torch::Tensor& t) { return t.to(dtype).clone().requires_grad_(); };
      auto qi = leaf(q), ki = leaf(k), vi = leaf(v);
      outs[path] = path == 0   ? attention_formula(qi, ki, vi, scale, allowed)
                   : path == 1 ? causal_attention(qi, ki, vi, scale,
                                                  use_segments ? segmented : torch::Tensor())
                               : eager(qi, ki, vi, allowed);
      EXPECT_EQ(outs[path].scalar_type(), dtype);
      outs[path].backward(g.to(dtype));
      grads[path] = {qi.grad(), ki.grad(), vi.grad()};
      for (const auto& gr : grads[path]) EXPECT_EQ(gr.scalar_type(), dtype);
    }
    auto err = [&](const torch::Tensor& a) { return max_abs_diff(a.to(torch::kFloat64), outs[0]); };
    const double ours = err(outs[1]), theirs = err(outs[2]);
    EXPECT_LT(ours, 0.05) << "segments " << use_segments;
    EXPECT_LE(ours, 1.5 * theirs) << "segments " << use_segments << ": eager bf16 " << theirs;
    for (size_t i = 0; i < 3; ++i) {
      const double gours = max_abs_diff(grads[1][i].to(torch::kFloat64), grads[0][i]);
      const double gtheirs = max_abs_diff(grads[2][i].to(torch::kFloat64), grads[0][i]);
      EXPECT_LE(gours, 1.5 * gtheirs) << "segments " << use_segments << " grad " << i << ": ours "
                                      << gours << ", eager bf16 " << gtheirs;
    }
  }
}

// causal_attention (whichever path it takes) equals SDPA's result; the block-causal path is
// chosen for fp32 CPU inputs of moderate size only.
TEST(Attention, DispatchAndSdpaAgreement) {
  torch::manual_seed(4);
  const int64_t B = 2, H = 2, T = 130, K = 8, V = 6;
  auto q = torch::randn({B, H, T, K}), k = torch::randn({B, H, T, K}),
       v = torch::randn({B, H, T, V});
  EXPECT_TRUE(use_blocked_attention(q));
  EXPECT_TRUE(use_blocked_attention(q.to(torch::kBFloat16)));  // CPU autocast
  EXPECT_FALSE(use_blocked_attention(q.to(torch::kInt32)));
  EXPECT_TRUE(use_blocked_attention(torch::empty({8, 8, 512, K})));     // moe-100m training shape
  EXPECT_FALSE(use_blocked_attention(torch::empty({1, 4, 16384, K})));  // > the memory budget
  auto sdpa = at::scaled_dot_product_attention(q, k, torch::constant_pad_nd(v, {0, K - V}),
                                               std::nullopt, 0.0, /*is_causal=*/true, 0.3)
                  .narrow(-1, 0, V);
  EXPECT_LT(max_abs_diff(causal_attention(q, k, v, 0.3), sdpa), 1e-5);
  EXPECT_THROW(causal_attention(q, k, v.narrow(2, 0, T - 1), 0.3), Error);
  EXPECT_THROW(causal_attention(q, k, v, 0.3, torch::ones({B, T, T})), Error);  // not bool
}

}  // namespace
}  // namespace moetron::model
