// RMSNorm as HF DeepseekV3RMSNorm (SPEC 1.3): normalise in fp32, cast back to the input dtype,
// then multiply by the weight (the order matters in bf16).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

namespace moetron::model {

// Legend: x_ND = any leading dims N, normalised dim D.
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x_ND);
  void reset_parameters();  // weight = 1
  double eps() const { return eps_; }

  torch::Tensor weight;  // [D]

 private:
  double eps_;
};
TORCH_MODULE(RMSNorm);

// The functional form used by the module (exposed for tests and kernels' references).
torch::Tensor rms_norm(const torch::Tensor& x_ND, const torch::Tensor& weight_D, double eps);

}  // namespace moetron::model
