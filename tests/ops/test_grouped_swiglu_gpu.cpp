// GPU: grouped_swiglu's cuBLAS grouped GEMM equals the reference (per-expert ATen matmuls) on
// the same device, forward and backward, over E x D x I with skewed counts and empty experts, in
// fp32 and bf16; autograd; the CPU reference against the GPU kernel in fp32; no rows, one
// expert, one row each, odd sizes, fp16; the Experts module's CUDA path under bf16 autocast.
// Skipped without a CUDA device or CUDA kernels.
#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "moetron/core/error.h"
#include "moetron/model/moe.h"
#include "moetron/ops/grouped_swiglu.h"

namespace moetron::ops {
namespace {

// Legend: N rows, D hidden, I expert width, E stacked experts.

#define SKIP_WITHOUT_CUDA() \
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device or no CUDA kernels in this build"

// max |a - b| relative to max |b|, in fp32 on b's device (the weight gradients of the large
// sweep cases hold a billion elements: no host copies).
double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  if (b.numel() == 0) return 0.0;
  auto y = b.to(torch::kFloat32);
  auto x = a.to(y.device()).to(torch::kFloat32);
  const double scale = std::max(y.abs().max().item<double>(), 1e-30);
  return (x - y).abs().max().item<double>() / scale;
}

// fp32: the same products summed in another order; bf16 / fp16: one rounding of a, b, h and y
// may land on the other side.
double tol(torch::ScalarType t) {
  return t == torch::kFloat32 ? 3e-5 : 3e-2;
}

int64_t sum(const std::vector<int64_t>& v) {
  int64_t s = 0;
  for (const int64_t n : v) s += n;
  return s;
}

// N rows over E experts: every 4th expert and the last get none, one expert a third of them,
// the rest skewed (cubed uniform weights).
std::vector<int64_t> skewed_counts(int64_t E, int64_t N) {
  auto p = torch::rand({E}, torch::kFloat64).pow(3) + 1e-3;
  for (int64_t e = 0; e < E; e += 4) p[e] = 0.0;
  p[E - 1] = 0.0;
  const int64_t heavy = N / 3;
  auto c = torch::bincount(torch::multinomial(p, N - heavy, /*replacement=*/true), {}, E);
  c[E / 2 + 1] += heavy;
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + E);
}

struct Weights {
  torch::Tensor gate, up, down;
};

Weights random_weights(int64_t E, int64_t D, int64_t I, const torch::TensorOptions& o) {
  return {torch::randn({E, I, D}, o) / std::sqrt(double(D)),
          torch::randn({E, I, D}, o) / std::sqrt(double(D)),
          torch::randn({E, D, I}, o) / std::sqrt(double(I))};
}

void expect_kernel_equals_reference(const torch::Tensor& x, const Weights& w,
                                    const std::vector<int64_t>& counts, int64_t first,
                                    const std::string& what) {
  const double t = tol(x.scalar_type());
  auto dy = torch::randn_like(x);
  const auto fr = grouped_swiglu_forward(x, w.gate, w.up, w.down, counts, first, Impl::kReference);
  const auto fk = grouped_swiglu_forward(x, w.gate, w.up, w.down, counts, first, Impl::kCuda);
  EXPECT_LT(rel_err(fk.a_NI, fr.a_NI), t) << what << " a";
  EXPECT_LT(rel_err(fk.b_NI, fr.b_NI), t) << what << " b";
  EXPECT_LT(rel_err(fk.y_ND, fr.y_ND), t) << what << " y";
  EXPECT_TRUE(torch::isfinite(fk.y_ND).all().item<bool>()) << what;
  const auto br =
      grouped_swiglu_backward(dy, x, w.gate, w.up, w.down, fr, counts, first, Impl::kReference);
  const auto bk =
      grouped_swiglu_backward(dy, x, w.gate, w.up, w.down, fk, counts, first, Impl::kCuda);
  EXPECT_LT(rel_err(bk.x_ND, br.x_ND), t) << what << " dx";
  EXPECT_LT(rel_err(bk.gate_EID, br.gate_EID), t) << what << " dgate";
  EXPECT_LT(rel_err(bk.up_EID, br.up_EID), t) << what << " dup";
  EXPECT_LT(rel_err(bk.down_EDI, br.down_EDI), t) << what << " ddown";
  // Experts without rows: exactly zero weight gradients.
  const int64_t E = w.gate.size(0);
  std::vector<bool> has_rows(E, false);
  for (size_t i = 0; i < counts.size(); ++i) has_rows[first + i] = counts[i] > 0;
  for (int64_t e = 0; e < E; ++e) {
    if (has_rows[e]) continue;
    EXPECT_EQ(bk.gate_EID[e].abs().max().item<double>(), 0.0) << what << " expert " << e;
    EXPECT_EQ(bk.down_EDI[e].abs().max().item<double>(), 0.0) << what << " expert " << e;
    break;  // one is enough per case (each check is a device sync)
  }
}

