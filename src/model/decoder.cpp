// Decoder block and MTP module (SPEC 1.3, 2.1, 3.1).
#include "moetron/model/decoder.h"

#include <torch/torch.h>

#include "moetron/core/error.h"

namespace moetron::model {

// Legend: B batch, T tokens, D hidden, E routed experts.

bool is_moe_layer(const config::Config& cfg, int64_t layer_idx) {
  const auto& m = cfg.moe;
  return m.n_routed_experts.has_value() && *m.n_routed_experts > 0 &&
         layer_idx >= m.first_k_dense_replace && m.moe_layer_freq > 0 &&
         layer_idx % m.moe_layer_freq == 0;
}

DecoderLayerImpl::DecoderLayerImpl(const config::Config& cfg, int64_t layer_idx)
    : layer_idx_(layer_idx) {
  const int64_t D = cfg.model.hidden_size;
  const double eps = cfg.model.rms_norm_eps;
  self_attn = register_module("self_attn", MlaAttention(cfg));
  if (is_moe_layer(cfg, layer_idx)) {
    moe = register_module("mlp", Moe(D, cfg.moe));
  } else {
    dense = register_module("mlp", Mlp(D, cfg.model.intermediate_size));
  }
  input_layernorm = register_module("input_layernorm", RMSNorm(D, eps));
  post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(D, eps));
}

void DecoderLayerImpl::reset_parameters(double std) {
  self_attn->reset_parameters(std);
  if (is_moe()) {
    moe->reset_parameters(std);
  } else {
    dense->reset_parameters(std);
  }
  input_layernorm->reset_parameters();
  post_attention_layernorm->reset_parameters();
}

LayerOutput DecoderLayerImpl::forward(const torch::Tensor& h_BTD, const RopeAngles& rope,
                                      const torch::Tensor& segment_ids_BT, bool balance) {
  LayerOutput out;
  auto h = h_BTD + self_attn(input_layernorm(h_BTD), rope, segment_ids_BT);
  auto x_BTD = post_attention_layernorm(h);
  if (is_moe()) {
    auto m = moe(x_BTD, balance);
    out.h_BTD = h + m.y_BTD;
    out.counts_E = m.counts_E;
    out.balance_loss = m.balance_loss;
  } else {
    out.h_BTD = h + dense(x_BTD);
  }
  return out;
}

LayerOutput DecoderLayerImpl::forward_cached(const torch::Tensor& h_BTD, const RopeAngles& rope,
                                             LatentKV& cache, int64_t start,
                                             const torch::Tensor& allowed_BTS) {
  const int64_t T = h_BTD.size(1);
  MOETRON_CHECK(start >= 0 && start + T <= cache.c_kv_BSC.size(1), "KV cache overflow: ", start,
                " + ", T, " tokens exceed the ", cache.c_kv_BSC.size(1), " cached slots");
  auto x_BTD = input_layernorm(h_BTD);
  auto entry = self_attn->latent_kv(x_BTD, rope);
  cache.c_kv_BSC.narrow(1, start, T).copy_(entry.c_kv_BSC);
  cache.k_pe_BSP.narrow(1, start, T).copy_(entry.k_pe_BSP);
  LatentKV filled{cache.c_kv_BSC.narrow(1, 0, start + T), cache.k_pe_BSP.narrow(1, 0, start + T)};
  LayerOutput out;
  auto h = h_BTD + self_attn->forward_absorbed(x_BTD, rope, filled, allowed_BTS);
  auto y_BTD = post_attention_layernorm(h);
  if (is_moe()) {
    auto m = moe(y_BTD);
    out.h_BTD = h + m.y_BTD;
    out.counts_E = m.counts_E;
  } else {
    out.h_BTD = h + dense(y_BTD);
  }
  return out;
}

SharedHeadImpl::SharedHeadImpl(int64_t hidden, double eps) {
  norm = register_module("norm", RMSNorm(hidden, eps));
}

MtpLayerImpl::MtpLayerImpl(const config::Config& cfg, int64_t depth)
    : DecoderLayerImpl(cfg, cfg.model.num_hidden_layers + depth - 1), depth_(depth) {
  MOETRON_CHECK(depth >= 1, "MTP depth starts at 1, got ", depth);
  const int64_t D = cfg.model.hidden_size;
  const double eps = cfg.model.rms_norm_eps;
  enorm = register_module("enorm", RMSNorm(D, eps));
  hnorm = register_module("hnorm", RMSNorm(D, eps));
  eh_proj = register_module("eh_proj", Linear(2 * D, D));
  shared_head = register_module("shared_head", SharedHead(D, eps));
}

void MtpLayerImpl::reset_parameters(double std) {
  DecoderLayerImpl::reset_parameters(std);
  enorm->reset_parameters();
  hnorm->reset_parameters();
  shared_head->norm->reset_parameters();
  torch::NoGradGuard no_grad;
  eh_proj->weight.normal_(0.0, std);
}

LayerOutput MtpLayerImpl::forward_mtp(const torch::Tensor& h_prev_BTD, const torch::Tensor& emb_BTD,
                                      const RopeAngles& rope, const torch::Tensor& segment_ids_BT,
                                      bool balance) {
  MOETRON_CHECK(h_prev_BTD.sizes() == emb_BTD.sizes(), "MTP: hidden ", h_prev_BTD.sizes(),
                " and embedding ", emb_BTD.sizes(), " must have the same shape");
  auto x_BT2D = torch::cat({enorm(emb_BTD), hnorm(h_prev_BTD)}, -1);
  return DecoderLayerImpl::forward(eh_proj(x_BT2D), rope, segment_ids_BT, balance);
}

}  // namespace moetron::model
