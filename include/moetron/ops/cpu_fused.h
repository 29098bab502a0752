// Fused CPU loops for the small, memory-bound steps of a CPU training step: RMSNorm forward and
// backward, and the SwiGLU elementwise step of the routed experts. On a small model each of these
// was several ATen ops (a dispatch, an allocation and often a thread-pool fork/join apiece); here
// each is one pass over the rows, split over LibTorch's intra-op threads. The arithmetic is the
// same as the ATen formulas they replace (fp32 statistics; bf16 rounding at the same points).
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <functional>

#include "moetron/ops/fused_gate.h"

namespace moetron::ops::cpu {

// Legend: N rows, D normalised width.

// Whether rms_norm_forward / rms_norm_backward take these inputs: CPU tensors, x fp32 or bf16,
// weight fp32 (the module's parameter outside a bf16 cast).
bool rms_norm_supported(const torch::Tensor& x_ND, const torch::Tensor& weight_D);

struct RmsNormForward {
  torch::Tensor y_ND;    // w ⊙ cast_x(x · r), fp32 (the weight's dtype wins the promotion)
  torch::Tensor rstd_N;  // r = (mean(x²) + eps)^-½ per row, fp32, x's leading shape
};
RmsNormForward rms_norm_forward(const torch::Tensor& x_ND, const torch::Tensor& weight_D,
                                double eps);

struct RmsNormGrads {
  torch::Tensor x_ND;      // r · (g ⊙ w − x̂ · mean(g ⊙ w ⊙ x̂)), in x's dtype
  torch::Tensor weight_D;  // Σ_rows g ⊙ x̂ (x̂ = x · r in fp32), fp32
};
RmsNormGrads rms_norm_backward(const torch::Tensor& grad_y_ND, const torch::Tensor& x_ND,
                               const torch::Tensor& rstd_N, const torch::Tensor& weight_D);

// Runs task(i) for every i in [0, n) on LibTorch's intra-op threads, each thread a contiguous
// range of tasks. Tasks run with grad mode off (thread-local state is not carried into the
// pool's threads) and inside a parallel region, so ATen ops in them run single-threaded. The
// first exception a task throws is rethrown here.
void parallel_tasks(int64_t n, const std::function<void(int64_t)>& task);

// h = silu(a) ⊙ b over n contiguous elements (single-threaded: callers split the work).
void swiglu_forward(const float* a, const float* b, float* h, int64_t n);
// db = dh ⊙ silu(a), da = dh ⊙ b ⊙ silu'(a) with silu'(a) = σ(a)(1 + a(1 − σ(a))).
void swiglu_backward(const float* dh, const float* a, const float* b, float* da, float* db,
                     int64_t n);

// ---- router (SPEC 2.2) -------------------------------------------------------------------------

// Legend: T tokens, E experts, K experts per token.

// The expert choice of fused_gate one token per iteration, for fp32 CPU scores s [T, E] (after
// the score function): the top_k experts by s + bias, within the topk_group best groups where
// the rule has groups (noaux_tc ranks groups by their two best, group_limited_greedy by their
// best), in descending order, and the assignments per expert. Equal to the ATen reference's
// top-k chain; ties go to the lower expert index, as in the CUDA kernel (torch.topk leaves them
// unspecified). bias_E: fp32 [E] or undefined.
struct GateSelection {
  torch::Tensor topk_idx_TK;  // int64 [T, K]
  torch::Tensor counts_E;     // int64 [E]
};
bool gate_select_supported(const torch::Tensor& scores_TE);
GateSelection gate_select(const torch::Tensor& scores_TE, const torch::Tensor& bias_E,
                          const GateSpec& spec);

// ---- causal attention (fp32)
// ---------------------------------------------------------------------

// Legend: G = B·H heads, T tokens, K q/k head width, V value head width.

// softmax(scale · q kᵀ) v over the causal pairs (and where allowed_BTT, bool [B, T, T], permits;
// the H = G / B heads of a sequence share its rows), one head per task, each query row seeing
// exactly keys [0, t]: no masked work. q, k [G, T, K] and v [G, T, V], fp32 CPU. The softmax
// probabilities are kept for backward in one buffer: row t of head g holds its t + 1 entries from
// g·T(T+1)/2 + t(t+1)/2. Every row must be allowed to attend to at least one key.
bool causal_attention_supported(const torch::Tensor& q_GTK, const torch::Tensor& k_GTK,
                                const torch::Tensor& v_GTV);
struct CausalAttentionForward {
  torch::Tensor o_GTV;  // [G, T, V]
  torch::Tensor probs;  // [G · T(T+1)/2]
};
CausalAttentionForward causal_attention_forward(const torch::Tensor& q_GTK,
                                                const torch::Tensor& k_GTK,
                                                const torch::Tensor& v_GTV, double scale,
                                                const torch::Tensor& allowed_BTT = {});
struct CausalAttentionGrads {
  torch::Tensor q_GTK, k_GTK, v_GTV;
};
// dV = Pᵀ dO, dS = P ⊙ (dO Vᵀ − rowsum(dO ⊙ O)), dQ = scale · dS K, dK = scale · dSᵀ Q.
CausalAttentionGrads causal_attention_backward(const torch::Tensor& grad_o_GTV,
                                               const torch::Tensor& q_GTK,
                                               const torch::Tensor& k_GTK,
                                               const torch::Tensor& v_GTV,
                                               const torch::Tensor& o_GTV,
                                               const torch::Tensor& probs, double scale);

}  // namespace moetron::ops::cpu
