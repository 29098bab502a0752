// Per-expert assignment counts of a top-k routing (feeds the aux-loss-free bias update and
// the load metrics). Reference: bincount; CUDA: kernels/routing/expert_counts.cu.
#pragma once

#include <torch/types.h>

#include "moetron/ops/impl.h"

namespace moetron::ops {

// topk_idx: integer tensor of any shape with values in [0, n_experts). Returns int64 [n_experts]
// on topk_idx's device. Impl::kCuda needs a CUDA tensor and a CUDA build.
torch::Tensor expert_counts(const torch::Tensor& topk_idx, int64_t n_experts,
                            Impl impl = Impl::kReference);

}  // namespace moetron::ops
