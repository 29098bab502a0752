// GPU: the permute / unpermute kernels equal the ATen references on the same device (grouping
// and gathered rows exactly, combines to fp32 round-off or bf16/fp16 rounding), backward too,
// with zero-token experts, all tokens on one expert, T = 0, many chunks; the dispatcher's CUDA
// path equals its reference path.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moetron/model/moe.h"
#include "moetron/ops/permute.h"
#include "routing_inputs.h"

namespace moetron::ops {
namespace {

using testing::random_topk;

#define SKIP_WITHOUT_CUDA() \
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device or no CUDA kernels in this build"

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.numel() == 0) return 0.0;
  return (a.cpu().to(torch::kFloat64) - b.cpu().to(torch::kFloat64)).abs().max().item<double>();
}

// Tolerance by dtype: fp32 1e-6, half types 1e-2 (relative and absolute).
double tol(torch::ScalarType t) {
  return t == torch::kFloat32 ? 1e-6 : 1e-2;
}

bool close(const torch::Tensor& a, const torch::Tensor& b, double t) {
  return a.numel() == 0 ||
         torch::allclose(a.cpu().to(torch::kFloat64), b.cpu().to(torch::kFloat64), t, t);
}

void expect_same_index(const torch::Tensor& idx, int64_t E, const std::string& what) {
  auto want = permute_index(idx, E, Impl::kReference);
  auto got = permute_index(idx, E, Impl::kCuda);
  ASSERT_TRUE(torch::equal(got.counts_E.cpu(), want.counts_E.cpu())) << what;
  ASSERT_TRUE(torch::equal(got.token_idx_N.cpu(), want.token_idx_N.cpu())) << what;
  ASSERT_TRUE(torch::equal(got.row_TK.cpu(), want.row_TK.cpu())) << what;
}

TEST(PermuteGpu, IndexEqualsReference) {
  SKIP_WITHOUT_CUDA();
  torch::manual_seed(0);
  for (const int64_t T : {0, 1, 7, 1000, 4096 + 3}) {
    for (const int64_t E : {8, 64, 256}) {
      for (const int64_t K : {1, 2, 8}) {
        expect_same_index(random_topk(T, E, K).cuda(), E, str_cat("T=", T, " E=", E, " K=", K));
      }
    }
  }
  // Zero-token experts (only multiples of 4), all tokens on one expert, one token per expert.
  expect_same_index((random_topk(999, 16, 4) * 4).cuda(), 64, "multiples of 4");
  expect_same_index(torch::full({5000, 1}, 7, torch::kInt64).cuda(), 8, "all on expert 7");
  expect_same_index(torch::arange(256).view({256, 1}).cuda(), 256, "one each");
  // Many chunks, each larger than the minimum (2.4M pairs), and the largest expert count.
  expect_same_index(random_topk(300000, 256, 8).cuda(), 256, "300000 x 8");
  expect_same_index(random_topk(3000, 2048, 8).cuda(), 2048, "E=2048");
}

TEST(PermuteGpu, IndexRepeatsBitwise) {
  SKIP_WITHOUT_CUDA();
  torch::manual_seed(1);
  auto idx = random_topk(8192, 256, 8).cuda();
  auto a = permute_index(idx, 256, Impl::kCuda), b = permute_index(idx, 256, Impl::kCuda);
  EXPECT_TRUE(torch::equal(a.row_TK, b.row_TK));
  EXPECT_TRUE(torch::equal(a.token_idx_N, b.token_idx_N));
}

TEST(PermuteGpu, GatherAndCombineEqualReference) {
  SKIP_WITHOUT_CUDA();
  torch::manual_seed(2);
  const int64_t E = 64;
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    for (const int64_t D : {64, 7168, 7}) {  // 7: no 16-byte packs
      for (const int64_t T : {0, 1, 7, 1000, 4096 + 3}) {
        for (const int64_t K : {1, 2, 8}) {
          const auto what = str_cat(torch::toString(dtype), " D=", D, " T=", T, " K=", K);
          auto opts = torch::TensorOptions().dtype(dtype).device(torch::kCUDA);
          auto idx = random_topk(T, E, K).cuda();
          auto p = permute_index(idx, E, Impl::kReference);
          auto x = torch::randn({T, D}, opts);
          ASSERT_TRUE(torch::equal(gather_rows(x, p.token_idx_N, Impl::kCuda),
                                   gather_rows(x, p.token_idx_N, Impl::kReference)))
              << what;
          auto y = torch::randn({T * K, D}, opts);
          auto w = torch::rand({T, K}, opts.dtype(torch::kFloat32));
          for (const bool weighted : {true, false}) {
            auto ww = weighted ? w : torch::Tensor();
            auto got = combine_rows(y, p.row_TK, ww, Impl::kCuda);
            auto want = combine_rows(y, p.row_TK, ww, Impl::kReference);
            ASSERT_EQ(got.scalar_type(), dtype);
            EXPECT_TRUE(close(got, want, tol(dtype)))
                << what << " weighted " << weighted << " max diff " << max_abs_diff(got, want);
          }
        }
      }
    }
  }
}

