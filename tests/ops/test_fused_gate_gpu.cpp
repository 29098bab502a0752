// GPU: the fused gate kernel equals the ATen reference on the same device over a sweep of
// shapes and routing rules (indices and counts exactly, weights and scores to fp32 round-off),
// its backward equals autograd through route(), ties go to the lower index, runs repeat bitwise.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moetron/model/moe.h"
#include "moetron/ops/fused_gate.h"
#include "routing_inputs.h"

namespace moetron::ops {
namespace {

using testing::describe;
using testing::moe_config;
using testing::spec;
using testing::tie_free_inputs;

#define SKIP_WITHOUT_CUDA() \
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device or no CUDA kernels in this build"

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.numel() == 0) return 0.0;
  return (a.cpu().to(torch::kFloat64) - b.cpu().to(torch::kFloat64)).abs().max().item<double>();
}

bool close(const torch::Tensor& a, const torch::Tensor& b, double rtol, double atol) {
  return a.numel() == 0 || torch::allclose(a.cpu(), b.cpu(), rtol, atol);
}

struct Case {
  GateSpec spec;
  int64_t E;
  bool bias;
};

// E in {8, 64, 256}; groups 1, 4 (topk_group 2), 8 (topk_group 4); K in {1, 2, 8}; noaux_tc
// sigmoid with and without bias, group_limited_greedy softmax (V2), greedy softmax (V2-Lite).
std::vector<Case> sweep_cases() {
  using M = GateTopk;
  using S = GateScoring;
  std::vector<Case> out;
  const std::vector<std::tuple<int64_t, int64_t, int64_t>> groupings = {
      {8, 1, 1}, {8, 4, 2}, {64, 1, 1}, {64, 4, 2}, {64, 8, 4}, {256, 1, 1}, {256, 8, 4}};
  for (const auto& [E, G, tg] : groupings) {
    for (int64_t K : {1, 2, 8}) {
      if (K > tg * (E / G)) continue;
      out.push_back({spec(M::kNoauxTc, S::kSigmoid, K, G, tg, true, 2.5), E, true});
      out.push_back({spec(M::kNoauxTc, S::kSigmoid, K, G, tg, true, 2.5), E, false});
      if (G > 1) {
        out.push_back({spec(M::kGroupLimitedGreedy, S::kSoftmax, K, G, tg, false, 16.0), E, false});
      } else {
        out.push_back({spec(M::kGreedy, S::kSoftmax, K, 1, 1, false, 1.0), E, false});
        out.push_back({spec(M::kGreedy, S::kSigmoid, K, 1, 1, true, 1.0), E, false});
      }
    }
  }
  return out;
}

TEST(FusedGateGpu, KernelEqualsReferenceSweep) {
  SKIP_WITHOUT_CUDA();
  torch::manual_seed(0);
  int compared = 0;
  for (const int64_t T : {0, 1, 7, 1000, 4096 + 3}) {
    for (const auto& c : sweep_cases()) {
      auto [logits, bias] = tie_free_inputs(T, c.E, c.spec, c.bias);
      auto l = logits.cuda();
      auto b = c.bias ? bias.cuda() : torch::Tensor();
      auto want = fused_gate_forward(l, b, c.spec, Impl::kReference);
      auto got = fused_gate_forward(l, b, c.spec, Impl::kCuda);
      const auto what = describe(c.spec, T, c.E, c.bias);
      ASSERT_TRUE(torch::equal(got.topk_idx_TK.cpu(), want.topk_idx_TK.cpu())) << what;
      ASSERT_TRUE(torch::equal(got.counts_E.cpu(), want.counts_E.cpu())) << what;
      EXPECT_TRUE(close(got.topk_weight_TK, want.topk_weight_TK, 1e-6, 1e-6))
          << what << " max diff " << max_abs_diff(got.topk_weight_TK, want.topk_weight_TK);
      EXPECT_TRUE(close(got.scores_TE, want.scores_TE, 1e-6, 1e-7))
          << what << " max diff " << max_abs_diff(got.scores_TE, want.scores_TE);
      EXPECT_EQ(got.counts_E.sum().item<int64_t>(), T * c.spec.top_k) << what;
      ++compared;
    }
  }
  EXPECT_GT(compared, 100);
}

TEST(FusedGateGpu, KernelEqualsRouteOnTheDevice) {
  SKIP_WITHOUT_CUDA();
  torch::manual_seed(1);
  const auto s = spec(GateTopk::kNoauxTc, GateScoring::kSigmoid, 8, 8, 4, true, 2.5);
  auto [logits, bias] = tie_free_inputs(4096 + 3, 256, s, true);
  auto want = model::route(logits.cuda(), bias.cuda(), moe_config(s, 256));
  auto got = fused_gate(logits.cuda(), bias.cuda(), s, Impl::kCuda);
  ASSERT_TRUE(torch::equal(got.topk_idx_TK.cpu(), want.topk_idx_TK.cpu()));
  EXPECT_LT(max_abs_diff(got.topk_weight_TK, want.topk_weight_TK), 1e-6);
  EXPECT_LT(max_abs_diff(got.scores_TE, want.scores_TE), 1e-7);
}

