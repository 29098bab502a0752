// Auxiliary-loss-free load balancing (SPEC 2.3): after each optimizer step, move every
// expert's selection bias by γ·sign(mean load − its load). Called by the trainer, never in forward.
#pragma once

#include <torch/types.h>

#include "moetron/model/model.h"

namespace moetron::model {

// Legend: M MoE layers (rows of ForwardOutput::expert_counts_ME), E routed experts.

// The step for one layer: γ·sign(mean(c) − c) in fp32, sign(0) = 0.
torch::Tensor expert_bias_delta(const torch::Tensor& counts_E, double gamma);

// counts_ME: per-layer counts summed over the step's micro-batches (and all-reduced across
// data-parallel ranks by the caller), rows in model.moe_layers() order. Updates each layer's
// e_score_correction_bias in place without autograd. gamma == 0 is a no-op; gamma > 0 on a
// model without correction bias (topk_method != noaux_tc) is a config error.
void update_expert_bias(DeepseekV3ForCausalLM& model, const torch::Tensor& counts_ME, double gamma);

}  // namespace moetron::model
