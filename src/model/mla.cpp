// MLA (SPEC 1.2): materialised training path (causal_attention, attention.h) and the absorbed
// latent path (SPEC 1.8). Per-head layouts: q_b_proj rows are [head][nope, rope], kv_b_proj rows
// are [head][k_nope, v]; kv_a_proj_with_mqa output is [c_kv | k_pe].
#include "moetron/model/mla.h"

#include <torch/torch.h>

#include "moetron/core/error.h"
#include "moetron/model/attention.h"
#include "moetron/ops/latent_decode_attention.h"
#include "moetron/ops/mla_attention.h"

namespace moetron::model {

// Legend: B batch, T query tokens, S key tokens, D hidden, H heads, N qk_nope_head_dim,
// P qk_rope_head_dim, V v_head_dim, C kv_lora_rank, Q q_lora_rank.

namespace {}  // namespace

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
    q_a_proj = register_module("q_a_proj", Linear(D, Q));
    q_a_layernorm = register_module("q_a_layernorm", RMSNorm(Q, kLatentNormEps));
    q_b_proj = register_module("q_b_proj", Linear(Q, H_ * (N_ + P_)));
  } else {
    q_proj = register_module("q_proj", Linear(D, H_ * (N_ + P_)));
  }
  kv_a_proj_with_mqa = register_module("kv_a_proj_with_mqa", Linear(D, C_ + P_));
  kv_a_layernorm = register_module("kv_a_layernorm", RMSNorm(C_, kLatentNormEps));
  kv_b_proj = register_module("kv_b_proj", Linear(C_, H_ * (N_ + V_)));
  o_proj = register_module("o_proj", Linear(H_ * V_, D));
}

void MlaAttentionImpl::set_attention_impl(ops::Impl impl) {
  if (impl == ops::Impl::kCuda) ops::check_cuda_mla_attention_supports(N_ + P_, V_);
  attention_impl_ = impl;
}

void MlaAttentionImpl::set_decode_attention_impl(ops::Impl impl) {
  if (impl == ops::Impl::kCuda) ops::check_cuda_latent_decode_supports(C_, P_);
  decode_impl_ = impl;
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
  auto q_parts = q.view({B, T, H_, N_ + P_}).split_with_sizes({N_, P_}, -1);
  return {q_parts[0], apply_rope_interleaved(q_parts[1], rope)};
}

LatentKV MlaAttentionImpl::latent_kv(const torch::Tensor& x_BTD, const RopeAngles& rope) {
  auto kv_a_parts = kv_a_proj_with_mqa(x_BTD).split_with_sizes({C_, P_}, -1);
  // Only the C latent dims are normalised; the P RoPE dims bypass kv_a_layernorm (SPEC 8.3).
  return {kv_a_layernorm(kv_a_parts[0]), apply_rope_interleaved(kv_a_parts[1], rope)};
}

torch::Tensor MlaAttentionImpl::forward(const torch::Tensor& x_BTD, const RopeAngles& rope,
                                        const torch::Tensor& segment_ids_BT) {
  MOETRON_CHECK(x_BTD.dim() == 3, "MLA: expected x [B, T, D], got ", x_BTD.sizes());
  const int64_t B = x_BTD.size(0), T = x_BTD.size(1);
  auto [q_nope_BTHN, q_pe_BTHP] = queries(x_BTD, rope);
  auto latent = latent_kv(x_BTD, rope);

  auto kv_BTHK = kv_b_proj(latent.c_kv_BSC).view({B, T, H_, N_ + V_});
  // split, not two narrows: one backward node that writes both gradients into one tensor
  // (each narrow's backward would allocate a zero-filled full-size gradient).
  auto kv_parts = kv_BTHK.split_with_sizes({N_, V_}, -1);
  // The single rotated key is shared by every head (MQA-style, SPEC 1.2).
  auto k_pe_BHTP = latent.k_pe_BSP.unsqueeze(1).expand({B, H_, T, P_});

  // Concatenating the head-major views yields q and k directly in the [B, H, T, K] layout the
  // attention wants, without another transposing copy.
  auto q_BHTK = torch::cat({q_nope_BTHN.transpose(1, 2), q_pe_BTHP.transpose(1, 2)}, -1);
  auto k_BHTK = torch::cat({kv_parts[0].transpose(1, 2), k_pe_BHTP}, -1);
  auto v_BHTV = kv_parts[1].transpose(1, 2);
  torch::Tensor o_BHTV;
  if (attention_impl_ == ops::Impl::kCuda) {
    // Flash kernels: segments as ids (no [B, T, T] mask), v read through its strides.
    o_BHTV = ops::mla_attention(q_BHTK, k_BHTK, v_BHTV, scale_, segment_ids_BT, attention_impl_);
  } else {
    torch::Tensor allowed_BTT;
    if (segment_ids_BT.defined())
      allowed_BTT = causal_segment_mask(T, segment_ids_BT, x_BTD.device());
    o_BHTV = causal_attention(q_BHTK, k_BHTK, v_BHTV, scale_, allowed_BTT);
  }
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
  // softmax(scale · (q̃·c_kv + q_pe·k_pe)) over the allowed slots, summed over c_kv (fp32
  // softmax; the einsum composite, or the split-K kernel with kernels.decode_attention: cuda).
  auto z_BTHC = ops::latent_decode_attention(q_lat_BTHC, q_pe_BTHP, cache.c_kv_BSC, cache.k_pe_BSP,
                                             allowed_BTS, scale_, decode_impl_);
  auto o_BTHV = torch::einsum("bthc,hvc->bthv", {z_BTHC, w_uv_HVC});
  return o_proj(o_BTHV.reshape({B, T, H_ * V_}));
}

}  // namespace moetron::model
