// See linear.h.
#include "moetron/model/linear.h"

#include <torch/torch.h>

#include <cmath>

#include "moetron/ops/cpu_gemm.h"

namespace moetron::model {

LinearImpl::LinearImpl(int64_t in_features, int64_t out_features) {
  weight = register_parameter("weight", torch::empty({out_features, in_features}));
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));  // torch::nn::Linear's draw
}

torch::Tensor LinearImpl::forward(const torch::Tensor& x) {
  return ops::cpu::linear(x, weight);
}

}  // namespace moetron::model