TEST(FusedGateGpu, BackwardEqualsAutogradThroughRoute) {
  SKIP_WITHOUT_CUDA();
  torch::manual_seed(2);
  using M = GateTopk;
  using S = GateScoring;
  const std::vector<Case> cases = {
      {spec(M::kNoauxTc, S::kSigmoid, 8, 8, 4, true, 2.5), 256, true},
      {spec(M::kNoauxTc, S::kSigmoid, 2, 4, 2, false, 2.5), 64, true},
      {spec(M::kGroupLimitedGreedy, S::kSoftmax, 6, 8, 3, false, 16.0), 64, false},
      {spec(M::kGreedy, S::kSoftmax, 6, 1, 1, true, 1.0), 64, false},
      {spec(M::kGreedy, S::kSigmoid, 1, 1, 1, true, 1.0), 8, false}};
  for (const auto& c : cases) {
    for (const int64_t T : {0, 7, 1000}) {
      auto [logits, bias] = tie_free_inputs(T, c.E, c.spec, c.bias);
      auto b = c.bias ? bias.cuda() : torch::Tensor();
      auto rw = torch::randn({T, c.spec.top_k}).cuda(), rs = torch::randn({T, c.E}).cuda();
      auto x_ref = logits.cuda().requires_grad_(true);
      auto r = model::route(x_ref, b, moe_config(c.spec, c.E));
      ((r.topk_weight_TK * rw).sum() + (r.scores_TE * rs).sum()).backward();
      auto x_ker = logits.cuda().requires_grad_(true);
      auto k = fused_gate(x_ker, b, c.spec, Impl::kCuda);
      ((k.topk_weight_TK * rw).sum() + (k.scores_TE * rs).sum()).backward();
      const auto what = describe(c.spec, T, c.E, c.bias);
      EXPECT_TRUE(close(x_ker.grad(), x_ref.grad(), 1e-6, 1e-6))
          << what << " max diff " << max_abs_diff(x_ker.grad(), x_ref.grad());
    }
  }
}

TEST(FusedGateGpu, TiesGoToTheLowerIndex) {
  SKIP_WITHOUT_CUDA();
  // All scores equal: experts 0..K-1, and the first groups.
  auto l = torch::zeros({3, 64}).cuda();
  auto g = fused_gate(l, {}, spec(GateTopk::kGreedy, GateScoring::kSigmoid, 4), Impl::kCuda);
  EXPECT_TRUE(torch::equal(g.topk_idx_TK.cpu(), torch::arange(4).repeat({3, 1})));
  auto grouped = fused_gate(l, torch::zeros({64}).cuda(),
                            spec(GateTopk::kNoauxTc, GateScoring::kSigmoid, 8, 8, 4), Impl::kCuda);
  EXPECT_TRUE(torch::equal(grouped.topk_idx_TK.cpu(), torch::arange(8).repeat({3, 1})));
  // A tie across the kept-group boundary: group 1 and group 2 score the same, group 1 stays.
  auto t = torch::full({1, 16}, -4.0);
  t.index_put_({0, torch::indexing::Slice(4, 8)}, 1.0);   // group 1
  t.index_put_({0, torch::indexing::Slice(8, 12)}, 1.0);  // group 2
  auto tg = fused_gate(t.cuda(), {}, spec(GateTopk::kNoauxTc, GateScoring::kSigmoid, 2, 4, 1),
                       Impl::kCuda);
  EXPECT_TRUE(torch::equal(tg.topk_idx_TK.cpu(), torch::tensor({{4, 5}}, torch::kInt64)));
}

TEST(FusedGateGpu, RepeatsBitwise) {
  SKIP_WITHOUT_CUDA();
  torch::manual_seed(3);
  const auto s = spec(GateTopk::kNoauxTc, GateScoring::kSigmoid, 8, 8, 4);
  auto l = torch::randn({8192, 256}).cuda();
  auto b = (torch::randn({256}) * 0.1).cuda();
  auto a = fused_gate(l, b, s, Impl::kCuda);
  auto c = fused_gate(l, b, s, Impl::kCuda);
  EXPECT_TRUE(torch::equal(a.topk_idx_TK, c.topk_idx_TK));
  EXPECT_TRUE(torch::equal(a.topk_weight_TK, c.topk_weight_TK));
  EXPECT_TRUE(torch::equal(a.scores_TE, c.scores_TE));
  EXPECT_TRUE(torch::equal(a.counts_E, c.counts_E));
  // Non-contiguous logits are accepted (copied once).
  auto lt = l.t().contiguous().t();
  EXPECT_TRUE(torch::equal(fused_gate(lt, b, s, Impl::kCuda).topk_idx_TK, a.topk_idx_TK));
}

}  // namespace
}  // namespace moetron::ops
