// Fused CPU loops (ops/cpu_fused.h): RMSNorm forward and backward against the formula through
// autograd in fp64 (fp32 and bf16 inputs, rows split over threads, leading dims), the SwiGLU step
// against ATen's silu in fp64 over the whole float range, and the task runner's contract (every
// index once, grad mode off, exceptions rethrown).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ATen/Parallel.h>

#include <atomic>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "moetron/ops/cpu_fused.h"

namespace moetron::ops::cpu {
namespace {

// Legend: N rows, D normalised width.

double max_rel_diff(const torch::Tensor& got, const torch::Tensor& want) {
  auto g = got.to(torch::kFloat64), w = want.to(torch::kFloat64);
  return ((g - w).abs() / (w.abs() + 1e-3)).max().item<double>();
}

// The formula in fp64 and its autograd gradients: y = w ⊙ x / sqrt(mean(x²) + eps).
struct Reference {
  torch::Tensor y, dx, dw;
};
Reference formula(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& g,
                  double eps) {
  auto xd = x.to(torch::kFloat64).requires_grad_(true);
  auto wd = w.to(torch::kFloat64).requires_grad_(true);
  auto y = wd * (xd * torch::rsqrt(xd.pow(2).mean(-1, true) + eps));
  y.backward(g.to(torch::kFloat64));
  return {y.detach(), xd.grad(), wd.grad()};
}

class ThreadCount : public ::testing::Test {
 protected:
  void SetUp() override {
    saved_ = at::get_num_threads();
    at::set_num_threads(2);  // the row split runs even on a one-core runner
  }
  void TearDown() override { at::set_num_threads(saved_); }
  int saved_ = 1;
};

using CpuRmsNorm = ThreadCount;

TEST_F(CpuRmsNorm, Fp32MatchesTheFormulaInDouble) {
  torch::manual_seed(0);
  const double eps = 1e-6;
  // 3 x 700 rows of 64: more rows than one task takes, so the rows split over threads.
  for (const auto& shape : std::vector<std::vector<int64_t>>{{3, 700, 64}, {5, 24}, {1, 1}}) {
    const int64_t D = shape.back();
    auto x = torch::randn(shape) * 3;
    auto w = torch::rand({D}) + 0.5;
    auto g = torch::randn(shape);
    auto f = rms_norm_forward(x, w, eps);
    auto grads = rms_norm_backward(g, x, f.rstd_N, w);
    const auto want = formula(x, w, g, eps);
    EXPECT_EQ(f.y_ND.sizes(), x.sizes());
    EXPECT_EQ(f.rstd_N.sizes(), x.sizes().slice(0, x.dim() - 1));
    EXPECT_LT(max_rel_diff(f.y_ND, want.y), 1e-5) << shape;
    EXPECT_LT(max_rel_diff(grads.x_ND, want.dx), 1e-4) << shape;
    // dw sums N terms in fp32: bounded relative to the sum of their sizes, not to dw itself.
    auto xhat = x * torch::rsqrt(x.pow(2).mean(-1, true) + eps);
    auto dw_scale = (g * xhat).abs().reshape({-1, D}).sum(0).to(torch::kFloat64);
    EXPECT_LT(
        ((grads.weight_D.to(torch::kFloat64) - want.dw).abs() / dw_scale).max().item<double>(),
        1e-5)
        << shape;
    EXPECT_EQ(grads.x_ND.scalar_type(), torch::kFloat32);
    EXPECT_EQ(grads.weight_D.scalar_type(), torch::kFloat32);
  }
}

// bf16 x: x̂ is rounded to bf16 before the fp32 weight (HF's order), the output is fp32, and dx
// comes back in bf16.
TEST_F(CpuRmsNorm, Bf16RoundsBeforeTheWeight) {
  torch::manual_seed(1);
  const double eps = 1e-6;
  auto x = (torch::randn({600, 48}) * 2).to(torch::kBFloat16);
  auto w = torch::rand({48}) + 0.5;
  auto g = torch::randn({600, 48});
  auto f = rms_norm_forward(x, w, eps);
  ASSERT_EQ(f.y_ND.scalar_type(), torch::kFloat32);
  auto x32 = x.to(torch::kFloat32);
  auto xhat = (x32 * torch::rsqrt(x32.pow(2).mean(-1, true) + eps)).to(torch::kBFloat16);
  const auto want = w * xhat.to(torch::kFloat32);
  // The row statistic may differ from ATen's in its last bit, which can move a rounding to the
  // neighbouring bf16 value in rare elements: no element is further than that.
  EXPECT_LT(max_rel_diff(f.y_ND, want), 1.0 / 128);
  EXPECT_GT(torch::eq(f.y_ND, want).to(torch::kFloat64).mean().item<double>(), 0.99);
  auto grads = rms_norm_backward(g, x, f.rstd_N, w);
  EXPECT_EQ(grads.x_ND.scalar_type(), torch::kBFloat16);
  const auto ref = formula(x32, w, g, eps);
  EXPECT_LT(max_rel_diff(grads.x_ND, ref.dx), 1.0 / 64);  // dx rounded to bf16
  EXPECT_LT(max_rel_diff(grads.weight_D, ref.dw), 1e-2);  // x̂ unrounded, fp32 sums
}

TEST_F(CpuRmsNorm, SupportedInputsAndErrors) {
  EXPECT_TRUE(rms_norm_supported(torch::zeros({2, 4}), torch::ones({4})));
  EXPECT_TRUE(rms_norm_supported(torch::zeros({2, 4}, torch::kBFloat16), torch::ones({4})));
  EXPECT_FALSE(rms_norm_supported(torch::zeros({2, 4}, torch::kFloat64), torch::ones({4})));
  EXPECT_FALSE(rms_norm_supported(torch::zeros({2, 4}), torch::ones({4}, torch::kBFloat16)));
  EXPECT_FALSE(rms_norm_supported(torch::zeros({2, 4}), torch::ones({3})));
  try {
    rms_norm_forward(torch::zeros({2, 4}), torch::ones({3}), 1e-6);
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("cpu::rms_norm_forward"), std::string::npos) << e.what();
  }
}

using CpuSwiGlu = ThreadCount;

// The element furthest from `want` in ulps, for failure messages.
std::string worst(const torch::Tensor& got, const torch::Tensor& want, const torch::Tensor& scale,
                  const torch::Tensor& a) {
  auto g = got.to(torch::kFloat64);
  auto ulps = (g - want).abs() / (scale.abs().clamp_min(1e-30) * 1.2e-7);
  const int64_t i = ulps.argmax().item<int64_t>();
  std::ostringstream os;
  os << "worst at a = " << a[i].item<float>() << ": got " << g[i].item<double>() << ", want "
     << want[i].item<double>() << " (" << ulps[i].item<double>() << " ulp)";
  return os.str();
}

// Over the whole float range (including where e^-a overflows), against ATen's silu in fp64.
TEST_F(CpuSwiGlu, StepAndGradientsMatchAtenInDouble) {
  torch::manual_seed(2);
  auto a = torch::cat({torch::randn({4000}) * 4, torch::linspace(-120, 120, 241),
                       torch::tensor({0.0f, -0.0f, 1e-30f, -1e-30f, 3.4e38f, -3.4e38f})});
  auto b = torch::randn(a.sizes());
  auto dh = torch::randn(a.sizes());
  const int64_t n = a.numel();
  auto h = torch::empty_like(a), da = torch::empty_like(a), db = torch::empty_like(a);
  swiglu_forward(a.data_ptr<float>(), b.data_ptr<float>(), h.data_ptr<float>(), n);
  swiglu_backward(dh.data_ptr<float>(), a.data_ptr<float>(), b.data_ptr<float>(),
                  da.data_ptr<float>(), db.data_ptr<float>(), n);
  auto ad = a.to(torch::kFloat64).requires_grad_(true), bd = b.to(torch::kFloat64);
  auto bdg = bd.clone().requires_grad_(true);
  auto hd = torch::silu(ad) * bdg;
  hd.backward(dh.to(torch::kFloat64));
  // Within 4 ulp of `scale`, the size of the terms. For da that is |dh b| s (1 + |a|): silu'(a) =
  // s(1 + a(1 - s)) cancels to 0 near a = -1.28, and 1 - s carries s's rounding (an ulp of 1)
  // times |a|, in ATen's fp32 formula as in ours. Tiny values compare absolutely.
  auto close = [](const torch::Tensor& got, const torch::Tensor& want, const torch::Tensor& scale) {
    auto g = got.to(torch::kFloat64);
    return ((g - want).abs() <= scale.abs().clamp_min(1e-30) * 4.8e-7).all().item<bool>();
  };
  auto s = torch::sigmoid(a.to(torch::kFloat64));
  auto da_terms = (dh.to(torch::kFloat64) * bd).abs() * s * (1 + a.to(torch::kFloat64).abs());
  EXPECT_TRUE(close(h, hd.detach(), hd.detach())) << worst(h, hd.detach(), hd.detach(), a);
  EXPECT_TRUE(close(db, bdg.grad(), bdg.grad())) << worst(db, bdg.grad(), bdg.grad(), a);
  EXPECT_TRUE(close(da, ad.grad(), da_terms)) << worst(da, ad.grad(), da_terms, a);
  EXPECT_FALSE(torch::isnan(h).any().item<bool>() || torch::isnan(da).any().item<bool>());
}

TEST(CpuParallelTasks, RunsEveryTaskOnceWithGradModeOffAndRethrows) {
  const int saved = at::get_num_threads();
  at::set_num_threads(2);
  std::vector<std::atomic<int>> runs(37);
  std::atomic<bool> grad_on{false};
  parallel_tasks(37, [&](int64_t i) {
    runs[i]++;
    if (torch::GradMode::is_enabled()) grad_on = true;
  });
  for (const auto& r : runs) EXPECT_EQ(r.load(), 1);
  EXPECT_FALSE(grad_on.load());
  parallel_tasks(0, [](int64_t) { FAIL() << "no task expected"; });
  EXPECT_THROW(parallel_tasks(8,
                              [](int64_t i) {
                                if (i == 5) throw std::runtime_error("task 5");
                              }),
               std::runtime_error);
  at::set_num_threads(saved);
}

}  // namespace
}  // namespace moetron::ops::cpu
