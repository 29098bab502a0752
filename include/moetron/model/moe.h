// DeepSeekMoE FFN (SPEC 2): SwiGLU MLP, the router (sigmoid/softmax scoring, group-limited
// top-k, selection-only bias), stacked routed experts computed per expert group, the
// TokenDispatcher seam for expert parallelism, and the sequence-wise balance loss (SPEC 2.4).
#pragma once

#include <memory>
#include <vector>
#include "moetron/model/linear.h"

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include "moetron/config/config.h"
#include "moetron/ops/impl.h"

namespace moetron::model {

// Legend: B batch, T tokens (T = B·T_seq once flattened), D hidden, I expert width, E routed
// experts, K experts per token, G groups, N routed rows (token copies sent to experts).

// SwiGLU without bias: down(silu(gate(x)) * up(x)). Dense layers and the shared experts
// (one MLP of width moe_intermediate_size * n_shared_experts, SPEC 2.1).
class MlpImpl : public torch::nn::Module {
 public:
  MlpImpl(int64_t hidden, int64_t intermediate);
  torch::Tensor forward(const torch::Tensor& x_ND);
  void reset_parameters(double std);

  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(Mlp);

// ---- router (SPEC 2.2) ----------------------------------------------------------------------

struct GateOutput {
  torch::Tensor topk_idx_TK;     // int64, chosen with the biased score (sorted by score)
  torch::Tensor topk_weight_TK;  // fp32 combine weights from the UNBIASED affinities
  torch::Tensor scores_TE;       // fp32 affinities s (sigmoid or softmax), differentiable
  torch::Tensor counts_E;        // int64 assignments per expert when the fused gate ran, else
                                 // undefined (the MoE layer counts)
};

// The routing rule on given fp32 logits. bias_E may be undefined (no correction bias).
// noaux_tc: group score = sum of the top-2 biased scores; group_limited_greedy: max score;
// greedy: plain top-K. Dropped groups are masked with -inf (HF uses 0.0, SPEC 8.5).
// Weights: noaux_tc normalises over the K when norm_topk_prob (+1e-20 as HF) then scales by
// routed_scaling_factor; the V2 family normalises when norm_topk_prob (and K > 1), otherwise
// scales (hub V2 rule, SPEC 2.2).
GateOutput route(const torch::Tensor& logits_TE, const torch::Tensor& bias_E,
                 const config::MoeConfig& moe);

class GateImpl : public torch::nn::Module {
 public:
  GateImpl(int64_t hidden, const config::MoeConfig& moe);
  // Logits in fp32 whatever the activation dtype (HF casts both operands).
  GateOutput forward(const torch::Tensor& x_TD);
  void reset_parameters(double std);
  // Casting the model (e.g. to bf16 for inference) keeps the correction bias in fp32: its
  // γ = 1e-3 steps would vanish in bf16 (SPEC 2.3).
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Dtype dtype, bool non_blocking = false) override;
  using torch::nn::Module::to;
  // kernels.gate: kCuda routes with ops::fused_gate (one kernel after the logits GEMM, counts
  // included); kReference with route().
  void set_impl(ops::Impl impl);

  torch::Tensor weight;                   // [E, D] parameter
  torch::Tensor e_score_correction_bias;  // [E] fp32 buffer; defined only for noaux_tc

 private:
  config::MoeConfig moe_;
  ops::Impl impl_ = ops::Impl::kReference;
};
TORCH_MODULE(Gate);

// ---- dispatch seam ------------------------------------------------------------------------

// Token rows permuted to expert order plus what combine needs to undo it.
struct DispatchState {
  torch::Tensor x_ND;           // routed token copies, grouped by expert, expert-major
  std::vector<int64_t> counts;  // rows per expert in x_ND (host), contiguous groups
  int64_t first_expert = 0;     // stacked-expert index of counts[0]
  torch::Tensor token_idx_N;    // source token of each row (local dispatcher)
  torch::Tensor weight_N;       // fp32 gate weight of each row
  int64_t num_tokens = 0;       // T of the input, for combine
  std::shared_ptr<void> extra;  // dispatcher-specific state (e.g. all-to-all splits)
  torch::Tensor row_TK;         // row in x_ND of each (token, k) (local, kernels.permute: cuda)
  torch::Tensor weight_TK;      // fp32 gate weights by token (local, kernels.permute: cuda)
};

// dispatch -> experts -> combine. The MoE layer owns one; expert parallelism swaps in an
// all-to-all implementation with set_dispatcher() (DESIGN: parallelism plugs in from outside).
class TokenDispatcher {
 public:
  virtual ~TokenDispatcher() = default;
  // x_TD tokens, topk_idx_TK / topk_weight_TK from the gate, counts_E = per-expert counts of
  // topk_idx_TK on the same device (already computed for the load metrics).
  virtual DispatchState dispatch(const torch::Tensor& x_TD, const torch::Tensor& topk_idx_TK,
                                 const torch::Tensor& topk_weight_TK,
                                 const torch::Tensor& counts_E) = 0;
  // y_ND expert outputs in dispatch order -> [T, D] in y's dtype: Σ_k w_k · y (fp32 sum).
  virtual torch::Tensor combine(const torch::Tensor& y_ND, const DispatchState& state) = 0;
};

// Single process: a stable sort of the (token, k) pairs by expert, one host copy of the counts,
// index_select to permute, weighted index_add to combine. With kernels.permute: cuda the same
// grouping comes from ops::permute and combine is ops::unpermute (a deterministic fp32 sum per
// token through row_TK; weight_N is then left undefined, the weights live in weight_TK).
class LocalTokenDispatcher : public TokenDispatcher {
 public:
  DispatchState dispatch(const torch::Tensor& x_TD, const torch::Tensor& topk_idx_TK,
                         const torch::Tensor& topk_weight_TK,
                         const torch::Tensor& counts_E) override;
  torch::Tensor combine(const torch::Tensor& y_ND, const DispatchState& state) override;
  void set_permute_impl(ops::Impl impl) { permute_impl_ = impl; }
  ops::Impl permute_impl() const { return permute_impl_; }

