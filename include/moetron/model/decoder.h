// One pre-norm decoder block (SPEC 1.3, 2.1): x + MLA(norm(x)), then x + FFN(norm(x)) with a
// dense SwiGLU or a DeepSeekMoE FFN; and the MTP module built on that block (SPEC 3.1).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>
#include "moetron/model/linear.h"

#include "moetron/config/config.h"
#include "moetron/model/mla.h"
#include "moetron/model/moe.h"
#include "moetron/model/rms_norm.h"
#include "moetron/model/rope.h"

namespace moetron::model {

// Legend: B batch, T tokens, D hidden, E routed experts.

// Layer l is MoE iff n_routed_experts is set, l >= first_k_dense_replace and
// l % moe_layer_freq == 0 (SPEC 2.1, hub rule). MTP depth k uses index num_hidden_layers+k-1.
bool is_moe_layer(const config::Config& cfg, int64_t layer_idx);

struct LayerOutput {
  torch::Tensor h_BTD;
  torch::Tensor counts_E;      // MoE layers only
  torch::Tensor balance_loss;  // MoE layers, alpha > 0 and training only
};

class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(const config::Config& cfg, int64_t layer_idx);
  // balance = false: MoE layers skip their balance loss (ForwardOptions::compute_balance).
  LayerOutput forward(const torch::Tensor& h_BTD, const RopeAngles& rope,
                      const torch::Tensor& segment_ids_BT = {}, bool balance = true);
  // Inference with a latent KV cache (SPEC 1.7-1.8): writes the new tokens' latent entries into
  // cache slots [start, start + T) and attends over slots [0, start + T) with the absorbed path.
  // allowed_BTS: bool [B, T, start + T].
  LayerOutput forward_cached(const torch::Tensor& h_BTD, const RopeAngles& rope, LatentKV& cache,
                             int64_t start, const torch::Tensor& allowed_BTS);
  void reset_parameters(double std);
  bool is_moe() const { return !moe.is_empty(); }
  int64_t layer_idx() const { return layer_idx_; }

  RMSNorm input_layernorm{nullptr};
  MlaAttention self_attn{nullptr};
  RMSNorm post_attention_layernorm{nullptr};
  Mlp dense{nullptr};  // registered as "mlp" when the layer is dense
  Moe moe{nullptr};    // registered as "mlp" when the layer is MoE

 private:
  int64_t layer_idx_;
};
TORCH_MODULE(DecoderLayer);

// `shared_head.norm` of an MTP module (the head itself is the shared lm_head).
class SharedHeadImpl : public torch::nn::Module {
 public:
  SharedHeadImpl(int64_t hidden, double eps);
  RMSNorm norm{nullptr};
};
TORCH_MODULE(SharedHead);

// MTP module k (SPEC 3.1): a decoder block whose parameters sit beside enorm, hnorm, eh_proj
// and shared_head.norm, so names match the released `model.layers.{L+k-1}.*` tensors.
class MtpLayerImpl : public DecoderLayerImpl {
 public:
  MtpLayerImpl(const config::Config& cfg, int64_t depth);  // depth k >= 1
  // h_prev_BTD: representation of depth k-1 at positions 0..T-1 (T = T_in - k);
  // emb_BTD: Emb(t_{i+k}) for the same positions. Input = eh_proj([enorm(emb) ; hnorm(h)]),
  // embedding FIRST as in the released weights (SPEC 3.1, 8.10). Returns h^k (pre-norm).
  LayerOutput forward_mtp(const torch::Tensor& h_prev_BTD, const torch::Tensor& emb_BTD,
                          const RopeAngles& rope, const torch::Tensor& segment_ids_BT = {},
                          bool balance = true);
  void reset_parameters(double std);
  int64_t depth() const { return depth_; }

  RMSNorm enorm{nullptr};
  RMSNorm hnorm{nullptr};
  Linear eh_proj{nullptr};  // [D, 2D]
  SharedHead shared_head{nullptr};

 private:
  int64_t depth_;
};
TORCH_MODULE(MtpLayer);

}  // namespace moetron::model
