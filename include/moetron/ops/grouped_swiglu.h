// The routed experts' SwiGLU over rows grouped by expert (SPEC 2.1), the MoE layer's expert
// FFN. Reference: one ATen matmul per non-empty expert and projection (the specification);
// CUDA: each projection over all experts as one cuBLAS grouped GEMM
// (kernels/gemm/grouped_gemm.cu). The SwiGLU elementwise ops are ATen in both.
#pragma once

#include <torch/types.h>

#include <vector>

#include "moetron/ops/impl.h"

namespace moetron::ops {

// Legend: N rows (token copies grouped by expert), D hidden, I expert width, E stacked experts.

// For each row n of expert e:  a = x G_eᵀ,  b = x U_eᵀ,  h = silu(a) ⊙ b,  y = h D_eᵀ.
// x_ND [N, D] holds counts[i] rows for stacked expert first_expert + i, contiguous, in order
// (Σ counts = N; experts outside the counted range get no rows). gate_EID and up_EID [E, I, D],
// down_EDI [E, D, I], all of x's dtype and device. One autograd node, differentiable w.r.t. x
// and the three weights; experts without rows get zero weight gradients.
// Impl::kCuda: CUDA tensors of fp32, bf16 or fp16 and a CUDA build (fp32 accumulation); the
// counts are read on the host (no device sync).
torch::Tensor grouped_swiglu(const torch::Tensor& x_ND, const torch::Tensor& gate_EID,
                             const torch::Tensor& up_EID, const torch::Tensor& down_EDI,
                             const std::vector<int64_t>& counts, int64_t first_expert,
                             Impl impl = Impl::kReference);

// ---- the forward and backward without autograd (what the node runs; tests and bench) ----------

struct GroupedSwiGluForward {
  torch::Tensor y_ND;  // [N, D]
  torch::Tensor a_NI;  // x G_eᵀ (kept for backward)
  torch::Tensor b_NI;  // x U_eᵀ
  torch::Tensor h_NI;  // silu(a) ⊙ b
};
GroupedSwiGluForward grouped_swiglu_forward(const torch::Tensor& x_ND,
                                            const torch::Tensor& gate_EID,
                                            const torch::Tensor& up_EID,
                                            const torch::Tensor& down_EDI,
                                            const std::vector<int64_t>& counts,
                                            int64_t first_expert, Impl impl);

struct GroupedSwiGluGrads {
  torch::Tensor x_ND, gate_EID, up_EID, down_EDI;
};
// dh = dy D_e, dD_e = dyᵀ h, db = dh ⊙ silu(a), da = silu'(a) ⊙ dh ⊙ b, dx = da G_e + db U_e,
// dG_e = daᵀ x, dU_e = dbᵀ x; zero weight gradients for experts without rows.
GroupedSwiGluGrads grouped_swiglu_backward(
    const torch::Tensor& grad_y_ND, const torch::Tensor& x_ND, const torch::Tensor& gate_EID,
    const torch::Tensor& up_EID, const torch::Tensor& down_EDI, const GroupedSwiGluForward& forward,
    const std::vector<int64_t>& counts, int64_t first_expert, Impl impl);

// Throws a config Error naming kernels.grouped_gemm when this build has no CUDA kernels.
void check_cuda_grouped_gemm_supported();

}  // namespace moetron::ops