TEST(PermuteGpu, CombineBackwardEqualsReference) {
  SKIP_WITHOUT_CUDA();
  torch::manual_seed(3);
  const int64_t E = 64;
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    for (const int64_t D : {64, 7168, 7}) {
      for (const int64_t T : {0, 7, 1000}) {
        for (const int64_t K : {1, 8}) {
          const auto what = str_cat(torch::toString(dtype), " D=", D, " T=", T, " K=", K);
          auto opts = torch::TensorOptions().dtype(dtype).device(torch::kCUDA);
          auto p = permute_index(random_topk(T, E, K).cuda(), E, Impl::kReference);
          auto y = torch::randn({T * K, D}, opts);
          auto w = torch::rand({T, K}, opts.dtype(torch::kFloat32));
          auto g = torch::randn({T, D}, opts);
          auto got = combine_rows_backward(g, y, p.row_TK, w, true, Impl::kCuda);
          auto want = combine_rows_backward(g, y, p.row_TK, w, true, Impl::kReference);
          EXPECT_TRUE(close(got.grad_y_ND, want.grad_y_ND, tol(dtype))) << what;
          // A D-term fp32 dot product summed in another order: bound by D·eps·Σ|terms|.
          auto mag = (g.to(torch::kFloat32).unsqueeze(1) *
                      y.to(torch::kFloat32).index_select(0, p.row_TK.reshape(-1)).view({T, K, D}))
                         .abs()
                         .sum(-1);
          auto err = (got.grad_weight_TK - want.grad_weight_TK).abs();
          EXPECT_TRUE(T == 0 || (err <= mag * 1e-6 * D + 1e-6).all().item<bool>())
              << what << " max diff " << max_abs_diff(got.grad_weight_TK, want.grad_weight_TK);
          auto unweighted = combine_rows_backward(g, y, p.row_TK, {}, false, Impl::kCuda);
          EXPECT_FALSE(unweighted.grad_weight_TK.defined());
          EXPECT_TRUE(close(unweighted.grad_y_ND, g.index_select(0, p.token_idx_N), tol(dtype)))
              << what;
        }
      }
    }
  }
}

TEST(PermuteGpu, AutogradEqualsReference) {
  SKIP_WITHOUT_CUDA();
  torch::manual_seed(4);
  for (const int64_t T : {0, 1, 1000}) {
    const int64_t E = 64, K = 6, D = 256;
    auto idx = random_topk(T, E, K).cuda();
    auto x0 = torch::randn({T, D}).cuda(), w0 = torch::rand({T, K}).cuda();
    auto scale = torch::randn({T * K, 1}).cuda(), r = torch::randn({T, D}).cuda();
    std::vector<torch::Tensor> grads;
    for (const Impl impl : {Impl::kReference, Impl::kCuda}) {
      auto x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
      auto p = permute(x, idx, E, impl);
      (unpermute(p.x_ND * scale, p.index.row_TK, w, impl) * r).sum().backward();
      grads.push_back(x.grad());
      grads.push_back(w.grad());
    }
    EXPECT_TRUE(close(grads[2], grads[0], 1e-6)) << "dx T=" << T;
    EXPECT_TRUE(close(grads[3], grads[1], 1e-5)) << "dw T=" << T;
  }
}

TEST(PermuteGpu, DispatcherCudaPathEqualsReferencePath) {
  SKIP_WITHOUT_CUDA();
  torch::manual_seed(5);
  const int64_t T = 777, E = 32, K = 4, D = 96;
  auto idx = random_topk(T, E, K).cuda();
  auto counts = torch::bincount(idx.reshape(-1).cpu(), {}, E).cuda();
  auto x0 = torch::randn({T, D}).cuda(), w0 = torch::rand({T, K}).cuda();
  auto r = torch::randn({T, D}).cuda();
  std::vector<torch::Tensor> outs;
  std::vector<std::vector<int64_t>> host_counts;
  for (const Impl impl : {Impl::kReference, Impl::kCuda}) {
    model::LocalTokenDispatcher d;
    d.set_permute_impl(impl);
    auto x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
    auto st = d.dispatch(x, idx, w, counts);
    host_counts.push_back(st.counts);
    outs.push_back(st.x_ND.detach());
    auto y = d.combine(st.x_ND * 1.5, st);
    outs.push_back(y.detach());
    (y * r).sum().backward();
    outs.push_back(x.grad());
    outs.push_back(w.grad());
  }
  EXPECT_EQ(host_counts[0], host_counts[1]);
  EXPECT_TRUE(torch::equal(outs[0], outs[4]));
  EXPECT_LT(max_abs_diff(outs[1], outs[5]), 1e-5);
  EXPECT_LT(max_abs_diff(outs[2], outs[6]), 1e-5);
  EXPECT_LT(max_abs_diff(outs[3], outs[7]), 1e-4);
}

}  // namespace
}  // namespace moetron::ops
