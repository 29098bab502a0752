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

// Whether gate_forward / gate_backward take this router: fp32 CPU logits [T, E], sigmoid scores
// (the V3 family; softmax scoring stays on ATen), a spec fused_gate accepts.
bool gate_supported(const torch::Tensor& logits_TE, const GateSpec& spec);

// fused_gate's forward one token per iteration: the same scores, selection, weights and counts as
// its ATen reference (selection ties go to the lower expert index, as in the CUDA kernel; the
// reference leaves them to torch.topk). bias_E: fp32 [E] or undefined.
FusedGateOutput gate_forward(const torch::Tensor& logits_TE, const torch::Tensor& bias_E,
                             const GateSpec& spec);

// fused_gate_backward for the same router: d logits from d topk_weight and d scores (either may
// be undefined; both undefined gives an undefined result).
torch::Tensor gate_backward(const torch::Tensor& grad_weight_TK, const torch::Tensor& grad_scores_TE,
                            const torch::Tensor& scores_TE, const torch::Tensor& topk_idx_TK,
                            const GateSpec& spec);

}  // namespace moetron::ops::cpu
