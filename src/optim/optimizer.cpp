// AdamW parameter groups and gradient clipping.
#include "moetron/optim/optimizer.h"

#include <cmath>

#include "moetron/core/error.h"

namespace moetron::optim {

DecayClass classify_parameter(const std::string& name, const torch::Tensor& param) {
  const bool ends_bias = name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
  if (ends_bias) return DecayClass::kBias;
  if (param.dim() == 1 && name.find("norm") != std::string::npos) return DecayClass::kNorm;
  if (name.find("embed_tokens") != std::string::npos) return DecayClass::kEmbedding;
  return DecayClass::kDecay;
}

ParamGroups make_param_groups(const torch::nn::Module& module, const config::OptimConfig& cfg) {
  ParamGroups groups;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    const torch::Tensor& p = item.value();
    if (!p.requires_grad()) continue;
    bool decay = true;
    switch (classify_parameter(item.key(), p)) {
      case DecayClass::kNorm:
        decay = cfg.decay_norms;
        break;
      case DecayClass::kBias:
        decay = cfg.decay_biases;
        break;
      case DecayClass::kEmbedding:
        decay = cfg.decay_embeddings;
        break;
      case DecayClass::kDecay:
        break;
    }
    (decay ? groups.decay : groups.no_decay).push_back(p);
    (decay ? groups.decay_names : groups.no_decay_names).push_back(item.key());
  }
  return groups;
}

std::unique_ptr<torch::optim::AdamW> make_adamw(const torch::nn::Module& module,
                                                const config::OptimConfig& cfg) {
  ParamGroups groups = make_param_groups(module, cfg);
  MOETRON_CHECK(!groups.decay.empty() || !groups.no_decay.empty(),
                "make_adamw: the module has no trainable parameters");
  auto options = [&](double wd) {
    return std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(cfg.lr)
                                                            .betas({cfg.beta1, cfg.beta2})
                                                            .eps(cfg.eps)
                                                            .weight_decay(wd));
  };
  // Both groups always exist (possibly empty) so their indices are stable for checkpoints.
  std::vector<torch::optim::OptimizerParamGroup> param_groups;
  param_groups.emplace_back(groups.decay, options(cfg.weight_decay));
  param_groups.emplace_back(groups.no_decay, options(0.0));
  return std::make_unique<torch::optim::AdamW>(param_groups, torch::optim::AdamWOptions(cfg.lr));
}

void set_lr(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

ClipResult clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm) {
  std::vector<torch::Tensor> norms;
  for (const auto& p : params) {
    if (p.grad().defined()) norms.push_back(p.grad().detach().to(torch::kFloat).norm(2));
  }
  if (norms.empty()) return {};
  return clip_to_norm(params, torch::stack(norms).norm(2).item<double>(), max_norm);  // 1 sync
}

ClipResult clip_to_norm(const std::vector<torch::Tensor>& params, double total_norm,
                        double max_norm) {
  ClipResult result;
  result.total_norm = total_norm;
  result.finite = std::isfinite(result.total_norm);
  if (!result.finite || max_norm <= 0 || result.total_norm <= max_norm) return result;
  const double scale = max_norm / (result.total_norm + 1e-6);
  torch::NoGradGuard no_grad;
  for (const auto& p : params) {
    if (p.grad().defined()) p.grad().mul_(scale);
  }
  return result;
}

}  // namespace moetron::optim
