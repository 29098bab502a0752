// DeepSeek-V3 causal LM (SPEC 4.3): trunk, head, MTP (SPEC 3), losses, chunked log-probs,
// config validation and initialisation.
#include "moetron/model/model.h"
#include "moetron/ops/cpu_gemm.h"

#include <torch/torch.h>

#include "moetron/core/error.h"
#include "moetron/core/logging.h"
#include "moetron/model/accounting.h"
#include "moetron/model/losses.h"
#include "moetron/ops/impl.h"

namespace moetron::model {

// Legend: B batch, T tokens, D hidden, V vocab, E routed experts, M MoE layers (main + MTP).

void validate_model_config(const config::Config& cfg) {
  const auto& m = cfg.model;
  const auto& a = cfg.mla;
  const auto& e = cfg.moe;
  MOETRON_CHECK_CONFIG(m.vocab_size > 0, "model.vocab_size must be > 0, got ", m.vocab_size);
  MOETRON_CHECK_CONFIG(m.hidden_size > 0, "model.hidden_size must be > 0, got ", m.hidden_size);
  MOETRON_CHECK_CONFIG(m.num_hidden_layers >= 1, "model.num_hidden_layers must be >= 1, got ",
                       m.num_hidden_layers);
  MOETRON_CHECK_CONFIG(m.num_attention_heads > 0, "model.num_attention_heads must be > 0, got ",
                       m.num_attention_heads);
  MOETRON_CHECK_CONFIG(m.intermediate_size > 0, "model.intermediate_size must be > 0, got ",
                       m.intermediate_size);
  MOETRON_CHECK_CONFIG(m.rms_norm_eps > 0, "model.rms_norm_eps must be > 0, got ", m.rms_norm_eps);
  MOETRON_CHECK_CONFIG(m.initializer_range >= 0, "model.initializer_range must be >= 0, got ",
                       m.initializer_range);
  MOETRON_CHECK_CONFIG(!a.q_lora_rank || *a.q_lora_rank > 0,
                       "mla.q_lora_rank must be > 0 or null, got ", a.q_lora_rank.value_or(0));
  MOETRON_CHECK_CONFIG(a.kv_lora_rank > 0, "mla.kv_lora_rank must be > 0, got ", a.kv_lora_rank);
  MOETRON_CHECK_CONFIG(a.qk_nope_head_dim > 0, "mla.qk_nope_head_dim must be > 0, got ",
                       a.qk_nope_head_dim);
  MOETRON_CHECK_CONFIG(a.qk_rope_head_dim > 0 && a.qk_rope_head_dim % 2 == 0,
                       "mla.qk_rope_head_dim must be positive and even, got ", a.qk_rope_head_dim);
  MOETRON_CHECK_CONFIG(a.v_head_dim > 0, "mla.v_head_dim must be > 0, got ", a.v_head_dim);
  if (e.n_routed_experts) {
    const int64_t E = *e.n_routed_experts;
    MOETRON_CHECK_CONFIG(E > 0, "moe.n_routed_experts must be > 0 or null, got ", E);
    MOETRON_CHECK_CONFIG(e.moe_layer_freq >= 1, "moe.moe_layer_freq must be >= 1, got ",
                         e.moe_layer_freq);
    MOETRON_CHECK_CONFIG(e.first_k_dense_replace >= 0,
                         "moe.first_k_dense_replace must be >= 0, got ", e.first_k_dense_replace);
    MOETRON_CHECK_CONFIG(e.moe_intermediate_size > 0, "moe.moe_intermediate_size must be > 0, got ",
                         e.moe_intermediate_size);
    MOETRON_CHECK_CONFIG(e.n_shared_experts >= 0, "moe.n_shared_experts must be >= 0, got ",
                         e.n_shared_experts);
    MOETRON_CHECK_CONFIG(e.num_experts_per_tok >= 1 && e.num_experts_per_tok <= E,
                         "moe.num_experts_per_tok must be in [1, n_routed_experts=", E, "], got ",
                         e.num_experts_per_tok);
    if (e.topk_method != config::TopkMethod::kGreedy) {
      MOETRON_CHECK_CONFIG(e.n_group >= 1 && E % e.n_group == 0,
                           "moe.n_group must divide n_routed_experts=", E, ", got ", e.n_group);
      MOETRON_CHECK_CONFIG(e.topk_group >= 1 && e.topk_group <= e.n_group,
                           "moe.topk_group must be in [1, n_group=", e.n_group, "], got ",
                           e.topk_group);
      MOETRON_CHECK_CONFIG(e.num_experts_per_tok <= e.topk_group * (E / e.n_group),
                           "moe.num_experts_per_tok=", e.num_experts_per_tok,
                           " exceeds the experts of the kept groups (topk_group x E/n_group = ",
                           e.topk_group * (E / e.n_group), ")");
    }
    MOETRON_CHECK_CONFIG(e.aux_loss_alpha >= 0, "moe.aux_loss_alpha must be >= 0, got ",
                         e.aux_loss_alpha);
  }
  MOETRON_CHECK_CONFIG(cfg.mtp.num_nextn_predict_layers >= 0,
                       "mtp.num_nextn_predict_layers must be >= 0, got ",
                       cfg.mtp.num_nextn_predict_layers);
  MOETRON_CHECK_CONFIG(cfg.mtp.loss_weight >= 0, "mtp.loss_weight must be >= 0, got ",
                       cfg.mtp.loss_weight);
}

torch::Tensor cross_entropy(const torch::Tensor& logits_NV, const torch::Tensor& targets_N) {
  auto sum = torch::nn::functional::cross_entropy(logits_NV.to(torch::kFloat32), targets_N,
                                                  torch::nn::functional::CrossEntropyFuncOptions()
                                                      .ignore_index(kIgnoreIndex)
                                                      .reduction(torch::kSum));
  auto n_valid = (targets_N != kIgnoreIndex).sum().clamp_min(1).to(torch::kFloat32);
  return sum / n_valid;
}

// ---- trunk ----------------------------------------------------------------------------------

DeepseekV3ModelImpl::DeepseekV3ModelImpl(const config::Config& cfg) {
  embed_tokens = register_module("embed_tokens",
                                 torch::nn::Embedding(cfg.model.vocab_size, cfg.model.hidden_size));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t l = 0; l < cfg.model.num_hidden_layers; ++l) {
    layer_list_.push_back(DecoderLayer(cfg, l));
    layers->push_back(layer_list_.back());
  }
  norm = register_module("norm", RMSNorm(cfg.model.hidden_size, cfg.model.rms_norm_eps));
}