TEST(GroupedSwiGluGpu, KernelEqualsReferenceSweep) {
  SKIP_WITHOUT_CUDA();
  torch::NoGradGuard no_grad;
  int ran = 0, skipped = 0;
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    const auto o = torch::TensorOptions().device(torch::kCUDA).dtype(dtype);
    const double elem = dtype == torch::kFloat32 ? 4 : 2;
    for (const int64_t E : {8, 64, 256}) {
      for (const int64_t D : {64, 2048, 7168}) {
        for (const int64_t I : {32, 1408, 2048}) {
          // Weights and two sets of weight gradients must fit comfortably (40 GB).
          if (9.0 * double(E) * double(I) * double(D) * elem > 40e9) {
            ++skipped;
            continue;
          }
          torch::manual_seed(E * 7 + D * 3 + I);
          const int64_t N = 4096;
          const auto counts = skewed_counts(E, N);
          const auto w = random_weights(E, D, I, o);
          auto x = torch::randn({N, D}, o);
          expect_kernel_equals_reference(
              x, w, counts, 0, str_cat(c10::toString(dtype), " E=", E, " D=", D, " I=", I));
          ++ran;
        }
      }
    }
  }
  EXPECT_GT(ran, 45);
  std::cout << "[ sweep    ] " << ran << " cases, " << skipped << " skipped (memory)\n";
}

TEST(GroupedSwiGluGpu, EdgeCases) {
  SKIP_WITHOUT_CUDA();
  torch::NoGradGuard no_grad;
  torch::manual_seed(1);
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    const auto o = torch::TensorOptions().device(torch::kCUDA).dtype(dtype);
    const std::string dt = c10::toString(dtype);
    {
      const auto w = random_weights(8, 64, 32, o);
      expect_kernel_equals_reference(torch::randn({300, 64}, o), w, {0, 0, 0, 300, 0, 0, 0, 0}, 0,
                                     dt + " all on one");
      expect_kernel_equals_reference(torch::randn({8, 64}, o), w, {1, 1, 1, 1, 1, 1, 1, 1}, 0,
                                     dt + " one row each");
      expect_kernel_equals_reference(torch::randn({50, 64}, o), w, {20, 0, 30}, 5,
                                     dt + " offset slice");
      expect_kernel_equals_reference(torch::randn({64, 64}, o), w, {16, 16, 16, 16, 0, 0, 0, 0}, 0,
                                     dt + " equal counts (one group)");
      // No rows: nothing launched, zero weight gradients.
      const auto f = grouped_swiglu_forward(torch::randn({0, 64}, o), w.gate, w.up, w.down,
                                            {0, 0, 0, 0, 0, 0, 0, 0}, 0, Impl::kCuda);
      EXPECT_EQ(f.y_ND.size(0), 0);
      const auto b = grouped_swiglu_backward(torch::randn({0, 64}, o), torch::randn({0, 64}, o),
                                             w.gate, w.up, w.down, f, {}, 0, Impl::kCuda);
      EXPECT_EQ(b.gate_EID.abs().max().item<double>(), 0.0) << dt;
      EXPECT_EQ(b.down_EDI.abs().max().item<double>(), 0.0) << dt;
    }
    // Odd sizes: rows of 7 and 3 elements (no 16-byte alignment in 16-bit types).
    const auto w = random_weights(5, 7, 3, o);
    expect_kernel_equals_reference(torch::randn({23, 7}, o), w, {4, 0, 11, 1, 7}, 0,
                                   dt + " odd sizes");
  }
}

TEST(GroupedSwiGluGpu, AutogradEqualsReference) {
  SKIP_WITHOUT_CUDA();
  torch::manual_seed(2);
  const int64_t E = 16, D = 128, I = 96;
  const auto o = torch::TensorOptions().device(torch::kCUDA);
  const auto w = random_weights(E, D, I, o);
  const std::vector<int64_t> counts{9, 0, 40, 3, 0, 0, 17, 1, 0, 25};  // experts 4..13
  const int64_t first = 4, N = sum(counts);
  auto x = torch::randn({N, D}, o);
  auto g = torch::randn({N, D}, o);
  auto run = [&](Impl impl) {
    auto xi = x.clone().requires_grad_(true);
    auto G = w.gate.clone().requires_grad_(true), U = w.up.clone().requires_grad_(true);
    auto Dn = w.down.clone().requires_grad_(true);
    auto y = grouped_swiglu(xi, G, U, Dn, counts, first, impl);
    (y * g).sum().backward();
    return std::vector<torch::Tensor>{y.detach(), xi.grad(), G.grad(), U.grad(), Dn.grad()};
  };
  const auto a = run(Impl::kCuda), b = run(Impl::kReference);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_LT(rel_err(a[i], b[i]), 3e-5) << i;
  for (const int64_t e : {0, 3, 5, 8, 9, 12, 14, 15}) {
    EXPECT_EQ(a[2][e].abs().max().item<double>(), 0.0) << e;
    EXPECT_EQ(a[4][e].abs().max().item<double>(), 0.0) << e;
  }
}

