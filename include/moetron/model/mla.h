// Multi-head Latent Attention (SPEC 1.2): low-rank query/KV compression, decoupled shared RoPE
// key, a materialised-K/V training path and the weight-absorbed latent path (SPEC 1.8) that
// the KV-cache decoder uses.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>
#include "moetron/model/linear.h"

#include "moetron/config/config.h"
#include "moetron/model/rms_norm.h"
#include "moetron/model/rope.h"
#include "moetron/ops/impl.h"

namespace moetron::model {

// Legend: B batch, T query tokens, S key tokens, D hidden, H heads, N qk_nope_head_dim,
// P qk_rope_head_dim, V v_head_dim, C kv_lora_rank, Q q_lora_rank.

// HF and the official code build q_a_layernorm / kv_a_layernorm with the default eps 1e-6,
// not rms_norm_eps (matters for Moonlight, whose rms_norm_eps is 1e-5).
inline constexpr double kLatentNormEps = 1e-6;

// What MLA caches per token (SPEC 1.7): the normalised latent and the rotated shared key.
struct LatentKV {
  torch::Tensor c_kv_BSC;  // after kv_a_layernorm
  torch::Tensor k_pe_BSP;  // after RoPE (interleaved convention)
};

// Allowed-attention masks, true = may attend.
// Causal within the row, optionally restricted to equal segment ids (SFT sample masking).
torch::Tensor causal_segment_mask(int64_t T, const torch::Tensor& segment_ids_BT,
                                  const torch::Device& device);
// For a latent cache whose slot j holds position j: query at position p sees slots j <= p.
torch::Tensor cache_causal_mask(const torch::Tensor& q_position_ids_BT, int64_t S);

class MlaAttentionImpl : public torch::nn::Module {
 public:
  explicit MlaAttentionImpl(const config::Config& cfg);

  // Training path: K/V materialised per head, causal attention (attention.h: SDPA, or the
  // block-causal path on CPU; ops::mla_attention with kernels.attention: cuda; fp32 softmax).
  // segment_ids_BT (optional, integer) confines attention to equal ids.
  torch::Tensor forward(const torch::Tensor& x_BTD, const RopeAngles& rope,
                        const torch::Tensor& segment_ids_BT = {});

  // Latent cache entries of tokens x_BTD at the positions that `rope` was built from.
  LatentKV latent_kv(const torch::Tensor& x_BTD, const RopeAngles& rope);

  // Absorbed path (SPEC 1.8): queries x_BTD (angles `rope`) attend to a latent cache [B, S]
  // through W^UK folded into q and W^UV applied after; allowed_BTS: bool [B, T, S]. The
  // attention between the absorptions is ops::latent_decode_attention (kernels.decode_attention).
  // Equal to forward() up to fp32 round-off when the cache holds the same tokens.
  torch::Tensor forward_absorbed(const torch::Tensor& x_BTD, const RopeAngles& rope,
                                 const LatentKV& cache, const torch::Tensor& allowed_BTS);

  void reset_parameters(double std);
  double scale() const { return scale_; }

  // kernels.attention: the training path's attention (reference: causal_attention; cuda:
  // ops::mla_attention's flash kernels). kernels.decode_attention: the absorbed path's latent
  // attention (ops::latent_decode_attention). Set from the model config; kCuda checks the
  // kernels' limits for this layer's head widths now (config errors naming the key).
  void set_attention_impl(ops::Impl impl);
  void set_decode_attention_impl(ops::Impl impl);
  ops::Impl attention_impl() const { return attention_impl_; }
  ops::Impl decode_attention_impl() const { return decode_impl_; }

  // HF names; exactly one of q_proj / (q_a_proj, q_a_layernorm, q_b_proj) is set.
  Linear q_proj{nullptr};
  Linear q_a_proj{nullptr};
  RMSNorm q_a_layernorm{nullptr};
  Linear q_b_proj{nullptr};
  Linear kv_a_proj_with_mqa{nullptr};
  RMSNorm kv_a_layernorm{nullptr};
  Linear kv_b_proj{nullptr};
  Linear o_proj{nullptr};

 private:
  // q split per head into its no-RoPE part and its rotated RoPE part.
  std::pair<torch::Tensor, torch::Tensor> queries(const torch::Tensor& x_BTD,
                                                  const RopeAngles& rope);

  int64_t H_, N_, P_, V_, C_;
  double scale_;
  ops::Impl attention_impl_ = ops::Impl::kReference;
  ops::Impl decode_impl_ = ops::Impl::kReference;
};
TORCH_MODULE(MlaAttention);

}  // namespace moetron::model
