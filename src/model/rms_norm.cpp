// RMSNorm (SPEC 1.3): fp32 statistics, cast back, weight after the cast (HF order).
#include "moetron/model/rms_norm.h"

#include <torch/torch.h>

#include "moetron/core/error.h"
#include "moetron/ops/cpu_fused.h"

namespace moetron::model {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The forward of the formula below with a hand-written backward: one autograd node instead of
// seven (pow, mean, add, rsqrt, two casts, two muls), which matters for the many small norms
// of MLA (four per layer). On CPU (fp32 or bf16 x, fp32 weight) both directions are one fused
// pass over the rows (ops/cpu_fused.h) that keeps x and the per-row r instead of x̂.
struct RmsNormFunction : public torch::autograd::Function<RmsNormFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x_ND,
                               const torch::Tensor& weight_D, double eps) {
    const bool fused = ops::cpu::rms_norm_supported(x_ND, weight_D);
    ctx->saved_data["fused"] = fused;
    if (fused) {
      auto f = ops::cpu::rms_norm_forward(x_ND, weight_D, eps);
      ctx->save_for_backward({x_ND, f.rstd_N, weight_D});
      return f.y_ND;
    }
    auto x32 = x_ND.to(torch::kFloat32);
    auto rstd_N1 = (x32 * x32).mean(-1, /*keepdim=*/true).add_(eps).rsqrt_();
    auto xhat32 = x32 * rstd_N1;
    ctx->save_for_backward({xhat32, rstd_N1, weight_D});
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x_ND.scalar_type());
    return weight_D * xhat32.to(x_ND.scalar_type());
  }

  // y = w ⊙ x̂ with x̂ = x · r, r = (mean(x²) + eps)^-½ per row, so with g = dL/dy:
  // dw = Σ_rows g ⊙ x̂;  dx = r · (g ⊙ w − x̂ · mean(g ⊙ w ⊙ x̂)). The cast before the weight
  // counts as identity for the gradient (as autograd treats it).
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    if (ctx->saved_data["fused"].toBool()) {
      auto g = ops::cpu::rms_norm_backward(grad_outputs[0], saved[0], saved[1], saved[2]);
      return {g.x_ND, g.weight_D, torch::Tensor()};
    }
    const auto& xhat32 = saved[0];
    const auto& rstd_N1 = saved[1];
    const auto& weight_D = saved[2];
    auto g32 = grad_outputs[0].to(torch::kFloat32);
    auto w32 = weight_D.to(torch::kFloat32);
    const int64_t D = xhat32.size(-1);
    auto gx_ND = g32 * xhat32;
    auto dweight_D = gx_ND.reshape({-1, D}).sum(0);
    auto row_mean_N1 = at::matmul(gx_ND, w32).unsqueeze(-1).div_(static_cast<double>(D));
    auto dx_ND = (g32 * w32).mul_(rstd_N1).sub_(xhat32 * (rstd_N1 * row_mean_N1));
    const auto x_dtype = static_cast<torch::ScalarType>(ctx->saved_data["x_dtype"].toInt());
    return {dx_ND.to(x_dtype), dweight_D.to(weight_D.scalar_type()), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor rms_norm(const torch::Tensor& x_ND, const torch::Tensor& weight_D, double eps) {
  MOETRON_CHECK(x_ND.size(-1) == weight_D.size(0), "rms_norm: expected last dim ", weight_D.size(0),
                ", got ", x_ND.size(-1));
  return RmsNormFunction::apply(x_ND, weight_D, eps);
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