// fp32 on both sides: the CPU reference and the GPU kernel agree to fp32 round-off.
TEST(GroupedSwiGluGpu, CpuReferenceEqualsGpuKernelFp32) {
  SKIP_WITHOUT_CUDA();
  torch::NoGradGuard no_grad;
  torch::manual_seed(3);
  const int64_t E = 32, D = 256, I = 128, N = 1000;
  const auto counts = skewed_counts(E, N);
  const auto w = random_weights(E, D, I, torch::TensorOptions());
  auto x = torch::randn({N, D});
  auto dy = torch::randn({N, D});
  const Weights wg{w.gate.cuda(), w.up.cuda(), w.down.cuda()};
  const auto fc = grouped_swiglu_forward(x, w.gate, w.up, w.down, counts, 0, Impl::kReference);
  const auto fg = grouped_swiglu_forward(x.cuda(), wg.gate, wg.up, wg.down, counts, 0, Impl::kCuda);
  EXPECT_LT(rel_err(fg.y_ND, fc.y_ND), 3e-5);
  const auto bc =
      grouped_swiglu_backward(dy, x, w.gate, w.up, w.down, fc, counts, 0, Impl::kReference);
  const auto bg = grouped_swiglu_backward(dy.cuda(), x.cuda(), wg.gate, wg.up, wg.down, fg, counts,
                                          0, Impl::kCuda);
  EXPECT_LT(rel_err(bg.x_ND, bc.x_ND), 3e-5);
  EXPECT_LT(rel_err(bg.gate_EID, bc.gate_EID), 3e-5);
  EXPECT_LT(rel_err(bg.up_EID, bc.up_EID), 3e-5);
  EXPECT_LT(rel_err(bg.down_EDI, bc.down_EDI), 3e-5);
}

// The Experts module's CUDA path under bf16 autocast (fp32 master weights) stays close to its
// reference path, and the fp32 parameters get finite gradients.
TEST(GroupedSwiGluGpu, ExpertsModuleUnderBf16Autocast) {
  SKIP_WITHOUT_CUDA();
  torch::manual_seed(4);
  const int64_t E = 8, D = 256, I = 128;
  const std::vector<int64_t> counts{30, 0, 12, 50, 0, 7, 1, 0};
  model::Experts ex(E, D, I);
  ex->reset_parameters(0.05);
  ex->to(torch::kCUDA);
  auto x = torch::randn({sum(counts), D}, torch::TensorOptions().device(torch::kCUDA));
  auto run = [&](Impl impl) {
    ex->set_impl(impl);
    ex->zero_grad();
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
    at::autocast::set_autocast_enabled(at::kCUDA, true);
    auto y = ex(x, counts);
    at::autocast::set_autocast_enabled(at::kCUDA, false);
    at::autocast::clear_cache();
    EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
    y.to(torch::kFloat32).pow(2).sum().backward();
    return std::vector<torch::Tensor>{y.detach(), ex->gate_proj.grad().clone(),
                                      ex->up_proj.grad().clone(), ex->down_proj.grad().clone()};
  };
  const auto a = run(Impl::kCuda), b = run(Impl::kReference);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_LT(rel_err(a[i], b[i]), 3e-2) << i;
    EXPECT_TRUE(torch::isfinite(a[i]).all().item<bool>()) << i;
  }
  EXPECT_EQ(ex->gate_proj.grad().scalar_type(), torch::kFloat32);
}

TEST(GroupedSwiGluGpu, UnsupportedDtypeIsAConfigError) {
  SKIP_WITHOUT_CUDA();
  const auto o = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kFloat64);
  const auto w = random_weights(2, 8, 4, o);
  try {
    grouped_swiglu(torch::randn({3, 8}, o), w.gate, w.up, w.down, {1, 2}, 0, Impl::kCuda);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_NE(std::string(e.what()).find("kernels.grouped_gemm"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moetron::ops
