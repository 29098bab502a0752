// The GRPO objective against hand-computed cases: SPEC 7.5's advantages and k3 values, the k3
// gradient, clipping (value, gradient, clip counts), the three aggregations, and that
// micro-batch losses with a shared normaliser add up to the mini-batch loss.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "moetron/core/error.h"
#include "moetron/rl/grpo.h"

namespace moetron::rl {
namespace {

const std::vector<double> kToyRewards = {1, 0, 0, 1, 1, 0, 0, 0};  // SPEC 7.5, G = 8

TEST(GrpoAdvantages, SampleStdMatchesSpecToy) {
  auto a = group_advantages(kToyRewards, 8, AdvantageStd::kSample, 1e-4);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_NEAR(a[i], kToyRewards[i] > 0 ? 1.207381 : -0.724429, 1e-6) << i;
  }
}

TEST(GrpoAdvantages, PopulationStdMatchesSpecToy) {
  auto a = group_advantages(kToyRewards, 8, AdvantageStd::kPopulation, 0.0);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_NEAR(a[i], kToyRewards[i] > 0 ? 1.290994 : -0.774597, 1e-6) << i;
  }
}

TEST(GrpoAdvantages, DrGrpoIsMeanCentredOnly) {
  auto a = group_advantages(kToyRewards, 8, AdvantageStd::kNone, 1e-4);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_DOUBLE_EQ(a[i], kToyRewards[i] > 0 ? 0.625 : -0.375);
}

TEST(GrpoAdvantages, GroupsAreIndependentAndEqualGroupsGetZero) {
  // Group 0 all equal (no signal), group 1 = [0, 2]: mean 1, sample std sqrt(2).
  auto a = group_advantages({3, 3, 0, 2}, 2, AdvantageStd::kSample, 0.0);
  EXPECT_EQ(a[0], 0.0);
  EXPECT_EQ(a[1], 0.0);
  EXPECT_NEAR(a[2], -1 / std::sqrt(2.0), 1e-12);
  EXPECT_NEAR(a[3], 1 / std::sqrt(2.0), 1e-12);
  EXPECT_THROW(group_advantages({1, 2, 3}, 2, AdvantageStd::kSample, 0), Error);
}

TEST(GrpoKl, K3MatchesSpecToyAndItsGradient) {
  // x = ref - logp; logp = 0 so x = ref.
  const std::vector<double> xs = {0, 0.1, -0.1, 1};
  const std::vector<double> want = {0, 0.0051709, 0.0048374, 0.7182818};
  auto logp = torch::zeros({4}, torch::kFloat64).requires_grad_(true);
  auto ref = torch::tensor(xs, torch::kFloat64);
  auto kl = k3_kl(logp, ref);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(kl[i].item<double>(), want[i], 1e-7) << xs[i];
  kl.sum().backward();
  // d/dlogp [e^x - x - 1] = 1 - e^x.
  for (int i = 0; i < 4; ++i)
    EXPECT_NEAR(logp.grad()[i].item<double>(), 1 - std::exp(xs[i]), 1e-12);
}

TEST(GrpoKl, K3IsClampedLikeVerl) {
  auto kl = k3_kl(torch::zeros({2}), torch::tensor({50.0f, -50.0f}));
  EXPECT_FLOAT_EQ(kl[0].item<float>(), 10.0f);
  EXPECT_FLOAT_EQ(kl[1].item<float>(), 10.0f);  // e^-20 + 20 - 1 = 19, clamped
}

// One token per sequence at a chosen ratio and advantage: value, gradient, clip counts.
struct ClipCase {
  double ratio, adv;
  double loss;  // -min(ρA, clip(ρ)A)
  double grad;  // d loss / d logp
  bool low, high;
};

TEST(GrpoLoss, ClippingValueGradientAndCounts) {
  PolicyLossOptions o;
  o.epsilon_low = 0.2;
  o.epsilon_high = 0.28;
  const std::vector<ClipCase> cases = {
      {1.5, 1, -1.28, 0, false, true},    // above 1+ε_high, Â > 0: clipped, no gradient
      {1.5, -1, 1.5, 1.5, false, false},  // Â < 0: the unclipped (smaller) term wins
      {0.5, -1, 0.8, 0, true, false},     // below 1-ε_low, Â < 0: clipped, no gradient
      {0.5, 1, -0.5, -0.5, false, false},
      {1.1, 2, -2.2, -2.2, false, false},  // inside the trust region
  };
  for (const auto& c : cases) {
    auto logp = torch::full({1, 1}, std::log(c.ratio), torch::kFloat32).requires_grad_(true);
    auto old = torch::zeros({1, 1});
    auto mask = torch::ones({1, 1});
    auto out = policy_loss(logp, old, {}, torch::tensor({c.adv}, torch::kFloat32), mask, o,
                           LossNormalizer{1, 1, 1});
    out.loss.backward();
    SCOPED_TRACE(testing::Message() << "ratio " << c.ratio << " adv " << c.adv);
    EXPECT_NEAR(out.loss.item<double>(), c.loss, 1e-6);
    EXPECT_NEAR(logp.grad().item<double>(), c.grad, 1e-6);
    EXPECT_EQ(out.stats[kStatClipLow].item<double>(), c.low ? 1 : 0);
    EXPECT_EQ(out.stats[kStatClipHigh].item<double>(), c.high ? 1 : 0);
    EXPECT_NEAR(out.stats[kStatRatioMax].item<double>(), c.ratio, 1e-6);
  }
}