void DeepseekV3ModelImpl::reset_parameters(double std) {
  {
    torch::NoGradGuard no_grad;
    embed_tokens->weight.normal_(0.0, std);
  }
  for (auto& layer : layer_list_) layer->reset_parameters(std);
  norm->reset_parameters();
}

TrunkOutput DeepseekV3ModelImpl::forward(const torch::Tensor& input_ids_BT, const RopeAngles& rope,
                                         const torch::Tensor& segment_ids_BT, bool balance) {
  TrunkOutput out;
  out.embeds_BTD = embed_tokens(input_ids_BT);
  auto h_BTD = out.embeds_BTD;
  for (auto& layer : layer_list_) {
    auto lo = layer(h_BTD, rope, segment_ids_BT, balance);
    h_BTD = lo.h_BTD;
    if (lo.counts_E.defined()) out.counts.push_back(lo.counts_E);
    if (lo.balance_loss.defined()) out.balance_losses.push_back(lo.balance_loss);
  }
  out.pre_norm_BTD = h_BTD;
  out.hidden_BTD = norm(h_BTD);
  return out;
}

// ---- causal LM --------------------------------------------------------------------------------

DeepseekV3ForCausalLMImpl::DeepseekV3ForCausalLMImpl(const config::Config& cfg)
    : cfg_((validate_model_config(cfg), cfg)), rope_(cfg) {
  model = register_module("model", DeepseekV3Model(cfg));
  if (!cfg.model.tie_word_embeddings) {
    lm_head = register_module("lm_head", Linear(cfg.model.hidden_size, cfg.model.vocab_size));
  }
  mtp = register_module("mtp", torch::nn::ModuleList());
  for (int64_t k = 1; k <= cfg.mtp.num_nextn_predict_layers; ++k) {
    mtp_list_.push_back(MtpLayer(cfg, k));
    mtp->push_back(mtp_list_.back());
  }
  // kernels.attention / kernels.decode_attention: every MLA (main layers and MTP modules).
  const auto attention_impl = ops::parse_impl(cfg.kernels.attention, "kernels.attention");
  const auto decode_impl =
      ops::parse_impl(cfg.kernels.decode_attention, "kernels.decode_attention");
  std::vector<MlaAttention> attns;
  for (int64_t l = 0; l < model->num_layers(); ++l) attns.push_back(model->layer(l)->self_attn);
  for (const auto& m : mtp_list_) attns.push_back(m->self_attn);
  for (auto& attn : attns) {
    attn->set_attention_impl(attention_impl);
    attn->set_decode_attention_impl(decode_impl);
  }
  // kernels.gate picks the router (fused gate kernel) and the expert-count implementation;
  // kernels.permute the local dispatcher's grouping.
  const auto counts_impl = ops::parse_impl(cfg.kernels.gate, "kernels.gate");
  const auto permute_impl = ops::parse_impl(cfg.kernels.permute, "kernels.permute");
  MOETRON_CHECK_CONFIG(permute_impl == ops::Impl::kReference || ops::cuda_kernels_built(),
                       "kernels.permute: 'cuda' requested but this build has no CUDA kernels "
                       "(configure with MOETRON_WITH_CUDA=ON); use 'reference'");
  for (auto& moe : moe_layers()) {
    moe->set_counts_impl(counts_impl);
    moe->gate->set_impl(counts_impl);
    if (auto* local = dynamic_cast<LocalTokenDispatcher*>(&moe->dispatcher())) {
      local->set_permute_impl(permute_impl);
    }
  }
  // kernels.grouped_gemm: the routed experts' projections as cuBLAS grouped GEMMs.
  const auto grouped_gemm_impl = ops::parse_impl(cfg.kernels.grouped_gemm, "kernels.grouped_gemm");
  for (auto& moe : moe_layers()) moe->experts->set_impl(grouped_gemm_impl);
  reset_parameters();
  log::info(summary_line(cfg));
}

