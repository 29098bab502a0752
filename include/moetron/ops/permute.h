// Token permute / unpermute: the stable grouping of (token, k) pairs by expert that the local
// dispatcher makes, the row gather into expert order and the weighted fp32 combine back.
// Reference: ATen composites (the specification); CUDA: kernels/permute/permute.cu.
#pragma once

#include <torch/types.h>

#include "moetron/ops/impl.h"

namespace moetron::ops {

// The grouping of N = T·K pairs by expert, stable in pair order t·K + k (rows of one expert
// keep token order, as the dispatcher's stable sort).
struct PermuteIndex {
  torch::Tensor token_idx_N;  // int64 [N] source token of each row
  torch::Tensor row_TK;       // int64 [T, K] row of each (token, k): the inverse of the grouping
  torch::Tensor counts_E;     // int64 [E] rows per expert (exclusive prefix sum = first rows)
};

struct PermuteOutput {
  torch::Tensor x_ND;  // rows grouped by expert, differentiable w.r.t. x_TD
  PermuteIndex index;
};

// x_TD [T, D] (fp32/bf16/fp16 on CUDA; any dtype for the reference), topk_idx_TK int64 [T, K]
// with values in [0, n_experts). Backward: dx[t] = Σ_k dx_N[row(t, k)] (the unweighted
// unpermute). Impl::kCuda needs CUDA tensors and a CUDA build; no host sync.
PermuteOutput permute(const torch::Tensor& x_TD, const torch::Tensor& topk_idx_TK,
                      int64_t n_experts, Impl impl = Impl::kReference);

// y_ND [N, D] rows in permuted order, row_TK from permute, weight_TK fp32 [T, K] or undefined
// (weight 1). out[t] = Σ_k w[t, k]·y[row(t, k)] summed in fp32 in k order (deterministic),
// rounded once to y's dtype (fp64 stays fp64 in the reference). Differentiable w.r.t. y_ND and
// weight_TK: dy[row(t, k)] = w[t, k]·dout[t], dw[t, k] = <dout[t], y[row(t, k)]>.
// row_TK must map onto all N rows (what permute returns).
torch::Tensor unpermute(const torch::Tensor& y_ND, const torch::Tensor& row_TK,
                        const torch::Tensor& weight_TK, Impl impl = Impl::kReference);

// ---- the primitives (no autograd), each a reference and a kernel; exposed for tests/bench ----

PermuteIndex permute_index(const torch::Tensor& topk_idx_TK, int64_t n_experts, Impl impl);
// x_TD.index_select(0, index_N) (a zero row for an index outside [0, T) on CUDA).
torch::Tensor gather_rows(const torch::Tensor& x_TD, const torch::Tensor& index_N, Impl impl);
// out[t] = Σ_k w[t, k]·y[row(t, k)] as unpermute, without autograd.
torch::Tensor combine_rows(const torch::Tensor& y_ND, const torch::Tensor& row_TK,
                           const torch::Tensor& weight_TK, Impl impl);
struct CombineGrads {
  torch::Tensor grad_y_ND;       // [N, D] in y's dtype
  torch::Tensor grad_weight_TK;  // fp32 [T, K]; undefined unless requested
};
CombineGrads combine_rows_backward(const torch::Tensor& grad_out_TD, const torch::Tensor& y_ND,
                                   const torch::Tensor& row_TK, const torch::Tensor& weight_TK,
                                   bool need_grad_weight, Impl impl);

}  // namespace moetron::ops
