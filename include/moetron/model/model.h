// The whole DeepSeek-V3 causal LM (SPEC 4.3): embedding, decoder stack, final norm, lm_head,
// optional MTP modules, and the losses (main CE, MTP CE per depth, balance loss).
#pragma once

#include <string>
#include <vector>
#include "moetron/model/linear.h"

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include "moetron/config/config.h"
#include "moetron/model/decoder.h"
#include "moetron/model/rope.h"

namespace moetron::model {

// Legend: B batch, T tokens, D hidden, V vocab, E routed experts, M MoE layers (main + MTP).

inline constexpr int64_t kIgnoreIndex = -100;

// Throws a config Error (naming the key) for any model/mla/moe/mtp setting the model cannot
// build: divisibility of experts into groups, K vs kept groups, odd rope dims, ...
void validate_model_config(const config::Config& cfg);

// Mean cross-entropy over targets != kIgnoreIndex, computed in fp32. With no valid target the
// result is 0 (still connected to the graph) instead of HF's NaN.
torch::Tensor cross_entropy(const torch::Tensor& logits_NV, const torch::Tensor& targets_N);

// Embedding + decoder stack + final norm (HF `model.*`).
struct TrunkOutput {
  torch::Tensor hidden_BTD;                   // after model.norm
  torch::Tensor pre_norm_BTD;                 // last block output, before model.norm
  torch::Tensor embeds_BTD;                   // embed_tokens(input_ids), reused by MTP
  std::vector<torch::Tensor> counts;          // per MoE layer, int64 [E]
  std::vector<torch::Tensor> balance_losses;  // per MoE layer (training, alpha > 0)
};

class DeepseekV3ModelImpl : public torch::nn::Module {
 public:
  explicit DeepseekV3ModelImpl(const config::Config& cfg);
  TrunkOutput forward(const torch::Tensor& input_ids_BT, const RopeAngles& rope,
                      const torch::Tensor& segment_ids_BT = {}, bool balance = true);
  void reset_parameters(double std);
  DecoderLayer layer(int64_t l) const { return layer_list_.at(l); }
  int64_t num_layers() const { return static_cast<int64_t>(layer_list_.size()); }

  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};

 private:
  std::vector<DecoderLayer> layer_list_;
};
TORCH_MODULE(DeepseekV3Model);

struct ForwardOptions {
  bool return_logits = false;   // keep the [B, T, V] logits in the output (memory!)
  bool compute_mtp = true;      // run the MTP modules (only when labels are given)
  bool compute_balance = true;  // add the balance loss (only in training and alpha > 0)
  // Rows per chunk of the vocab projection inside the losses (chunked_cross_entropy): the
  // full [B, T, V] logits are never built unless return_logits.
  int64_t loss_chunk_rows = 4096;
};

struct ForwardOutput {
  torch::Tensor loss;       // main + λ·mtp + balance (defined when labels are given)
  torch::Tensor main_loss;  // CE of logits[:, i] vs labels[:, i+1]
  std::vector<torch::Tensor> mtp_losses;  // depth k = 1..D: CE vs labels[:, i+k+1]
  torch::Tensor mtp_loss;                 // (1/D) Σ_k mtp_losses[k] (before λ)
  torch::Tensor balance_loss;             // Σ over MoE layers (0 when not computed)
  torch::Tensor logits_BTV;               // when return_logits
  torch::Tensor hidden_BTD;               // main hidden after model.norm
  torch::Tensor expert_counts_ME;         // int64 [M, E]; MTP rows are 0 when MTP did not run
  torch::Tensor num_target_tokens;        // int64 scalar: valid main-loss targets
};

// Latent KV cache for incremental decoding (SPEC 1.7): per layer the normalised latent
// [B, S_max, kv_lora_rank] and the rotated shared key [B, S_max, qk_rope_head_dim].
struct KvCache {
  std::vector<LatentKV> layers;
  torch::Tensor valid_BS;  // bool: the slot holds a real token (false for padding)
  int64_t length = 0;      // slots filled so far (all rows advance together)
  int64_t capacity() const { return valid_BS.defined() ? valid_BS.size(1) : 0; }
};

