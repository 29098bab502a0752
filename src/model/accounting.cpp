// Parameter/FLOP accounting (SPEC 7.1); the per-layer formulas mirror what the modules build.
#include "moetron/model/accounting.h"

#include <cstdio>

#include <torch/torch.h>

#include "moetron/model/decoder.h"

namespace moetron::model {

namespace {

struct LayerCounts {
  int64_t total = 0, active = 0, active_matmul = 0;
};

int64_t attn_params(const config::Config& cfg, bool with_norms) {
  const int64_t d = cfg.model.hidden_size, h = cfg.model.num_attention_heads;
  const auto& a = cfg.mla;
  const int64_t qk = a.qk_nope_head_dim + a.qk_rope_head_dim;
  int64_t n = 0;
  if (a.q_lora_rank) {
    const int64_t qr = *a.q_lora_rank;
    n += d * qr + qr * h * qk + (with_norms ? qr : 0);
  } else {
    n += d * h * qk;
  }
  n += d * (a.kv_lora_rank + a.qk_rope_head_dim) + (with_norms ? a.kv_lora_rank : 0);
  n += a.kv_lora_rank * h * (a.qk_nope_head_dim + a.v_head_dim);
  n += h * a.v_head_dim * d;
  return n;
}

LayerCounts layer_counts(const config::Config& cfg, int64_t layer_idx) {
  const int64_t d = cfg.model.hidden_size;
  LayerCounts c;
  const int64_t attn = attn_params(cfg, true);
  const int64_t attn_mm = attn_params(cfg, false);
  c.total = c.active = attn + 2 * d;  // + input/post-attention norms
  c.active_matmul = attn_mm;
  if (is_moe_layer(cfg, layer_idx)) {
    const auto& m = cfg.moe;
    const int64_t E = *m.n_routed_experts;
    const int64_t expert = 3 * d * m.moe_intermediate_size;
    const int64_t gate = E * d;
    c.total += (E + m.n_shared_experts) * expert + gate;
    const int64_t act = (m.num_experts_per_tok + m.n_shared_experts) * expert + gate;
    c.active += act;
    c.active_matmul += act;
  } else {
    const int64_t mlp = 3 * d * cfg.model.intermediate_size;
    c.total += mlp;
    c.active += mlp;
    c.active_matmul += mlp;
  }
  return c;
}

}  // namespace

ParamCounts count_params(const config::Config& cfg) {
  const int64_t d = cfg.model.hidden_size, V = cfg.model.vocab_size;
  const int64_t L = cfg.model.num_hidden_layers;
  ParamCounts p;
  p.embedding = V * d;
  p.lm_head = cfg.model.tie_word_embeddings ? 0 : V * d;
  const int64_t head_on_path = V * d;  // the output projection is on every token's path
  p.total = p.embedding + p.lm_head + d;
  p.active = head_on_path + d;
  p.active_matmul = head_on_path;
  for (int64_t l = 0; l < L; ++l) {
    auto c = layer_counts(cfg, l);
    p.total += c.total;
    p.active += c.active;
    p.active_matmul += c.active_matmul;
  }
  p.active_with_embedding = p.active + (cfg.model.tie_word_embeddings ? 0 : p.embedding);
  for (int64_t k = 1; k <= cfg.mtp.num_nextn_predict_layers; ++k) {
    auto c = layer_counts(cfg, L + k - 1);
    const int64_t own = 2 * d * d + 3 * d;  // eh_proj + enorm + hnorm + shared_head.norm
    p.mtp_total += c.total + own;
    p.mtp_active += c.active + own;
    p.mtp_active_matmul += c.active_matmul + 2 * d * d + head_on_path;
  }
  return p;
}

FlopCounts forward_flops_per_token(const config::Config& cfg, int64_t seq_len) {
  const auto p = count_params(cfg);
  const auto& a = cfg.mla;
  const double per_layer_attn =
      static_cast<double>(cfg.model.num_attention_heads) *
      static_cast<double>(a.qk_nope_head_dim + a.qk_rope_head_dim + a.v_head_dim) *
      static_cast<double>(seq_len + 1);
  FlopCounts f;
  f.matmul = 2.0 * static_cast<double>(p.active_matmul);
  f.attention = static_cast<double>(cfg.model.num_hidden_layers) * per_layer_attn;
  f.total = f.matmul + f.attention;
  f.mtp = 2.0 * static_cast<double>(p.mtp_active_matmul) +
          static_cast<double>(cfg.mtp.num_nextn_predict_layers) * per_layer_attn;
  f.with_mtp = f.total + f.mtp;
  return f;
}

std::string summary_line(const config::Config& cfg, int64_t seq_len) {
  const auto p = count_params(cfg);
  const auto f = forward_flops_per_token(cfg, seq_len);
  auto human = [](double n) {
    char buf[32];
    if (n >= 1e9) {
      std::snprintf(buf, sizeof buf, "%.2fB", n / 1e9);
    } else if (n >= 1e6) {
      std::snprintf(buf, sizeof buf, "%.2fM", n / 1e6);
    } else {
      std::snprintf(buf, sizeof buf, "%.0f", n);
    }
    return std::string(buf);
  };
  char flops[64];
  std::snprintf(flops, sizeof flops, "%.4g GFLOP", f.total / 1e9);
  std::string line = "model: " + human(p.total) + " params (active " + human(p.active) +
                     " excl. embedding, " + human(p.active_with_embedding) + " incl.)";
  if (p.mtp_total > 0) line += ", MTP " + human(p.mtp_total);
  line += ", fwd " + std::string(flops) + "/token at T=" + std::to_string(seq_len);
  return line;
}

int64_t count_module_params(const torch::nn::Module& module, const std::string& prefix) {
  int64_t n = 0;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    if (prefix.empty() || item.key().rfind(prefix, 0) == 0) n += item.value().numel();
  }
  return n;
}

}  // namespace moetron::model
