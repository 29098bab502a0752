// fused_gate reference: equals model::route() (indices, weights, scores) for every routing
// rule, counts its choices, and its hand-written backward equals autograd through route() and
// finite differences in fp64; the CUDA request's limits are clear config errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ATen/Parallel.h>

#include "moetron/core/error.h"
#include "moetron/model/moe.h"
#include "moetron/ops/cpu_fused.h"
#include "moetron/ops/fused_gate.h"
#include "routing_inputs.h"

namespace moetron::ops {
namespace {

using testing::describe;
using testing::moe_config;
using testing::spec;
using testing::tie_free_inputs;

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.numel() == 0) return 0.0;
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

struct GateCase {
  GateSpec spec;
  int64_t E;
  bool bias;
};

// Every rule route() implements: V3 noaux_tc (groups 1, 4, 8; K 1, 2, 8; with and without
// bias; without normalisation), V2 group_limited_greedy and V2-Lite greedy (softmax), greedy
// sigmoid with K = 1 (the V2 rule scales instead of normalising).
std::vector<GateCase> gate_cases() {
  using M = GateTopk;
  using S = GateScoring;
  std::vector<GateCase> cases;
  for (int64_t K : {1, 2, 8}) {
    for (bool bias : {false, true}) {
      cases.push_back({spec(M::kNoauxTc, S::kSigmoid, K, 1, 1), 16, bias});
      cases.push_back({spec(M::kNoauxTc, S::kSigmoid, K, 4, 2), 32, bias});
      cases.push_back({spec(M::kNoauxTc, S::kSigmoid, K, 8, 4), 64, bias});
    }
  }
  cases.push_back({spec(M::kNoauxTc, S::kSigmoid, 3, 4, 2, /*norm=*/false, 2.5), 32, true});
  cases.push_back({spec(M::kNoauxTc, S::kSigmoid, 6, 1, 1, true, 1.0), 64, false});
  cases.push_back({spec(M::kGroupLimitedGreedy, S::kSoftmax, 6, 8, 3, false, 16.0), 64, false});
  cases.push_back({spec(M::kGroupLimitedGreedy, S::kSigmoid, 4, 4, 2, true, 1.0), 32, false});
  cases.push_back({spec(M::kGreedy, S::kSoftmax, 6, 1, 1, false, 1.0), 64, false});
  cases.push_back({spec(M::kGreedy, S::kSoftmax, 6, 8, 3, true, 1.0), 64, false});
  cases.push_back({spec(M::kGreedy, S::kSigmoid, 1, 1, 1, true, 2.0), 16, false});
  return cases;
}

// fused_gate against route() for every rule at T tokens: indices, weights, scores and counts
// bit for bit.
void expect_equal_to_route(int64_t T) {
  for (const auto& c : gate_cases()) {
    auto [logits, bias] = tie_free_inputs(T, c.E, c.spec, c.bias);
    auto want = model::route(logits, bias, moe_config(c.spec, c.E));
    auto got = fused_gate(logits, bias, c.spec);
    const auto what = describe(c.spec, T, c.E, c.bias);
    ASSERT_TRUE(torch::equal(got.topk_idx_TK, want.topk_idx_TK)) << what;
    EXPECT_TRUE(torch::equal(got.topk_weight_TK, want.topk_weight_TK)) << what;
    EXPECT_TRUE(torch::equal(got.scores_TE, want.scores_TE)) << what;
    auto counts = torch::bincount(want.topk_idx_TK.reshape(-1), {}, c.E);
    EXPECT_TRUE(torch::equal(got.counts_E, counts)) << what;
    EXPECT_EQ(got.counts_E.sum().item<int64_t>(), T * c.spec.top_k) << what;
    // Inputs are non-trivial: the bias or the groups change some choice against plain top-K.
    if (c.bias || (c.spec.method != GateTopk::kGreedy && c.spec.n_group > 1)) {
      auto plain = std::get<1>(want.scores_TE.topk(c.spec.top_k, -1));
      if (c.spec.top_k > 1) {
        EXPECT_FALSE(torch::equal(plain, want.topk_idx_TK)) << what;
      }
    }
  }
}

TEST(FusedGate, ReferenceEqualsRoute) {
  torch::manual_seed(0);
  expect_equal_to_route(37);
}

// On fp32 CPU the node selects one token per iteration, split over threads for many tokens: the
// same outputs as route() for every rule.
TEST(FusedGate, CpuSelectionOverManyTokensEqualsRoute) {
  const int saved = at::get_num_threads();
  at::set_num_threads(2);
  torch::manual_seed(7);
  expect_equal_to_route(2500);
  at::set_num_threads(saved);
}

TEST(FusedGate, CpuSelectionTiesGoToTheLowerIndex) {
  // Two groups of four; groups tie (sum of top two 1.0 each), experts tie inside them.
  auto scores = torch::tensor({{0.5f, 0.5f, 0.0f, 0.0f, 0.5f, 0.5f, 0.0f, 0.0f}});
  auto sel = cpu::gate_select(scores, {}, spec(GateTopk::kNoauxTc, GateScoring::kSigmoid, 3, 2, 1));
  EXPECT_TRUE(torch::equal(sel.topk_idx_TK, torch::tensor({{0, 1, 2}}, torch::kInt64)))
      << sel.topk_idx_TK;
  sel = cpu::gate_select(scores, {}, spec(GateTopk::kGreedy, GateScoring::kSigmoid, 3, 1, 1));
  EXPECT_TRUE(torch::equal(sel.topk_idx_TK, torch::tensor({{0, 1, 4}}, torch::kInt64)))
      << sel.topk_idx_TK;
}

TEST(FusedGate, SpecToyCase) {  // SPEC 7.3
  auto logits = torch::tensor({{0.5, -1.0, 2.0, 0.0, -0.5, 1.5, -2.0, 1.0}});
  auto bias = torch::tensor({0.0, 0.3, -0.1, 0.2, 0.0, -0.2, 0.5, 0.0});
  auto g = fused_gate(logits, bias, spec(GateTopk::kNoauxTc, GateScoring::kSigmoid, 3, 4, 2));
  EXPECT_TRUE(torch::equal(g.topk_idx_TK, torch::tensor({{2, 7, 3}}, torch::kInt64)))
      << g.topk_idx_TK;
  EXPECT_LT(max_abs_diff(g.topk_weight_TK, torch::tensor({{1.042681, 0.865422, 0.591897}})), 1e-6);
  EXPECT_TRUE(torch::equal(g.counts_E, torch::tensor({0, 0, 1, 1, 0, 0, 0, 1}, torch::kInt64)));
}

TEST(FusedGate, EmptyBatch) {
  auto g = fused_gate(torch::empty({0, 16}), torch::zeros({16}),
                      spec(GateTopk::kNoauxTc, GateScoring::kSigmoid, 2, 4, 2));
  EXPECT_EQ(g.topk_idx_TK.sizes(), (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(g.topk_weight_TK.sizes(), (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(g.scores_TE.sizes(), (std::vector<int64_t>{0, 16}));
  EXPECT_TRUE(torch::equal(g.counts_E, torch::zeros({16}, torch::kInt64)));
}

// Random upstream gradients on both differentiable outputs, as the MoE layer (weights) and the
// balance loss (scores) give them.
torch::Tensor gate_loss(const torch::Tensor& w_TK, const torch::Tensor& s_TE,
                        const torch::Tensor& rw, const torch::Tensor& rs) {
  return (w_TK * rw).sum() + (s_TE * rs).sum();
}

TEST(FusedGate, BackwardEqualsAutogradThroughRoute) {
  torch::manual_seed(1);
  for (const auto& c : gate_cases()) {
    const int64_t T = 23;
    auto [logits, bias] = tie_free_inputs(T, c.E, c.spec, c.bias);
    auto rw = torch::randn({T, c.spec.top_k}), rs = torch::randn({T, c.E});
    auto a = logits.clone().requires_grad_(true);
    auto want = model::route(a, bias, moe_config(c.spec, c.E));
    gate_loss(want.topk_weight_TK, want.scores_TE, rw, rs).backward();
    auto b = logits.clone().requires_grad_(true);
    auto got = fused_gate(b, bias, c.spec);
    gate_loss(got.topk_weight_TK, got.scores_TE, rw, rs).backward();
    const auto what = describe(c.spec, T, c.E, c.bias);
    EXPECT_TRUE(torch::equal(a.grad(), b.grad()))
        << what << " max diff " << max_abs_diff(a.grad(), b.grad());
    EXPECT_GT(b.grad().abs().sum().item<double>(), 0.0) << what;
    // Only the weights' gradient (the MoE output), and only the scores' (the balance loss).
    for (int only : {0, 1}) {
      auto a1 = logits.clone().requires_grad_(true), b1 = logits.clone().requires_grad_(true);
      auto r = model::route(a1, bias, moe_config(c.spec, c.E));
      auto f = fused_gate(b1, bias, c.spec);
      (only == 0 ? (r.topk_weight_TK * rw).sum() : (r.scores_TE * rs).sum()).backward();
      (only == 0 ? (f.topk_weight_TK * rw).sum() : (f.scores_TE * rs).sum()).backward();
      EXPECT_TRUE(torch::equal(a1.grad(), b1.grad())) << what << " only " << only;
    }
  }
}

TEST(FusedGate, BackwardMatchesFiniteDifferencesFp64) {
  torch::manual_seed(2);
  for (const auto& c : gate_cases()) {
    const int64_t T = 3;
    auto [logits32, bias] = tie_free_inputs(T, c.E, c.spec, c.bias, 1e-4);
    auto logits = logits32.to(torch::kFloat64);
    auto rw = torch::randn({T, c.spec.top_k}, torch::kFloat64);
    auto rs = torch::randn({T, c.E}, torch::kFloat64);
    auto x = logits.clone().requires_grad_(true);
    auto g = fused_gate(x, bias, c.spec);
    ASSERT_EQ(g.topk_weight_TK.scalar_type(), torch::kFloat64);
    gate_loss(g.topk_weight_TK, g.scores_TE, rw, rs).backward();
    auto f = [&](const torch::Tensor& l) {
      torch::NoGradGuard no_grad;
      auto o = fused_gate_forward(l, bias, c.spec, Impl::kReference);
      return gate_loss(o.topk_weight_TK, o.scores_TE, rw, rs).item<double>();
    };
    const double eps = 1e-6;
    double worst = 0;
    auto flat = logits.view(-1);
    auto grad = x.grad().reshape(-1);
    for (int64_t i = 0; i < flat.numel(); ++i) {
      auto plus = logits.clone(), minus = logits.clone();
      plus.view(-1)[i] += eps;
      minus.view(-1)[i] -= eps;
      const double fd = (f(plus) - f(minus)) / (2 * eps);
      worst = std::max(worst, std::abs(fd - grad[i].item<double>()));
    }
    EXPECT_LT(worst, 1e-6) << describe(c.spec, T, c.E, c.bias);
  }
}

TEST(FusedGate, CudaLimitsAreConfigErrors) {
  auto expect_config_error = [](int64_t E, const GateSpec& s, const std::string& part) {
    try {
      check_cuda_gate_supports(E, s);
      FAIL() << "no throw for " << part;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kConfig);
      const std::string msg = e.what();
      if (cuda_kernels_built()) {
        EXPECT_NE(msg.find(part), std::string::npos) << msg;
        EXPECT_NE(msg.find("use kernels.gate: reference"), std::string::npos) << msg;
      } else {
        EXPECT_NE(msg.find("no CUDA kernels"), std::string::npos) << msg;
      }
    }
  };
  using M = GateTopk;
  using S = GateScoring;
  expect_config_error(2048, spec(M::kNoauxTc, S::kSigmoid, 8, 8, 4), "at most 1024 experts");
  expect_config_error(256, spec(M::kNoauxTc, S::kSigmoid, 33, 1, 1), "num_experts_per_tok <= 32");
  expect_config_error(256, spec(M::kNoauxTc, S::kSigmoid, 8, 64, 4), "n_group <= 32");
  if (cuda_kernels_built()) {
    EXPECT_NO_THROW(check_cuda_gate_supports(256, spec(M::kNoauxTc, S::kSigmoid, 8, 8, 4)));
    EXPECT_NO_THROW(check_cuda_gate_supports(64, spec(M::kGreedy, S::kSoftmax, 6, 1, 1)));
  }
  // A CPU tensor with the CUDA implementation names what is wrong.
  try {
    fused_gate(torch::randn({2, 8}), {}, spec(M::kGreedy, S::kSigmoid, 2), Impl::kCuda);
    FAIL();
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_TRUE(msg.find("CUDA tensor") != std::string::npos ||
                msg.find("no CUDA kernels") != std::string::npos)
        << msg;
  }
}

TEST(FusedGate, GateModuleRejectsUnsupportedCudaRouterAtSetUp) {
  config::MoeConfig m = moe_config(spec(GateTopk::kNoauxTc, GateScoring::kSigmoid, 8, 8, 4), 2048);
  model::Gate gate(16, m);
  EXPECT_THROW(gate->set_impl(Impl::kCuda), Error);
  EXPECT_NO_THROW(gate->set_impl(Impl::kReference));
}

}  // namespace
}  // namespace moetron::ops
