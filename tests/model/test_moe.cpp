// Router (SPEC 7.3 toy, -inf vs 0 masking, bias selects but does not weigh), balance loss
// (SPEC 7.4 toy and its gradient), grouped experts == naive per-token loop, dispatcher seam.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <set>

#include "moetron/core/error.h"
#include "moetron/model/moe.h"
#include "tiny.h"

namespace moetron::model {
namespace {

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

std::set<int64_t> as_set(const torch::Tensor& idx) {
  auto c = idx.to(torch::kInt64).contiguous();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

config::MoeConfig toy_moe() {  // SPEC 7.3: E 8, n_group 4, topk_group 2, K 3, rsf 2.5
  config::MoeConfig m;
  m.n_routed_experts = 8;
  m.n_group = 4;
  m.topk_group = 2;
  m.num_experts_per_tok = 3;
  m.routed_scaling_factor = 2.5;
  return m;
}

TEST(Router, SpecToyCase) {
  auto logits = torch::tensor({{0.5, -1.0, 2.0, 0.0, -0.5, 1.5, -2.0, 1.0}});
  auto bias = torch::tensor({0.0, 0.3, -0.1, 0.2, 0.0, -0.2, 0.5, 0.0});
  auto g = route(logits, bias, toy_moe());
  EXPECT_EQ(as_set(g.topk_idx_TK), (std::set<int64_t>{2, 3, 7}));
  std::map<int64_t, double> want = {{2, 1.042681}, {3, 0.591897}, {7, 0.865422}};
  for (int k = 0; k < 3; ++k) {
    const int64_t e = g.topk_idx_TK[0][k].item<int64_t>();
    EXPECT_NEAR(g.topk_weight_TK[0][k].item<double>(), want[e], 1e-6) << "expert " << e;
  }
  EXPECT_NEAR(g.topk_weight_TK.sum().item<double>(), 2.5, 1e-6);
  EXPECT_NEAR(g.scores_TE[0][0].item<double>(), 0.622459, 1e-6);
  EXPECT_EQ(g.topk_idx_TK.scalar_type(), torch::kInt64);
  EXPECT_EQ(g.topk_weight_TK.scalar_type(), torch::kFloat32);
}

TEST(Router, NegativeBiasedScoresNeedMinusInfMasking) {
  config::MoeConfig m;
  m.n_routed_experts = 4;
  m.n_group = 2;
  m.topk_group = 1;
  m.num_experts_per_tok = 2;
  auto logits = torch::tensor({{0.0, 0.0, -3.0, -3.0}});
  auto bias = torch::full({4}, -1.0);
  auto g = route(logits, bias, m);
  // Group 0 wins (-1.0 vs -1.9); its experts have biased scores -0.5 < 0.
  EXPECT_EQ(as_set(g.topk_idx_TK), (std::set<int64_t>{0, 1}));
  // HF's masked_fill(0.0) would pick the dropped group's experts: the case discriminates.
  auto c = torch::sigmoid(logits) + bias;
  auto hf_masked = c.clone();
  hf_masked.narrow(1, 2, 2).fill_(0.0);
  EXPECT_EQ(as_set(std::get<1>(hf_masked.topk(2, -1))), (std::set<int64_t>{2, 3}));
}

TEST(Router, BiasChangesSelectionButNotWeights) {
  auto m = toy_moe();
  m.n_group = 1;
  m.topk_group = 1;
  torch::manual_seed(10);
  auto logits = torch::randn({16, 8});
  auto plain = route(logits, torch::zeros({8}), m);
  auto bias = torch::zeros({8});
  bias[5] = 10.0;  // force expert 5 into every selection
  auto biased = route(logits, bias, m);
  EXPECT_EQ((biased.topk_idx_TK == 5).any(1).sum().item<int64_t>(), 16);
  EXPECT_FALSE(torch::equal(std::get<0>(plain.topk_idx_TK.sort(1)),
                            std::get<0>(biased.topk_idx_TK.sort(1))));
  // Weights are the UNBIASED affinities of the selected experts, renormalised, times 2.5.
  auto s = torch::sigmoid(logits).gather(1, biased.topk_idx_TK);
  EXPECT_LT(max_abs_diff(biased.topk_weight_TK, s / s.sum(1, true) * 2.5), 1e-6);
}

TEST(Router, V2FamilyRules) {
  config::MoeConfig m;
  m.n_routed_experts = 8;
  m.num_experts_per_tok = 2;
  m.scoring_func = config::ScoringFunc::kSoftmax;
  m.norm_topk_prob = false;
  m.routed_scaling_factor = 16.0;
  m.topk_method = config::TopkMethod::kGroupLimitedGreedy;
  m.n_group = 4;
  m.topk_group = 1;
  auto logits = torch::tensor({{3.0, 0.0, 2.5, 2.4, 0.0, 0.0, 0.0, 0.0}});
  auto g = route(logits, {}, m);
  // Group score = max: group 0 (3.0) beats group 1 (2.5) although 2.5+2.4 > 3.0+0.0.
  EXPECT_EQ(as_set(g.topk_idx_TK), (std::set<int64_t>{0, 1}));
  auto p = torch::softmax(logits, -1);
  EXPECT_NEAR(g.topk_weight_TK[0][0].item<double>(), 16.0 * p[0][0].item<double>(), 1e-5);
  m.topk_method = config::TopkMethod::kGreedy;
  EXPECT_EQ(as_set(route(logits, {}, m).topk_idx_TK), (std::set<int64_t>{0, 2}));
}

TEST(BalanceLoss, SpecToyAndGradientSkipsF) {
  auto logits = torch::tensor({{1.0, 0.0, -1.0, 0.5},
                               {0.2, 0.4, -0.3, -1.0},
                               {2.0, -2.0, 0.1, 0.0},
                               {0.0, 1.0, 0.5, -0.5}})
                    .unsqueeze(0)
                    .requires_grad_(true);
  auto s = torch::sigmoid(logits);
  auto idx = std::get<1>(s.detach().topk(2, -1));
  const double alpha = 1e-4;
  auto loss = sequence_balance_loss(s, idx, alpha);
  EXPECT_NEAR(loss.item<double>() / alpha, 1.055814, 1e-6);
  loss.backward();
  // Same loss with f a hand-written constant: identical gradient => none flows through f.
  auto l2 = logits.detach().clone().requires_grad_(true);
  auto s2 = torch::sigmoid(l2);
  auto f = torch::tensor({1.5, 1.0, 1.0, 0.5});
  auto p = (s2 / s2.sum(-1, true)).mean(1);
  (alpha * (f * p).sum()).backward();
  EXPECT_LT(max_abs_diff(logits.grad(), l2.grad()), 1e-12);
  EXPECT_GT(logits.grad().abs().sum().item<double>(), 0.0);
}

TEST(BalanceLoss, UniformRoutingGivesAlpha) {
  auto s = torch::full({2, 4, 4}, 0.5);
  auto idx =
      torch::tensor({{0, 1}, {2, 3}, {0, 1}, {2, 3}}, torch::kInt64).unsqueeze(0).expand({2, 4, 2});
  EXPECT_NEAR(sequence_balance_loss(s, idx.contiguous(), 0.5).item<double>(), 0.5, 1e-7);
}

// Naive reference: for each token, Σ_k w_k · expert_e(x) + shared(x).
torch::Tensor naive_moe(MoeImpl& moe, const torch::Tensor& x_BTD) {
  const int64_t D = x_BTD.size(2);
  auto x_TD = x_BTD.reshape({-1, D});
  auto g = moe.gate(x_TD);
  std::vector<torch::Tensor> rows;
  for (int64_t t = 0; t < x_TD.size(0); ++t) {
    auto xt = x_TD[t];
    auto acc = moe.shared_experts(xt.unsqueeze(0)).squeeze(0);
    for (int64_t k = 0; k < g.topk_idx_TK.size(1); ++k) {
      const int64_t e = g.topk_idx_TK[t][k].item<int64_t>();
      auto& ex = *moe.experts;
      auto h = torch::silu(ex.gate_proj[e].mv(xt)) * ex.up_proj[e].mv(xt);
      acc = acc + g.topk_weight_TK[t][k] * ex.down_proj[e].mv(h);
    }
    rows.push_back(acc);
  }
  return torch::stack(rows).view(x_BTD.sizes());
}

struct MoeCase {
  const char* name;
  int64_t T;
  bool all_on_one;
};

void PrintTo(const MoeCase& c, std::ostream* os) {
  *os << c.name;
}

class GroupedExperts : public ::testing::TestWithParam<MoeCase> {};

TEST_P(GroupedExperts, EqualNaiveLoopValuesAndGrads) {
  const auto tc = GetParam();
  auto cfg = testing::tiny_config();
  torch::manual_seed(11);
  Moe moe(cfg.model.hidden_size, cfg.moe);
  moe->reset_parameters(0.3);
  moe->eval();
  if (tc.all_on_one) {
    torch::NoGradGuard g;
    moe->gate->e_score_correction_bias[3] = 100.0;
  }
  auto x = torch::randn({1, tc.T, cfg.model.hidden_size});
  auto out = moe(x);
  const int64_t E = 8, K = 2;
  // Counts = selected (biased) assignments.
  EXPECT_EQ(out.counts_E.sum().item<int64_t>(), tc.T * K);
  auto g = moe->gate(x.view({tc.T, -1}));
  EXPECT_TRUE(torch::equal(out.counts_E, torch::bincount(g.topk_idx_TK.flatten(), {}, E)));
  if (tc.all_on_one) {
    EXPECT_EQ(out.counts_E[3].item<int64_t>(), tc.T);
  } else if (tc.T <= 3) {
    EXPECT_GT((out.counts_E == 0).sum().item<int64_t>(), 0) << "want zero-token experts";
  } else {
    EXPECT_GE((out.counts_E > 0).sum().item<int64_t>(), 4) << "routing should spread";
  }
  auto ref = naive_moe(*moe, x);
  EXPECT_LT(max_abs_diff(out.y_BTD, ref), 1e-5);

  // Gradients w.r.t. the stacked experts, the router and the input agree as well.
  auto grads = [&](bool grouped) {
    moe->zero_grad();
    auto xi = x.clone().requires_grad_(true);
    auto y = grouped ? moe(xi).y_BTD : naive_moe(*moe, xi);
    (y * torch::linspace(-1, 1, y.numel()).view(y.sizes())).sum().backward();
    return std::vector<torch::Tensor>{xi.grad().clone(), moe->experts->gate_proj.grad().clone(),
                                      moe->experts->down_proj.grad().clone(),
                                      moe->gate->weight.grad().clone(),
                                      moe->experts->up_proj.grad().clone()};
  };
  auto a = grads(true), b = grads(false);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_LT(max_abs_diff(a[i], b[i]), 1e-5) << "grad " << i;
  EXPECT_GT(a[3].abs().sum().item<double>(), 0.0);  // router learns through the weights
}

// A slice of the stacked experts (what an expert-parallel rank computes: counts for experts
// first..first+3, one of them empty) against autograd through a per-expert loop, in fp64;
// experts outside the slice or without rows get zero gradients.
TEST(GroupedExperts, ExpertSliceMatchesAutogradLoopInDouble) {
  torch::manual_seed(12);
  Experts ex(6, 5, 3);
  ex->to(torch::kFloat64);
  ex->reset_parameters(0.5);
  const std::vector<int64_t> counts{4, 0, 3};
  const int64_t first = 2, N = 7;
  auto x = torch::randn({N, 5}, torch::kFloat64);
  auto g = torch::randn({N, 5}, torch::kFloat64);
  auto run = [&](bool grouped) {
    ex->zero_grad();
    auto xi = x.clone().requires_grad_(true);
    torch::Tensor y;
    if (grouped) {
      y = ex(xi, counts, first);
    } else {
      std::vector<torch::Tensor> outs;
      int64_t start = 0;
      for (size_t i = 0; i < counts.size(); ++i) {
        const int64_t e = first + static_cast<int64_t>(i), n = counts[i];
        auto x_n = xi.narrow(0, start, n);
        auto h = torch::silu(x_n.mm(ex->gate_proj[e].t())) * x_n.mm(ex->up_proj[e].t());
        outs.push_back(h.mm(ex->down_proj[e].t()));
        start += n;
      }
      y = torch::cat(outs);
    }
    (y * g).sum().backward();
    return std::vector<torch::Tensor>{y.detach(), xi.grad(), ex->gate_proj.grad().clone(),
                                      ex->up_proj.grad().clone(), ex->down_proj.grad().clone()};
  };
  auto a = run(true), b = run(false);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_LT(max_abs_diff(a[i], b[i]), 1e-12) << i;
  for (const int64_t e : {0, 1, 3, 5}) {
    EXPECT_EQ(a[2][e].abs().sum().item<double>(), 0.0) << e;
    EXPECT_EQ(a[4][e].abs().sum().item<double>(), 0.0) << e;
  }
  EXPECT_GT(a[3][2].abs().sum().item<double>(), 0.0);
  EXPECT_THROW(ex->forward(x, {4, 0, 2}, first), Error);  // counts do not cover the rows
}

INSTANTIATE_TEST_SUITE_P(Cases, GroupedExperts,
                         ::testing::Values(MoeCase{"spread", 24, false},
                                           MoeCase{"zero_token_experts", 2, false},
                                           MoeCase{"all_on_one", 10, true}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(Moe, BalanceLossOnlyInTrainingWithAlpha) {
  auto cfg = testing::tiny_config();
  torch::manual_seed(12);
  Moe moe(cfg.model.hidden_size, cfg.moe);
  moe->reset_parameters(0.3);
  auto x = torch::randn({2, 5, cfg.model.hidden_size});
  moe->train();
  auto out = moe(x);
  ASSERT_TRUE(out.balance_loss.defined());
  EXPECT_GT(out.balance_loss.item<double>(), 0.0);
  // Recompute from the gate: f from raw top-K, P from s/Σs, mean over the 2 sequences.
  auto g = moe->gate(x.view({10, -1}));
  auto s = g.scores_TE.view({2, 5, 8});
  auto want = sequence_balance_loss(s, std::get<1>(s.topk(2, -1)), cfg.moe.aux_loss_alpha);
  EXPECT_NEAR(out.balance_loss.item<double>(), want.item<double>(), 1e-7);
  moe->eval();
  EXPECT_FALSE(moe(x).balance_loss.defined());
  cfg.moe.aux_loss_alpha = 0;
  Moe no_alpha(cfg.model.hidden_size, cfg.moe);
  no_alpha->train();
  EXPECT_FALSE(no_alpha(x).balance_loss.defined());
}

// A dispatcher wrapping the local one, to check the seam is used.
class CountingDispatcher : public LocalTokenDispatcher {
 public:
  DispatchState dispatch(const torch::Tensor& x, const torch::Tensor& idx, const torch::Tensor& w,
                         const torch::Tensor& counts) override {
    ++dispatches;
    return LocalTokenDispatcher::dispatch(x, idx, w, counts);
  }
  torch::Tensor combine(const torch::Tensor& y, const DispatchState& st) override {
    ++combines;
    return LocalTokenDispatcher::combine(y, st);
  }
  int dispatches = 0, combines = 0;
};

TEST(Moe, DispatcherCanBeSwapped) {
  auto cfg = testing::tiny_config();
  torch::manual_seed(13);
  Moe moe(cfg.model.hidden_size, cfg.moe);
  moe->reset_parameters(0.3);
  auto x = torch::randn({1, 6, cfg.model.hidden_size});
  auto before = moe(x).y_BTD;
  auto d = std::make_shared<CountingDispatcher>();
  moe->set_dispatcher(d);
  auto after = moe(x).y_BTD;
  EXPECT_EQ(d->dispatches, 1);
  EXPECT_EQ(d->combines, 1);
  EXPECT_TRUE(torch::allclose(before, after));
  EXPECT_THROW(moe->set_dispatcher(nullptr), Error);
}

TEST(Moe, LocalDispatchIsStableExpertMajor) {
  LocalTokenDispatcher d;
  auto x = torch::arange(4).to(torch::kFloat32).unsqueeze(1);  // token t holds value t
  auto idx = torch::tensor({{2, 0}, {0, 1}, {2, 1}, {0, 2}}, torch::kInt64);
  auto w = torch::ones({4, 2});
  auto st = d.dispatch(x, idx, w, torch::bincount(idx.flatten(), {}, 3));
  EXPECT_EQ(st.counts, (std::vector<int64_t>{3, 2, 3}));
  EXPECT_TRUE(torch::equal(st.token_idx_N, torch::tensor({0, 1, 3, 1, 2, 0, 2, 3}, torch::kInt64)));
  auto back = d.combine(st.x_ND, st);
  EXPECT_TRUE(torch::equal(back, x * 2));
}

}  // namespace
}  // namespace moetron::model
