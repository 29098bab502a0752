// Causal softmax attention of the MLA training path (SPEC 1.2, 1.9) as one op: q/k width K,
// value width V (K != V allowed), optional packing segments. Reference: an ATen composite in
// src/ops (the specification; equal to model::causal_attention with causal_segment_mask);
// CUDA: kernels/attention/mla_attention.cu (flash-style, memory linear in T). Backward:
// mla_attention_backward, itself a reference + kernel pair.
#pragma once

#include <torch/types.h>

#include "moetron/ops/impl.h"

namespace moetron::ops {

// Legend: B batch, H heads, T tokens, K q/k head width, V value head width.

// O = softmax(scale · q kᵀ over the allowed keys) v per (b, h), the softmax in fp32 (fp64 for
// fp64 inputs, reference only). Query i attends to key j iff j <= i and, when segment_ids_BT
// (integer [B, T]) is defined, segment_ids[b, j] == segment_ids[b, i]: what
// causal_attention(q, k, v, scale, causal_segment_mask(T, segment_ids)) computes.
// q_BHTK, k_BHTK [B, H, T, K], v_BHTV [B, H, T, V], any strides; the result [B, H, T, V] has
// the inputs' (common) dtype. Under CUDA autocast the inputs are first cast to the autocast
// dtype (SDPA's policy). Differentiable w.r.t. q, k, v (one autograd node, backward
// mla_attention_backward). Impl::kCuda needs CUDA tensors of fp32 / bf16 / fp16, a CUDA build
// and K, V <= kMlaAttentionMaxHeadDim (check_cuda_mla_attention_supports).
torch::Tensor mla_attention(const torch::Tensor& q_BHTK, const torch::Tensor& k_BHTK,
                            const torch::Tensor& v_BHTV, double scale,
                            const torch::Tensor& segment_ids_BT = {}, Impl impl = Impl::kReference);

// ---- the primitives (no autograd); exposed for tests and the bench ----------------------------

struct MlaAttentionForward {
  torch::Tensor o_BHTV;   // [B, H, T, V], the inputs' dtype
  torch::Tensor lse_BHT;  // fp32 [B, H, T] (fp64 for fp64 reference inputs): log Σ_j exp(s_ij)
};
MlaAttentionForward mla_attention_forward(const torch::Tensor& q_BHTK, const torch::Tensor& k_BHTK,
                                          const torch::Tensor& v_BHTV, double scale,
                                          const torch::Tensor& segment_ids_BT, Impl impl);

struct MlaAttentionGrads {
  torch::Tensor dq_BHTK, dk_BHTK, dv_BHTV;  // in the inputs' dtype
};
// FlashAttention-2's backward from the forward's O and LSE: D = rowsum(dO ∘ O),
// P = exp(scale · q kᵀ − lse) on the allowed keys, dV = Pᵀ dO, dS = P ∘ (dO vᵀ − D),
// dQ = scale · dS k, dK = scale · dSᵀ q. Deterministic in both implementations.
MlaAttentionGrads mla_attention_backward(const torch::Tensor& grad_o_BHTV,
                                         const torch::Tensor& q_BHTK, const torch::Tensor& k_BHTK,
                                         const torch::Tensor& v_BHTV, const torch::Tensor& o_BHTV,
                                         const torch::Tensor& lse_BHT, double scale,
                                         const torch::Tensor& segment_ids_BT, Impl impl);

// The kernel's head-width limit (K and V); 256 = kernels::kMlaAttentionMaxHeadDim.
inline constexpr int64_t kMlaAttentionMaxHeadDim = 256;

// Throws a config Error naming kernels.attention when the CUDA kernel cannot serve heads of
// widths (K, V) (limit above) or when this build has no CUDA kernels.
void check_cuda_mla_attention_supports(int64_t qk_head_dim, int64_t v_head_dim);

}  // namespace moetron::ops
