// Tiny configs shared by the model tests (SPEC 10.1 dims) and the published model shapes.
#pragma once

#include "moetron/config/config.h"

namespace moetron::model::testing {

// 3 layers (layer 0 dense, 1-2 MoE), 8 experts in 4 groups, one MTP module (MoE).
inline config::Config tiny_config(bool q_lora = true, int64_t mtp_depth = 1) {
  config::Config c;
  c.model.vocab_size = 61;
  c.model.hidden_size = 32;
  c.model.intermediate_size = 48;
  c.model.num_hidden_layers = 3;
  c.model.num_attention_heads = 4;
  c.model.rms_norm_eps = 1e-6;
  c.model.initializer_range = 0.1;  // larger than V3's 0.006 so routing is not uniform
  c.mla.q_lora_rank = q_lora ? std::optional<int64_t>(16) : std::nullopt;
  c.mla.kv_lora_rank = 16;
  c.mla.qk_nope_head_dim = 8;
  c.mla.qk_rope_head_dim = 4;
  c.mla.v_head_dim = 8;
  c.moe.n_routed_experts = 8;
  c.moe.n_shared_experts = 1;
  c.moe.num_experts_per_tok = 2;
  c.moe.moe_intermediate_size = 16;
  c.moe.n_group = 4;
  c.moe.topk_group = 2;
  c.moe.first_k_dense_replace = 1;
  c.moe.routed_scaling_factor = 2.5;
  c.moe.aux_loss_alpha = 1e-2;
  c.mtp.num_nextn_predict_layers = mtp_depth;
  c.mtp.loss_weight = 0.3;
  return c;
}

inline config::Config v3_config() {
  config::Config c;  // struct defaults are V3's except the few set here
  c.model.vocab_size = 129280;
  c.model.hidden_size = 7168;
  c.model.intermediate_size = 18432;
  c.model.num_hidden_layers = 61;
  c.model.num_attention_heads = 128;
  c.mla.q_lora_rank = 1536;
  c.mla.kv_lora_rank = 512;
  c.moe.n_routed_experts = 256;
  c.moe.n_shared_experts = 1;
  c.moe.num_experts_per_tok = 8;
  c.moe.moe_intermediate_size = 2048;
  c.moe.n_group = 8;
  c.moe.topk_group = 4;
  c.moe.first_k_dense_replace = 3;
  c.mtp.num_nextn_predict_layers = 1;
  config::RopeScaling y;
  y.factor = 40;
  y.mscale = 1.0;
  y.mscale_all_dim = 1.0;
  c.model.rope_scaling = y;
  return c;
}

inline config::Config v2_lite_config() {
  config::Config c;
  c.model.vocab_size = 102400;
  c.model.hidden_size = 2048;
  c.model.intermediate_size = 10944;
  c.model.num_hidden_layers = 27;
  c.model.num_attention_heads = 16;
  c.mla.q_lora_rank = std::nullopt;
  c.mla.kv_lora_rank = 512;
  c.moe.n_routed_experts = 64;
  c.moe.n_shared_experts = 2;
  c.moe.num_experts_per_tok = 6;
  c.moe.moe_intermediate_size = 1408;
  c.moe.n_group = 1;
  c.moe.topk_group = 1;
  c.moe.first_k_dense_replace = 1;
  c.moe.topk_method = config::TopkMethod::kGreedy;
  c.moe.scoring_func = config::ScoringFunc::kSoftmax;
  c.moe.norm_topk_prob = false;
  c.moe.routed_scaling_factor = 1.0;
  c.mtp.num_nextn_predict_layers = 0;
  config::RopeScaling y;
  y.factor = 40;
  y.mscale = 0.707;
  y.mscale_all_dim = 0.707;
  c.model.rope_scaling = y;
  return c;
}

}  // namespace moetron::model::testing