void DeepseekV3ForCausalLMImpl::reset_parameters() {
  const double std = cfg_.model.initializer_range;
  model->reset_parameters(std);
  if (!lm_head.is_empty()) {
    torch::NoGradGuard no_grad;
    lm_head->weight.normal_(0.0, std);
  }
  for (auto& m : mtp_list_) m->reset_parameters(std);
}

torch::Tensor DeepseekV3ForCausalLMImpl::lm_head_weight() const {
  return lm_head.is_empty() ? model->embed_tokens->weight : lm_head->weight;
}

torch::Tensor DeepseekV3ForCausalLMImpl::logits(const torch::Tensor& hidden_BTD) {
  return ops::cpu::linear(hidden_BTD, lm_head_weight());
}

RopeAngles DeepseekV3ForCausalLMImpl::rope_angles(const torch::Tensor& position_ids_BT,
                                                  torch::ScalarType dtype) const {
  return rope_.angles(position_ids_BT, dtype);
}

std::vector<Moe> DeepseekV3ForCausalLMImpl::moe_layers() const {
  std::vector<Moe> out;
  for (int64_t l = 0; l < model->num_layers(); ++l) {
    auto layer = model->layer(l);
    if (layer->is_moe()) out.push_back(layer->moe);
  }
  for (const auto& m : mtp_list_) {
    if (m->is_moe()) out.push_back(m->moe);
  }
  return out;
}

