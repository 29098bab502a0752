// Aux-loss-free bias update (SPEC 2.3): sign rule, fp32, no gradient, once per optimizer step.
#include "moetron/model/bias_update.h"

#include <torch/torch.h>

#include "moetron/core/error.h"

namespace moetron::model {

torch::Tensor expert_bias_delta(const torch::Tensor& counts_E, double gamma) {
  auto c = counts_E.to(torch::kFloat32);
  return gamma * torch::sign(c.mean() - c);  // torch::sign(0) == 0
}

void update_expert_bias(DeepseekV3ForCausalLM& model, const torch::Tensor& counts_ME,
                        double gamma) {
  if (gamma == 0.0) return;
  MOETRON_CHECK_CONFIG(gamma > 0, "moe.bias_update_speed must be >= 0, got ", gamma);
  auto layers = model->moe_layers();
  MOETRON_CHECK(counts_ME.dim() == 2 && counts_ME.size(0) == static_cast<int64_t>(layers.size()),
                "update_expert_bias: expected counts [", layers.size(), ", E] (one row per MoE ",
                "layer), got ", counts_ME.sizes());
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < layers.size(); ++i) {
    auto& bias_E = layers[i]->gate->e_score_correction_bias;
    MOETRON_CHECK_CONFIG(bias_E.defined(),
                         "aux-loss-free balancing needs moe.topk_method=noaux_tc (this model has "
                         "no e_score_correction_bias); set moe.bias_update_speed=0");
    MOETRON_CHECK(counts_ME.size(1) == bias_E.size(0), "update_expert_bias: expected ",
                  bias_E.size(0), " experts per row, got ", counts_ME.size(1));
    auto delta_E = expert_bias_delta(counts_ME[static_cast<int64_t>(i)], gamma);
    bias_E.add_(delta_E.to(bias_E.device()));
  }
}

}  // namespace moetron::model
