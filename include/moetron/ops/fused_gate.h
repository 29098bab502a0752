// Fused router (SPEC 2.2) after the logits GEMM: scores, biased group-limited top-k, combine
// weights and per-expert counts as one op. Reference: ATen composite (the specification, equal
// to model::route()); CUDA: kernels/routing/fused_gate.cu. Backward: fused_gate_backward. On fp32
// CPU tensors the reference's node selects experts one token per iteration
// (ops::cpu::gate_select) instead of its top-k chain; the outputs are the same.
#pragma once

#include <torch/types.h>

#include "moetron/ops/impl.h"

namespace moetron::ops {

enum class GateScoring { kSigmoid, kSoftmax };
enum class GateTopk { kNoauxTc, kGreedy, kGroupLimitedGreedy };

// The routing rule (the fields of config::MoeConfig it reads, without depending on config).
struct GateSpec {
  GateScoring scoring = GateScoring::kSigmoid;
  GateTopk method = GateTopk::kNoauxTc;
  int64_t top_k = 8;
  int64_t n_group = 1;
  int64_t topk_group = 1;
  bool norm_topk_prob = true;
  double routed_scaling_factor = 1.0;
};

// Whether the rule limits the choice to the best groups (noaux_tc and group_limited_greedy with
// n_group > 1); greedy ignores groups.
bool is_grouped(const GateSpec& spec);

struct FusedGateOutput {
  torch::Tensor topk_idx_TK;     // int64 [T, K], descending selection score (s + bias)
  torch::Tensor topk_weight_TK;  // fp32 [T, K] from the unbiased s, normalised/scaled
  torch::Tensor scores_TE;       // fp32 [T, E] affinities s
  torch::Tensor counts_E;        // int64 [E] assignments per expert
};

// logits_TE: fp32 [T, E] (fp64 is accepted by the reference, for finite-difference tests);
// bias_E: fp32 [E] or undefined. Differentiable w.r.t. logits_TE through topk_weight_TK and
// scores_TE (one autograd node whose backward is fused_gate_backward); the bias is selection
// only. Impl::kCuda needs CUDA tensors, a CUDA build and a spec cuda_gate_supports() accepts.
// Ties: torch.topk's order for equal scores is unspecified; the kernel picks the lower index.
FusedGateOutput fused_gate(const torch::Tensor& logits_TE, const torch::Tensor& bias_E,
                           const GateSpec& spec, Impl impl = Impl::kReference);

// The forward alone, no autograd (what the autograd node runs).
FusedGateOutput fused_gate_forward(const torch::Tensor& logits_TE, const torch::Tensor& bias_E,
                                   const GateSpec& spec, Impl impl);

// d logits from d topk_weight (through the normalisation, the scaling and the score function)
// and d scores; either gradient may be undefined. ATen ops, on any device.
torch::Tensor fused_gate_backward(const torch::Tensor& grad_weight_TK,
                                  const torch::Tensor& grad_scores_TE,
                                  const torch::Tensor& scores_TE, const torch::Tensor& topk_idx_TK,
                                  const GateSpec& spec);

// Throws a config Error naming kernels.gate when the CUDA kernel cannot serve (n_experts, spec)
// (limits in docs/kernels.md) or when this build has no CUDA kernels.
void check_cuda_gate_supports(int64_t n_experts, const GateSpec& spec);

}  // namespace moetron::ops
