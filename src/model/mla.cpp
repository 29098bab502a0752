// MLA (SPEC 1.2): materialised training path over ATen SDPA and the absorbed latent path
// (SPEC 1.8). Per-head layouts: q_b_proj rows are [head][nope, rope], kv_b_proj rows are
// [head][k_nope, v]; kv_a_proj_with_mqa output is [c_kv | k_pe].
#include "moetron/model/mla.h"

#include <torch/torch.h>

#include "moetron/core/error.h"

namespace moetron::model {

// Legend: B batch, T query tokens, S key tokens, D hidden, H heads, N qk_nope_head_dim,
// P qk_rope_head_dim, V v_head_dim, C kv_lora_rank, Q q_lora_rank.

namespace {
torch::nn::Linear linear(int64_t in, int64_t out) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false));
}
}  // namespace

torch::Tensor causal_segment_mask(int64_t T, const torch::Tensor& segment_ids_BT,
                                  const torch::Device& device) {
  auto causal_TT =
      torch::ones({T, T}, torch::TensorOptions().dtype(torch::kBool).device(device)).tril();
  if (!segment_ids_BT.defined()) return causal_TT.unsqueeze(0);
  MOETRON_CHECK(segment_ids_BT.dim() == 2 && segment_ids_BT.size(1) == T,
                "segment_ids: expected [B, ", T, "], got ", segment_ids_BT.sizes());
  auto same_BTT = segment_ids_BT.unsqueeze(2) == segment_ids_BT.unsqueeze(1);
  return same_BTT & causal_TT.unsqueeze(0);
}

torch::Tensor cache_causal_mask(const torch::Tensor& q_position_ids_BT, int64_t S) {
  auto slots_S = torch::arange(S, q_position_ids_BT.options().dtype(torch::kInt64));
  return slots_S.view({1, 1, S}) <= q_position_ids_BT.to(torch::kInt64).unsqueeze(-1);
}

MlaAttentionImpl::MlaAttentionImpl(const config::Config& cfg)
    : H_(cfg.model.num_attention_heads),
      N_(cfg.mla.qk_nope_head_dim),
      P_(cfg.mla.qk_rope_head_dim),
      V_(cfg.mla.v_head_dim),
      C_(cfg.mla.kv_lora_rank),
      scale_(softmax_scale(cfg.model, cfg.mla)) {
  const int64_t D = cfg.model.hidden_size;
  if (cfg.mla.q_lora_rank) {
    const int64_t Q = *cfg.mla.q_lora_rank;
    q_a_proj = register_module("q_a_proj", linear(D, Q));
    q_a_layernorm = register_module("q_a_layernorm", RMSNorm(Q, kLatentNormEps));
    q_b_proj = register_module("q_b_proj", linear(Q, H_ * (N_ + P_)));
  } else {
    q_proj = register_module("q_proj", linear(D, H_ * (N_ + P_)));
  }
  kv_a_proj_with_mqa = register_module("kv_a_proj_with_mqa", linear(D, C_ + P_));
  kv_a_layernorm = register_module("kv_a_layernorm", RMSNorm(C_, kLatentNormEps));
  kv_b_proj = register_module("kv_b_proj", linear(C_, H_ * (N_ + V_)));
  o_proj = register_module("o_proj", linear(H_ * V_, D));
}

void MlaAttentionImpl::reset_parameters(double std) {
  torch::NoGradGuard no_grad;
  for (auto* lin : {&q_proj, &q_a_proj, &q_b_proj, &kv_a_proj_with_mqa, &kv_b_proj, &o_proj}) {
    if (!lin->is_empty()) (*lin)->weight.normal_(0.0, std);
  }
  if (!q_a_layernorm.is_empty()) q_a_layernorm->reset_parameters();
  kv_a_layernorm->reset_parameters();
}

std::pair<torch::Tensor, torch::Tensor> MlaAttentionImpl::queries(const torch::Tensor& x_BTD,
                                                                  const RopeAngles& rope) {
  const int64_t B = x_BTD.size(0), T = x_BTD.size(1);
  auto q = q_proj.is_empty() ? q_b_proj(q_a_layernorm(q_a_proj(x_BTD))) : q_proj(x_BTD);
  auto q_BTHK = q.view({B, T, H_, N_ + P_});
  auto q_nope_BTHN = q_BTHK.narrow(-1, 0, N_);
  auto q_pe_BTHP = apply_rope_interleaved(q_BTHK.narrow(-1, N_, P_), rope);
  return {q_nope_BTHN, q_pe_BTHP};
}

LatentKV MlaAttentionImpl::latent_kv(const torch::Tensor& x_BTD, const RopeAngles& rope) {
  auto kv_a = kv_a_proj_with_mqa(x_BTD);
  // Only the C latent dims are normalised; the P RoPE dims bypass kv_a_layernorm (SPEC 8.3).
  auto c_kv_BTC = kv_a_layernorm(kv_a.narrow(-1, 0, C_));
  auto k_pe_BTP = apply_rope_interleaved(kv_a.narrow(-1, C_, P_), rope);
  return {c_kv_BTC, k_pe_BTP};
}