std::vector<std::string> DeepseekV3ForCausalLMImpl::moe_layer_names() const {
  std::vector<std::string> out;
  for (int64_t l = 0; l < model->num_layers(); ++l) {
    if (model->layer(l)->is_moe()) out.push_back(str_cat("model.layers.", l, ".mlp"));
  }
  for (size_t k = 0; k < mtp_list_.size(); ++k) {
    if (mtp_list_[k]->is_moe()) out.push_back(str_cat("mtp.", k, ".mlp"));
  }
  return out;
}

namespace {

void check_inputs(const torch::Tensor& input_ids_BT, const torch::Tensor& labels_BT,
                  const torch::Tensor& position_ids_BT, const torch::Tensor& segment_ids_BT) {
  MOETRON_CHECK(input_ids_BT.dim() == 2 && !input_ids_BT.is_floating_point(),
                "input_ids: expected integer [B, T], got ", input_ids_BT.sizes(), " ",
                input_ids_BT.dtype());
  for (const auto* t : {&labels_BT, &position_ids_BT, &segment_ids_BT}) {
    if (t->defined()) {
      MOETRON_CHECK(t->sizes() == input_ids_BT.sizes(),
                    "labels/position_ids/segment_ids: expected the shape of input_ids ",
                    input_ids_BT.sizes(), ", got ", t->sizes());
    }
  }
}

}  // namespace

