// RMSNorm (SPEC 1.3): fp32 statistics, cast back, weight after the cast (HF order).
#include "moetron/model/rms_norm.h"

#include <torch/torch.h>

#include "moetron/core/error.h"

namespace moetron::model {

torch::Tensor rms_norm(const torch::Tensor& x_ND, const torch::Tensor& weight_D, double eps) {
  MOETRON_CHECK(x_ND.size(-1) == weight_D.size(0), "rms_norm: expected last dim ", weight_D.size(0),
                ", got ", x_ND.size(-1));
  const auto in_dtype = x_ND.scalar_type();
  auto x32 = x_ND.to(torch::kFloat32);
  auto var_N1 = x32.pow(2).mean(-1, /*keepdim=*/true);
  auto y = (x32 * torch::rsqrt(var_N1 + eps)).to(in_dtype);
  return weight_D * y;
}

RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
}

void RMSNormImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  weight.fill_(1.0);
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x_ND) {
  return rms_norm(x_ND, weight, eps_);
}

}  // namespace moetron::model