 private:
  ops::Impl permute_impl_ = ops::Impl::kReference;
};

// ---- routed experts -------------------------------------------------------------------------

// E SwiGLU experts stored stacked (HF per-expert names come from hf_names.h).
class ExpertsImpl : public torch::nn::Module {
 public:
  ExpertsImpl(int64_t n_experts, int64_t hidden, int64_t intermediate);
  // x_ND grouped by expert (counts[i] rows for expert first_expert + i) -> y_ND, same order.
  // One autograd node (ops::grouped_swiglu): one matmul per non-empty expert and projection
  // (reference) or one cuBLAS grouped GEMM per projection over all experts (kernels.grouped_gemm:
  // cuda), the SwiGLU elementwise ops once over all rows, a hand-written backward.
  torch::Tensor forward(const torch::Tensor& x_ND, const std::vector<int64_t>& counts,
                        int64_t first_expert = 0);
  // kernels.grouped_gemm; kCuda is a config error in a build without CUDA kernels.
  void set_impl(ops::Impl impl);
  ops::Impl impl() const { return impl_; }
  void reset_parameters(double std);
  int64_t n_experts() const { return gate_proj.size(0); }  // stacked here (local under EP)

  // Expert parallelism: keep only experts [first, first + count) of the `total` stacked now
  // (the same parameter tensors, resized in place, so optimizers built later see the slices).
  void shard(int64_t first, int64_t count, int64_t total);
  // Placement of the stacked experts in the model's full expert list (0 and n_experts()
  // unless sharded). Checkpoints record it, so a layout saved at one ep loads at another.
  int64_t first_expert() const { return first_; }
  int64_t total_experts() const { return total_ < 0 ? n_experts() : total_; }

  torch::Tensor gate_proj;  // [E, I, D]
  torch::Tensor up_proj;    // [E, I, D]
  torch::Tensor down_proj;  // [E, D, I]

 private:
  int64_t first_ = 0, total_ = -1;
  ops::Impl impl_ = ops::Impl::kReference;
};
TORCH_MODULE(Experts);

// ---- the MoE layer ------------------------------------------------------------------------------

// Complementary sequence-wise balance loss (SPEC 2.4) for one layer:
// alpha · mean_b Σ_i f_i P_i with f from indicator_idx_BTK (no gradient) and P = mean_t s/Σs.
torch::Tensor sequence_balance_loss(const torch::Tensor& scores_BTE,
                                    const torch::Tensor& indicator_idx_BTK, double alpha);

struct MoeOutput {
  torch::Tensor y_BTD;
  torch::Tensor counts_E;      // int64: selected (biased) top-K assignments per expert
  torch::Tensor balance_loss;  // scalar fp32; undefined unless alpha > 0, training and asked for
};

class MoeImpl : public torch::nn::Module {
 public:
  MoeImpl(int64_t hidden, const config::MoeConfig& moe);
  // balance = false skips the balance loss (callers that will not add it to the loss).
  MoeOutput forward(const torch::Tensor& x_BTD, bool balance = true);
  void reset_parameters(double std);

  void set_dispatcher(std::shared_ptr<TokenDispatcher> dispatcher);
  TokenDispatcher& dispatcher() { return *dispatcher_; }
  // Which implementation counts experts (kernels.gate); reference by default.
  void set_counts_impl(ops::Impl impl) { counts_impl_ = impl; }
  const config::MoeConfig& moe_config() const { return moe_; }

  Gate gate{nullptr};
  Experts experts{nullptr};
  Mlp shared_experts{nullptr};  // empty when n_shared_experts == 0

 private:
  config::MoeConfig moe_;
  std::shared_ptr<TokenDispatcher> dispatcher_;
  ops::Impl counts_impl_ = ops::Impl::kReference;
};
TORCH_MODULE(Moe);

}  // namespace moetron::model