ForwardOutput DeepseekV3ForCausalLMImpl::forward(const torch::Tensor& input_ids_BT,
                                                 const torch::Tensor& labels_in_BT,
                                                 const torch::Tensor& position_ids_BT,
                                                 const torch::Tensor& segment_ids_BT,
                                                 const ForwardOptions& options) {
  check_inputs(input_ids_BT, labels_in_BT, position_ids_BT, segment_ids_BT);
  const auto labels_BT = labels_in_BT.defined() ? labels_in_BT.to(torch::kInt64) : labels_in_BT;
  const int64_t B = input_ids_BT.size(0), T = input_ids_BT.size(1);
  const auto device = input_ids_BT.device();
  const auto dtype = model->embed_tokens->weight.scalar_type();
  auto positions_BT =
      position_ids_BT.defined() ? position_ids_BT : default_position_ids(B, T, device);
  auto rope = rope_.angles(positions_BT, dtype);

  // Balance losses only when they will be added (they are a topk and a scatter per MoE layer).
  auto trunk = model(input_ids_BT, rope, segment_ids_BT, options.compute_balance);
  ForwardOutput out;
  out.hidden_BTD = trunk.hidden_BTD;
  const int64_t Dh = trunk.hidden_BTD.size(2);
  if (options.return_logits) out.logits_BTV = logits(trunk.hidden_BTD);
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(device);

  std::vector<torch::Tensor> counts = trunk.counts;
  std::vector<torch::Tensor> balance = trunk.balance_losses;
  const bool has_labels = labels_BT.defined();
  if (has_labels) {
    // Position i predicts labels[i+1] (HF shift).
    auto targets = labels_BT.narrow(1, 1, T - 1).reshape(-1);
    if (options.return_logits) {
      const auto V = out.logits_BTV.size(2);
      out.main_loss = cross_entropy(out.logits_BTV.narrow(1, 0, T - 1).reshape({-1, V}), targets);
    } else {
      out.main_loss = chunked_cross_entropy(trunk.hidden_BTD.narrow(1, 0, T - 1).reshape({-1, Dh}),
                                            lm_head_weight(), targets, options.loss_chunk_rows);
    }
    out.num_target_tokens = (targets != kIgnoreIndex).sum();
  }

  // ---- MTP (SPEC 3): depth k at position i sees Emb(t_{i+k}) and predicts t_{i+k+1}.
  const int64_t D_mtp = num_mtp();
  const bool run_mtp = has_labels && options.compute_mtp && D_mtp > 0;
  if (run_mtp) {
    const auto& emb_BTD = trunk.embeds_BTD;
    torch::Tensor h_prev = cfg_.mtp.hidden_source == config::MtpHiddenSource::kPostNorm
                               ? trunk.hidden_BTD
                               : trunk.pre_norm_BTD;
    auto mtp_sum = torch::zeros({}, f32);
    for (int64_t k = 1; k <= D_mtp; ++k) {
      const int64_t Tk = T - k;  // positions with a next-k embedding
      auto& layer = mtp_list_[k - 1];
      torch::Tensor loss_k;
      if (Tk <= 0) {
        loss_k = torch::zeros({}, mtp_sum.options());
        if (layer->is_moe())
          counts.push_back(
              torch::zeros({*cfg_.moe.n_routed_experts},
                           torch::TensorOptions().dtype(torch::kInt64).device(device)));
      } else {
        RopeAngles rope_k{rope.cos_BTR.narrow(1, 0, Tk), rope.sin_BTR.narrow(1, 0, Tk)};
        auto seg_k = segment_ids_BT.defined() ? segment_ids_BT.narrow(1, 0, Tk) : torch::Tensor();
        auto lo = layer->forward_mtp(h_prev.narrow(1, 0, Tk), emb_BTD.narrow(1, k, Tk), rope_k,
                                     seg_k, options.compute_balance);
        if (lo.counts_E.defined()) counts.push_back(lo.counts_E);
        if (lo.balance_loss.defined()) balance.push_back(lo.balance_loss);
        h_prev = lo.h_BTD;
        if (Tk >= 2) {
          auto h_k = layer->shared_head->norm(lo.h_BTD).narrow(1, 0, Tk - 1).reshape({-1, Dh});
          loss_k = chunked_cross_entropy(h_k, lm_head_weight(),
                                         labels_BT.narrow(1, k + 1, Tk - 1).reshape(-1),
                                         options.loss_chunk_rows);
        } else {
          loss_k = torch::zeros({}, mtp_sum.options());
        }
      }
      out.mtp_losses.push_back(loss_k);
      mtp_sum = mtp_sum + loss_k;
    }
    out.mtp_loss = mtp_sum / static_cast<double>(D_mtp);
  } else {
    for (const auto& m : mtp_list_) {
      if (m->is_moe()) {
        counts.push_back(torch::zeros({*cfg_.moe.n_routed_experts},
                                      torch::TensorOptions().dtype(torch::kInt64).device(device)));
      }
    }
  }

  if (!counts.empty()) {
    out.expert_counts_ME = torch::stack(counts);
  } else {
    out.expert_counts_ME = torch::zeros({0, cfg_.moe.n_routed_experts.value_or(0)},
                                        torch::TensorOptions().dtype(torch::kInt64).device(device));
  }
  out.balance_loss = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat32).device(device));
  if (options.compute_balance) {
    for (const auto& b : balance) out.balance_loss = out.balance_loss + b;
  }
  if (has_labels) {
    out.loss = out.main_loss + out.balance_loss;
    if (run_mtp) out.loss = out.loss + cfg_.mtp.loss_weight * out.mtp_loss;
  }
  return out;
}

KvCache DeepseekV3ForCausalLMImpl::new_kv_cache(int64_t B, int64_t max_len) const {
  const auto& w = model->embed_tokens->weight;
  KvCache cache;
  for (int64_t l = 0; l < model->num_layers(); ++l) {
    cache.layers.push_back({torch::zeros({B, max_len, cfg_.mla.kv_lora_rank}, w.options()),
                            torch::zeros({B, max_len, cfg_.mla.qk_rope_head_dim}, w.options())});
  }
  cache.valid_BS = torch::zeros({B, max_len}, w.options().dtype(torch::kBool));
  return cache;
}

