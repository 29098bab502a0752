// AdamW with parameter groups (weight decay off for norms, biases and, if configured,
// embeddings), the schedule applied to every group, and gradient clipping with a finite check.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "moetron/config/config.h"

namespace moetron::optim {

enum class DecayClass { kDecay, kNorm, kBias, kEmbedding };

// Classifies a parameter by its name and rank: 1-D "...norm..." weights are norms, "....bias"
// are biases, "embed_tokens" / "lm_head" tied tables are embeddings, the rest decays.
DecayClass classify_parameter(const std::string& name, const torch::Tensor& param);

struct ParamGroups {
  std::vector<torch::Tensor> decay;
  std::vector<torch::Tensor> no_decay;
  std::vector<std::string> decay_names;
  std::vector<std::string> no_decay_names;
};

// Splits trainable parameters (requires_grad) into the two groups per OptimConfig.
ParamGroups make_param_groups(const torch::nn::Module& module, const config::OptimConfig& cfg);

// AdamW over the two groups (group 0 decays with cfg.weight_decay, group 1 has 0).
std::unique_ptr<torch::optim::AdamW> make_adamw(const torch::nn::Module& module,
                                                const config::OptimConfig& cfg);

// Sets the learning rate of every group.
void set_lr(torch::optim::Optimizer& optimizer, double lr);

struct ClipResult {
  double total_norm = 0.0;  // L2 norm of all gradients before clipping
  bool finite = true;       // false when any gradient is NaN/Inf (nothing was scaled)
};

// Global L2 norm of the gradients; scales them to max_norm when larger (max_norm <= 0: only
// measures). Non-finite norms are reported, not clipped, so the trainer can skip the step.
ClipResult clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm);
// The same given the norm (computed elsewhere, e.g. over several ranks' gradient shards).
ClipResult clip_to_norm(const std::vector<torch::Tensor>& params, double total_norm,
                        double max_norm);

}  // namespace moetron::optim
