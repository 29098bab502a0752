// A bias-free linear layer, HF's nn.Linear(bias=False): parameter "weight" [out, in], y = x Wᵀ.
// Its fp32 CPU products go through oneDNN (ops/cpu_gemm.h); elsewhere it is
// torch::nn::functional::linear. Initialised as torch::nn::Linear (Kaiming uniform, a = √5), so a
// seed gives the same weights as a torch::nn::Linear would.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

namespace moetron::model {

class LinearImpl : public torch::nn::Module {
 public:
  LinearImpl(int64_t in_features, int64_t out_features);
  torch::Tensor forward(const torch::Tensor& x);

  torch::Tensor weight;  // [out, in]
};
TORCH_MODULE(Linear);

}  // namespace moetron::model
