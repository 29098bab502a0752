// fp32 CPU products (ops/cpu_gemm.h): oneDNN is the backend in this build; products of every
// operand layout the model uses (row-major, transposed views, batches, strided outputs), with and
// without accumulation and scaling, equal fp64 to fp32 round-off, above and below the size where
// oneDNN takes over; linear's forward and gradients equal fp64 autograd; other dtypes, CPU
// autocast and bad shapes take their documented paths.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ATen/autocast_mode.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "moetron/core/env.h"
#include "moetron/ops/cpu_gemm.h"

namespace moetron::ops::cpu {
namespace {

// Relative to the size of the summed terms (|a| · |b|), the bound fp32 sums are held to.
double rel_err(const torch::Tensor& got, const torch::Tensor& a, const torch::Tensor& b,
               const torch::Tensor& want) {
  auto scale = torch::matmul(a.abs().to(torch::kFloat64), b.abs().to(torch::kFloat64));
  return ((got.to(torch::kFloat64) - want).abs() / (scale + 1e-30)).max().item<double>();
}

TEST(CpuGemm, OneDnnIsTheBackendHere) {
  if (env::get("MOETRON_CPU_GEMM")) GTEST_SKIP() << "MOETRON_CPU_GEMM is set";
  EXPECT_TRUE(onednn_gemm_enabled()) << gemm_backend();
  EXPECT_EQ(gemm_backend(), "onednn");
}

TEST(CpuGemm, EveryLayoutEqualsDoubleToRoundOff) {
  torch::manual_seed(0);
  // Small (ATen) and large (oneDNN) products.
  for (const int64_t M : {8, 300}) {
    const int64_t K = 96, N = 80;
    auto a = torch::randn({M, K}), b = torch::randn({K, N});
    const auto want = torch::mm(a.to(torch::kFloat64), b.to(torch::kFloat64));
    EXPECT_LT(rel_err(gemm(a, b), a, b, want), 1e-6) << M;
    // Transposed views of both operands.
    auto at_ = a.t().contiguous().t(), bt = b.t().contiguous().t();
    EXPECT_LT(rel_err(gemm(at_, bt), a, b, want), 1e-6) << M;
    // Scaled, and accumulated into a strided slice of a larger buffer.
    EXPECT_LT(rel_err(gemm(a, b, 0.5f), a, b, want * 0.5), 1e-6) << M;
    auto buf = torch::ones({M, N + 7});
    auto c = buf.narrow(1, 3, N);
    gemm_out(c, a, b, /*accumulate=*/true, 2.0f);
    EXPECT_LT(rel_err(c, a, b, want * 2 + 1), 1e-6) << M;
    EXPECT_TRUE(torch::equal(buf.narrow(1, 0, 3), torch::ones({M, 3}))) << M;
    EXPECT_TRUE(torch::equal(buf.narrow(1, N + 3, 4), torch::ones({M, 4}))) << M;
    // Without accumulate the old contents (here NaN) are ignored.
    auto d = torch::full({M, N}, std::numeric_limits<float>::quiet_NaN());
    gemm_out(d, a, b);
    EXPECT_LT(rel_err(d, a, b, want), 1e-6) << M;
  }
  // Batches: [B, M, K] · [B, K, N] with a transposed second operand.
  auto a = torch::randn({4, 128, 24}), b = torch::randn({4, 256, 24}).transpose(1, 2);
  const auto want = torch::bmm(a.to(torch::kFloat64), b.to(torch::kFloat64));
  EXPECT_LT(rel_err(gemm(a, b), a, b, want), 1e-6);
}

TEST(CpuGemm, OtherDtypesTakeAten) {
  auto a = torch::randn({64, 64}, torch::kFloat64), b = torch::randn({64, 64}, torch::kFloat64);
  EXPECT_TRUE(torch::allclose(gemm(a, b), torch::mm(a, b), 0, 1e-12));
  auto h = a.to(torch::kBFloat16), g = b.to(torch::kBFloat16);
  EXPECT_TRUE(torch::equal(gemm(h, g), torch::mm(h, g)));
}

TEST(CpuGemm, BadShapesAreClearErrors) {
  auto c = torch::empty({4, 5});
  try {
    gemm_out(c, torch::randn({4, 3}), torch::randn({2, 5}));
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("cpu::gemm_out"), std::string::npos) << e.what();
  }
  EXPECT_THROW(gemm(torch::randn({2, 3}), torch::randn({2, 3, 4})), std::exception);
}

TEST(CpuLinear, ForwardAndGradientsEqualDoubleAutograd) {
  torch::manual_seed(1);
  auto x = torch::randn({3, 150, 64}).requires_grad_(true);
  auto w = (torch::randn({96, 64}) * 0.1).requires_grad_(true);
  auto g = torch::randn({3, 150, 96});
  auto y = cpu::linear(x, w);
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{3, 150, 96}));
  y.backward(g);
  auto xd = x.detach().to(torch::kFloat64).requires_grad_(true);
  auto wd = w.detach().to(torch::kFloat64).requires_grad_(true);
  auto yd = torch::nn::functional::linear(xd, wd);
  yd.backward(g.to(torch::kFloat64));
  auto close = [](const torch::Tensor& got, const torch::Tensor& want, double tol) {
    return ((got.to(torch::kFloat64) - want).abs().max().item<double>() <=
            tol * want.abs().max().item<double>());
  };
  EXPECT_TRUE(close(y, yd.detach(), 1e-5));
  EXPECT_TRUE(close(x.grad(), xd.grad(), 1e-5));
  EXPECT_TRUE(close(w.grad(), wd.grad(), 1e-5));
  // Only the weight needs a gradient (an embedding-free input).
  auto x2 = torch::randn({200, 64});
  auto w2 = w.detach().clone().requires_grad_(true);
  cpu::linear(x2, w2).sum().backward();
  EXPECT_TRUE(w2.grad().defined());
}

TEST(CpuLinear, AutocastAndOtherDtypesKeepATensSemantics) {
  auto x = torch::randn({300, 64}), w = torch::randn({96, 64});
  {
    at::autocast::set_autocast_enabled(at::kCPU, true);
    at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
    auto y = cpu::linear(x, w);
    at::autocast::set_autocast_enabled(at::kCPU, false);
    at::autocast::clear_cache();
    EXPECT_EQ(y.scalar_type(), torch::kBFloat16);  // autocast cast the product, as F::linear
  }
  auto xd = x.to(torch::kFloat64), wd = w.to(torch::kFloat64);
  EXPECT_TRUE(torch::equal(cpu::linear(xd, wd), torch::nn::functional::linear(xd, wd)));
  try {
    cpu::linear(torch::randn({4, 5}), torch::randn({3, 4}));
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("linear: expected x"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moetron::ops::cpu