torch::Tensor DeepseekV3ForCausalLMImpl::forward_with_cache(const torch::Tensor& input_ids_BT,
                                                            KvCache& cache,
                                                            const torch::Tensor& position_ids_BT,
                                                            const torch::Tensor& token_valid_BT) {
  check_inputs(input_ids_BT, {}, position_ids_BT, token_valid_BT);
  const int64_t B = input_ids_BT.size(0), T = input_ids_BT.size(1);
  const int64_t start = cache.length, S = start + T;
  MOETRON_CHECK(static_cast<int64_t>(cache.layers.size()) == model->num_layers() &&
                    cache.valid_BS.size(0) == B,
                "forward_with_cache: cache built for another model or batch size (", B, " rows)");
  MOETRON_CHECK(S <= cache.capacity(), "forward_with_cache: ", S, " tokens exceed the cache's ",
                cache.capacity(), " slots");
  const auto device = input_ids_BT.device();
  auto slots_BT = default_position_ids(B, T, device) + start;
  auto positions_BT = position_ids_BT.defined() ? position_ids_BT : slots_BT;
  auto valid_BT = token_valid_BT.defined() ? token_valid_BT.to(torch::kBool)
                                           : torch::ones({B, T}, cache.valid_BS.options());
  cache.valid_BS.narrow(1, start, T).copy_(valid_BT);
  // Causal over slots, padding slots hidden; a token always sees itself (no empty rows).
  auto slot_idx_S = torch::arange(S, slots_BT.options());
  auto allowed_BTS = (slot_idx_S.view({1, 1, S}) <= slots_BT.unsqueeze(-1)) &
                     cache.valid_BS.narrow(1, 0, S).unsqueeze(1);
  allowed_BTS = allowed_BTS | (slot_idx_S.view({1, 1, S}) == slots_BT.unsqueeze(-1));

  auto rope = rope_.angles(positions_BT, model->embed_tokens->weight.scalar_type());
  auto h_BTD = model->embed_tokens(input_ids_BT);
  for (int64_t l = 0; l < model->num_layers(); ++l) {
    h_BTD = model->layer(l)->forward_cached(h_BTD, rope, cache.layers[l], start, allowed_BTS).h_BTD;
  }
  cache.length = S;
  return logits(model->norm(h_BTD));
}

torch::Tensor DeepseekV3ForCausalLMImpl::token_logprobs(const torch::Tensor& input_ids_BT,
                                                        const torch::Tensor& position_ids_BT,
                                                        const torch::Tensor& segment_ids_BT,
                                                        int64_t chunk, double temperature) {
  check_inputs(input_ids_BT, {}, position_ids_BT, segment_ids_BT);
  MOETRON_CHECK(chunk > 0, "token_logprobs: chunk must be > 0, got ", chunk);
  const int64_t B = input_ids_BT.size(0), T = input_ids_BT.size(1);
  auto positions_BT = position_ids_BT.defined() ? position_ids_BT
                                                : default_position_ids(B, T, input_ids_BT.device());
  auto rope = rope_.angles(positions_BT, model->embed_tokens->weight.scalar_type());
  auto hidden_BTD = model(input_ids_BT, rope, segment_ids_BT).hidden_BTD;
  if (T < 2) {
    return torch::zeros(
        {B, 0}, torch::TensorOptions().dtype(torch::kFloat32).device(input_ids_BT.device()));
  }
  auto h_ND = hidden_BTD.narrow(1, 0, T - 1).reshape({B * (T - 1), hidden_BTD.size(2)});
  auto targets_N = input_ids_BT.narrow(1, 1, T - 1).reshape(-1);
  return chunked_token_logprobs(h_ND, lm_head_weight(), targets_N, chunk * B, temperature)
      .view({B, T - 1});
}

}  // namespace moetron::model
