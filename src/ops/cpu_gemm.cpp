// fp32 CPU products through LibTorch's oneDNN (see cpu_gemm.h).
#include "moetron/ops/cpu_gemm.h"

#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include <string>

#include "moetron/core/env.h"
#include "moetron/core/error.h"

// ATen's oneDNN matmul (aten/src/ATen/native/mkldnn/Matmul.cpp): result = alpha · mat1 · mat2
// (+ beta · result), for 2-D or batched 3-D operands that are row-major or transposed. LibTorch
// exports it but ships no header for it; the weak declaration makes a LibTorch without it (or
// with another signature) leave it null, and the products fall back to ATen.
namespace at::native {
__attribute__((weak)) void mkldnn_matmul(const at::Tensor& mat1, const at::Tensor& mat2,
                                         const at::Tensor& result, float beta, float alpha);
}  // namespace at::native

namespace moetron::ops::cpu {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct Backend {
  bool onednn = false;
  std::string name;
};

const Backend& backend() {
  static const Backend b = [] {
    Backend r;
    const auto choice = env::get("MOETRON_CPU_GEMM").value_or("onednn");
    MOETRON_CHECK_CONFIG(choice == "onednn" || choice == "aten",
                         "MOETRON_CPU_GEMM: expected onednn or aten, got '", choice, "'");
    if (choice == "aten") {
      r.name = "aten (MOETRON_CPU_GEMM=aten)";
    } else if (&at::native::mkldnn_matmul == nullptr) {
      r.name = "aten (this LibTorch exports no oneDNN matmul)";
    } else if (!at::hasMKLDNN()) {
      r.name = "aten (this LibTorch is built without oneDNN)";
    } else {
      r.onednn = true;
      r.name = "onednn";
    }
    return r;
  }();
  return b;
}

constexpr int64_t kOnednnMinMacs = int64_t{1} << 20;

bool takes_onednn(const torch::Tensor& c, const torch::Tensor& a, const torch::Tensor& b) {
  if (!backend().onednn) return false;
  for (const auto* t : {&a, &b, &c}) {
    if (!t->device().is_cpu() || t->scalar_type() != torch::kFloat32 || t->numel() == 0) {
      return false;
    }
  }
  if (a.dim() != c.dim() || b.dim() != c.dim() || (c.dim() != 2 && c.dim() != 3)) return false;
  // Below ~1M multiply-adds oneDNN's per-call cost (primitive lookup, memory descriptors)
  // outweighs its faster kernel: a 256 x 64 x 32 product takes 9 µs through MKL and 15 µs through
  // oneDNN here, a 256 x 128 x 64 one 22 µs and 16 µs.
  const int64_t macs = c.numel() * a.size(-1);
  return macs >= kOnednnMinMacs;
}

void check_shapes(const torch::Tensor& c, const torch::Tensor& a, const torch::Tensor& b) {
  const bool two = a.dim() == 2 && b.dim() == 2 && c.dim() == 2;
  const bool three = a.dim() == 3 && b.dim() == 3 && c.dim() == 3 && a.size(0) == b.size(0) &&
                     a.size(0) == c.size(0);
  MOETRON_CHECK((two || three) && a.size(-1) == b.size(-2) && c.size(-2) == a.size(-2) &&
                    c.size(-1) == b.size(-1),
                "cpu::gemm_out: expected [M, K] · [K, N] -> [M, N] (or batches of them), got ",
                a.sizes(), " · ", b.sizes(), " -> ", c.sizes());
}

struct LinearFn : public torch::autograd::Function<LinearFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& weight) {
    const int64_t I = weight.size(1), O = weight.size(0);
    auto x_NI = x.reshape({-1, I}).contiguous();
    auto w = weight.contiguous();
    ctx->save_for_backward({x_NI, w});
    auto shape = x.sizes().vec();
    shape.back() = O;
    auto y_NO = torch::empty({x_NI.size(0), O}, x_NI.options());
    gemm_out(y_NO, x_NI, w.t());
    return y_NO.view(shape);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto& x_NI = saved[0];
    const auto& w = saved[1];
    const int64_t O = w.size(0);
    auto dy_NO = grads[0].reshape({-1, O}).contiguous();
    torch::Tensor dx, dw;
    if (ctx->needs_input_grad(0)) {
      auto shape = grads[0].sizes().vec();
      shape.back() = w.size(1);
      dx = gemm(dy_NO, w).view(shape);  // dx = dy W
    }
    if (ctx->needs_input_grad(1)) dw = gemm(dy_NO.t(), x_NI);  // dW = dyᵀ x
    return {dx, dw};
  }
};

}  // namespace

bool onednn_gemm_enabled() {
  return backend().onednn;
}

std::string gemm_backend() {
  return backend().name;
}

void gemm_out(const torch::Tensor& c, const torch::Tensor& a, const torch::Tensor& b,
              bool accumulate, float alpha) {
  check_shapes(c, a, b);
  const float beta = accumulate ? 1.0f : 0.0f;
  if (takes_onednn(c, a, b)) {
    if (c.is_contiguous()) {
      at::native::mkldnn_matmul(a, b, c, beta, alpha);
    } else {
      auto tmp = accumulate ? c.contiguous() : torch::empty(c.sizes(), c.options());
      at::native::mkldnn_matmul(a, b, tmp, beta, alpha);
      c.copy_(tmp);
    }
    return;
  }
  auto out = c;  // the out= overloads take a non-const reference
  // beta 0: ATen ignores out's old values (no NaN from uninitialised memory).
  if (c.dim() == 2) {
    at::addmm_out(out, out, a, b, beta, alpha);
  } else {
    at::baddbmm_out(out, out, a, b, beta, alpha);
  }
}

torch::Tensor gemm(const torch::Tensor& a, const torch::Tensor& b, float alpha) {
  MOETRON_CHECK(a.dim() == b.dim() && (a.dim() == 2 || a.dim() == 3),
                "cpu::gemm: expected two matrices or two batches, got ", a.sizes(), " and ",
                b.sizes());
  auto sizes = a.sizes().vec();
  sizes.back() = b.size(-1);
  auto c = torch::empty(sizes, a.options().dtype(at::result_type(a, b)));
  gemm_out(c, a, b, /*accumulate=*/false, alpha);
  return c;
}

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& weight) {
  MOETRON_CHECK(weight.dim() == 2 && x.dim() >= 1 && x.size(-1) == weight.size(1),
                "linear: expected x [..., ", weight.dim() == 2 ? weight.size(1) : -1,
                "] for a weight [O, I], got ", x.sizes(), " and ", weight.sizes());
  const bool onednn = backend().onednn && x.device().is_cpu() && weight.device().is_cpu() &&
                      x.scalar_type() == torch::kFloat32 &&
                      weight.scalar_type() == torch::kFloat32 && x.numel() > 0 &&
                      !at::autocast::is_autocast_enabled(at::kCPU);
  if (!onednn) return torch::nn::functional::linear(x, weight);
  return LinearFn::apply(x, weight);
}

}  // namespace moetron::ops::cpu