// Two sequences: lengths 2 and 1 (right padding), ratio 1, Â = [1, -3]: per-token losses
// -1, -1 | +3.
struct AggFixture {
  torch::Tensor logp = torch::zeros({2, 2});
  torch::Tensor mask = torch::tensor({1.0f, 1.0f, 1.0f, 0.0f}).view({2, 2});
  torch::Tensor adv = torch::tensor({1.0f, -3.0f});
};

double aggregate(LossAggregation agg, int64_t max_len = 4) {
  AggFixture f;
  PolicyLossOptions o;
  o.aggregation = agg;
  auto norm = count_normalizer({f.mask}, max_len);
  EXPECT_EQ(norm.num_tokens, 3);
  EXPECT_EQ(norm.num_sequences, 2);
  return policy_loss(f.logp, f.logp, {}, f.adv, f.mask, o, norm).loss.item<double>();
}

TEST(GrpoLoss, ThreeAggregationsOnAHandComputedCase) {
  EXPECT_NEAR(aggregate(LossAggregation::kTokenMean), (-1 - 1 + 3) / 3.0, 1e-6);
  EXPECT_NEAR(aggregate(LossAggregation::kSeqMeanTokenMean), (-2 / 2.0 + 3 / 1.0) / 2, 1e-6);
  EXPECT_NEAR(aggregate(LossAggregation::kSeqSumNorm), (-1 - 1 + 3) / (2.0 * 4), 1e-6);
}

TEST(GrpoLoss, MicroBatchLossesAddUpToTheMiniBatchLoss) {
  torch::manual_seed(0);
  const int64_t B = 6, T = 5;
  auto logp = (torch::randn({B, T}) * 0.1 - 1).requires_grad_(true);
  auto old = logp.detach() + torch::randn({B, T}) * 0.3;
  auto ref = logp.detach() + torch::randn({B, T}) * 0.2;
  auto adv = torch::randn({B});
  auto lengths = torch::tensor({5, 3, 1, 4, 2, 5});
  auto mask = (torch::arange(T).unsqueeze(0) < lengths.unsqueeze(1)).to(torch::kFloat32);
  for (auto agg : {LossAggregation::kTokenMean, LossAggregation::kSeqMeanTokenMean,
                   LossAggregation::kSeqSumNorm}) {
    PolicyLossOptions o;
    o.aggregation = agg;
    o.beta = 0.04;
    o.epsilon_high = 0.28;
    auto norm = count_normalizer({mask}, T);
    auto whole = policy_loss(logp, old, ref, adv, mask, o, norm);
    auto g_whole = torch::autograd::grad({whole.loss}, {logp})[0];
    torch::Tensor sum = torch::zeros({});
    torch::Tensor g_sum = torch::zeros_like(logp);
    std::vector<torch::Tensor> stats;
    for (int64_t s = 0; s < B; s += 4) {
      const int64_t n = std::min<int64_t>(4, B - s);
      auto part = policy_loss(logp.narrow(0, s, n), old.narrow(0, s, n), ref.narrow(0, s, n),
                              adv.narrow(0, s, n), mask.narrow(0, s, n), o, norm);
      sum = sum + part.loss;
      stats.push_back(part.stats);
    }
    g_sum = torch::autograd::grad({sum}, {logp})[0];
    EXPECT_NEAR(sum.item<double>(), whole.loss.item<double>(), 1e-6);
    EXPECT_TRUE(torch::allclose(g_sum, g_whole, 1e-5, 1e-7));
    auto st = stats[0] + stats[1];
    EXPECT_NEAR(st[kStatTokens].item<double>(), mask.sum().item<double>(), 0);
    EXPECT_NEAR(st[kStatKl].item<double>(), whole.stats[kStatKl].item<double>(), 1e-5);
  }
}

TEST(GrpoLoss, KlTermIsBetaTimesMeanK3AtRatioOne) {
  auto logp = torch::zeros({1, 3});
  auto ref = torch::tensor({0.1f, -0.1f, 1.0f}).view({1, 3});
  PolicyLossOptions o;
  o.beta = 0.5;
  auto out = policy_loss(logp, logp, ref, torch::zeros({1}), torch::ones({1, 3}), o,
                         LossNormalizer{1, 3, 3});
  EXPECT_NEAR(out.loss.item<double>(), 0.5 * (0.0051709 + 0.0048374 + 0.7182818) / 3, 1e-6);
}

TEST(GrpoLoss, ParsesConfigNamesAndRejectsOthers) {
  EXPECT_EQ(parse_loss_aggregation("seq_sum_norm"), LossAggregation::kSeqSumNorm);
  EXPECT_EQ(parse_advantage_std("none"), AdvantageStd::kNone);
  try {
    parse_loss_aggregation("tokens");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rl.loss_agg"), std::string::npos);
  }
}

TEST(GrpoMetrics, PassAtK) {
  EXPECT_DOUBLE_EQ(pass_at_k(8, 0, 1), 0.0);
  EXPECT_DOUBLE_EQ(pass_at_k(8, 8, 1), 1.0);
  EXPECT_NEAR(pass_at_k(8, 3, 1), 3.0 / 8, 1e-12);
  // 1 - C(5,2)/C(8,2) = 1 - 10/28
  EXPECT_NEAR(pass_at_k(8, 3, 2), 1 - 10.0 / 28, 1e-12);
  EXPECT_DOUBLE_EQ(pass_at_k(8, 1, 8), 1.0);
}

}  // namespace
}  // namespace moetron::rl