class DeepseekV3ForCausalLMImpl : public torch::nn::Module {
 public:
  // Builds, initialises (N(0, initializer_range), norms 1, bias 0 — seed with
  // torch::manual_seed first) and logs the parameter/FLOP summary line.
  explicit DeepseekV3ForCausalLMImpl(const config::Config& cfg);

  // input_ids_BT int64; labels_BT aligned with input_ids (HF convention: the model shifts),
  // kIgnoreIndex = no target; position_ids_BT default 0..T-1; segment_ids_BT confines
  // attention to equal ids (SFT sample masking), undefined = plain causal.
  ForwardOutput forward(const torch::Tensor& input_ids_BT, const torch::Tensor& labels_BT = {},
                        const torch::Tensor& position_ids_BT = {},
                        const torch::Tensor& segment_ids_BT = {},
                        const ForwardOptions& options = {});

  // log p(t_{i+1} | t_{<=i}) for i = 0..T-2: fp32 [B, T-1], differentiable. The vocab
  // projection and log-softmax run over `chunk` positions (x B rows) at a time and backward
  // recomputes them, so [B, T, V] never exists, forward or backward (losses.h). With
  // `temperature` the log-probs are those of softmax(logits / temperature).
  torch::Tensor token_logprobs(const torch::Tensor& input_ids_BT,
                               const torch::Tensor& position_ids_BT = {},
                               const torch::Tensor& segment_ids_BT = {}, int64_t chunk = 256,
                               double temperature = 1.0);

  // An empty cache for B rows and up to max_len tokens, on the model's device and dtype.
  KvCache new_kv_cache(int64_t B, int64_t max_len) const;
  // Inference step: runs input_ids_BT at cache slots length..length+T-1 (absorbed MLA over the
  // cache), stores their latents, advances cache.length, returns logits [B, T, V] of the new
  // tokens. position_ids_BT defaults to the slot index; token_valid_BT marks real tokens
  // (false = left padding: later tokens do not attend to it). Equals forward() on the same
  // tokens up to fp32 round-off. Call under torch::NoGradGuard with the model in eval().
  torch::Tensor forward_with_cache(const torch::Tensor& input_ids_BT, KvCache& cache,
                                   const torch::Tensor& position_ids_BT = {},
                                   const torch::Tensor& token_valid_BT = {});

  // Logits of hidden states (lm_head, or the tied embedding).
  torch::Tensor logits(const torch::Tensor& hidden_BTD);

  void reset_parameters();
  const config::Config& config() const { return cfg_; }
  const RotaryEmbedding& rope() const { return rope_; }
  RopeAngles rope_angles(const torch::Tensor& position_ids_BT, torch::ScalarType dtype) const;

  // MoE layers in the row order of expert_counts_ME: main layers, then MTP modules.
  std::vector<Moe> moe_layers() const;
  std::vector<std::string> moe_layer_names() const;  // e.g. "model.layers.3.mlp", "mtp.0.mlp"
  int64_t num_mtp() const { return static_cast<int64_t>(mtp_list_.size()); }
  MtpLayer mtp_layer(int64_t k) const { return mtp_list_.at(k); }  // k = 0..D-1 (depth k+1)
  torch::Tensor lm_head_weight() const;                            // [V, D]

  DeepseekV3Model model{nullptr};
  Linear lm_head{nullptr};             // empty when tie_word_embeddings
  torch::nn::ModuleList mtp{nullptr};  // our names "mtp.{k}.*"; HF "model.layers.{L+k}.*"

 private:
  config::Config cfg_;
  RotaryEmbedding rope_;
  std::vector<MtpLayer> mtp_list_;
};
TORCH_MODULE(DeepseekV3ForCausalLM);

}  // namespace moetron::model