torch::Tensor MlaAttentionImpl::forward(const torch::Tensor& x_BTD, const RopeAngles& rope,
                                        const torch::Tensor& segment_ids_BT) {
  MOETRON_CHECK(x_BTD.dim() == 3, "MLA: expected x [B, T, D], got ", x_BTD.sizes());
  const int64_t B = x_BTD.size(0), T = x_BTD.size(1);
  auto [q_nope_BTHN, q_pe_BTHP] = queries(x_BTD, rope);
  auto latent = latent_kv(x_BTD, rope);

  auto kv_BTHK = kv_b_proj(latent.c_kv_BSC).view({B, T, H_, N_ + V_});
  auto k_nope_BTHN = kv_BTHK.narrow(-1, 0, N_);
  auto v_BTHV = kv_BTHK.narrow(-1, N_, V_);
  // The single rotated key is shared by every head (MQA-style, SPEC 1.2).
  auto k_pe_BTHP = latent.k_pe_BSP.unsqueeze(2).expand({B, T, H_, P_});

  auto q_BHTK = torch::cat({q_nope_BTHN, q_pe_BTHP}, -1).transpose(1, 2);
  auto k_BHTK = torch::cat({k_nope_BTHN, k_pe_BTHP}, -1).transpose(1, 2);
  auto v_BHTV = v_BTHV.transpose(1, 2);
  // ATen's fused (flash) attention needs one head width for q, k and v; MLA's value heads are
  // narrower (128 vs 192 in V3). Zero-padding v to the q/k width and slicing the output back is
  // exact (the padded columns of the output are zero) and lets SDPA take the fused kernel
  // instead of the math path that materialises B x H x T x T scores.
  const int64_t K = N_ + P_;
  if (V_ < K) v_BHTV = torch::constant_pad_nd(v_BHTV, {0, K - V_});

  torch::Tensor o_BHTV;
  if (segment_ids_BT.defined()) {
    auto allowed_B1TT = causal_segment_mask(T, segment_ids_BT, x_BTD.device()).unsqueeze(1);
    o_BHTV = at::scaled_dot_product_attention(q_BHTK, k_BHTK, v_BHTV, allowed_B1TT, 0.0,
                                              /*is_causal=*/false, scale_);
  } else {
    o_BHTV = at::scaled_dot_product_attention(q_BHTK, k_BHTK, v_BHTV, std::nullopt, 0.0,
                                              /*is_causal=*/true, scale_);
  }
  if (V_ < K) o_BHTV = o_BHTV.narrow(-1, 0, V_);
  auto o_BTX = o_BHTV.transpose(1, 2).reshape({B, T, H_ * V_});
  return o_proj(o_BTX);
}

torch::Tensor MlaAttentionImpl::forward_absorbed(const torch::Tensor& x_BTD, const RopeAngles& rope,
                                                 const LatentKV& cache,
                                                 const torch::Tensor& allowed_BTS) {
  const int64_t B = x_BTD.size(0), T = x_BTD.size(1);
  const int64_t S = cache.c_kv_BSC.size(1);
  MOETRON_CHECK(allowed_BTS.defined() && allowed_BTS.dim() == 3 && allowed_BTS.size(1) == T &&
                    allowed_BTS.size(2) == S,
                "forward_absorbed: expected allowed mask [B, ", T, ", ", S, "], got ",
                allowed_BTS.defined() ? allowed_BTS.sizes() : torch::IntArrayRef{});
  auto [q_nope_BTHN, q_pe_BTHP] = queries(x_BTD, rope);

  // kv_b_proj.weight viewed [H, N+V, C]: rows 0..N-1 are W^UK_i, rows N.. are W^UV_i.
  auto w_HKC = kv_b_proj->weight.view({H_, N_ + V_, C_});
  auto w_uk_HNC = w_HKC.narrow(1, 0, N_);
  auto w_uv_HVC = w_HKC.narrow(1, N_, V_);

  // q̃ = W^UKᵀ q^C: the query lives in the C-dim latent space (SPEC 1.8).
  auto q_lat_BTHC = torch::einsum("bthn,hnc->bthc", {q_nope_BTHN, w_uk_HNC});
  auto scores_BHTS = torch::einsum("bthc,bsc->bhts", {q_lat_BTHC, cache.c_kv_BSC}) +
                     torch::einsum("bthp,bsp->bhts", {q_pe_BTHP, cache.k_pe_BSP});
  // Softmax in fp32 as both references do, then back to the activation dtype.
  auto logits_BHTS = scores_BHTS.to(torch::kFloat32) * scale_;
  logits_BHTS =
      logits_BHTS.masked_fill(~allowed_BTS.unsqueeze(1), -std::numeric_limits<float>::infinity());
  auto p_BHTS = torch::softmax(logits_BHTS, -1).to(x_BTD.scalar_type());
  auto z_BTHC = torch::einsum("bhts,bsc->bthc", {p_BHTS, cache.c_kv_BSC});
  auto o_BTHV = torch::einsum("bthc,hvc->bthv", {z_BTHC, w_uv_HVC});
  return o_proj(o_BTHV.reshape({B, T, H_ * V_}));
}

}  // namespace moetron::model
