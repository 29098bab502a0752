// permute / unpermute references: equal to LocalTokenDispatcher (rows, token order, counts,
// combine), round trips, zero-token experts, all tokens on one expert, T = 0, and gradients
// against autograd through the dispatcher's composite ops and finite differences in fp64.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moetron/core/error.h"
#include "moetron/model/moe.h"
#include "moetron/ops/permute.h"
#include "routing_inputs.h"

namespace moetron::ops {
namespace {

using testing::random_topk;

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.numel() == 0) return 0.0;
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

torch::Tensor counts_of(const torch::Tensor& idx, int64_t E) {
  return torch::bincount(idx.reshape(-1), {}, E);
}

TEST(Permute, EqualsLocalDispatcher) {
  torch::manual_seed(0);
  for (int64_t K : {1, 2, 4, 8}) {
    const int64_t T = 50, E = 16, D = 12;
    auto x = torch::randn({T, D});
    auto idx = random_topk(T, E, K);
    auto w = torch::rand({T, K});
    model::LocalTokenDispatcher d;
    auto st = d.dispatch(x, idx, w, counts_of(idx, E));
    auto p = permute(x, idx, E);
    EXPECT_TRUE(torch::equal(p.x_ND, st.x_ND)) << "K " << K;
    EXPECT_TRUE(torch::equal(p.index.token_idx_N, st.token_idx_N)) << "K " << K;
    EXPECT_EQ(std::vector<int64_t>(p.index.counts_E.data_ptr<int64_t>(),
                                   p.index.counts_E.data_ptr<int64_t>() + E),
              st.counts);
    // row_TK inverts the grouping: row (t, k) holds token t and weight w[t, k].
    auto rows = p.index.row_TK.reshape(-1);
    EXPECT_TRUE(torch::equal(p.index.token_idx_N.index_select(0, rows),
                             torch::arange(T).repeat_interleave(K)));
    EXPECT_TRUE(torch::equal(st.weight_N.index_select(0, rows), w.reshape(-1)));
    auto y = torch::randn({T * K, D});
    auto want = d.combine(y, st);
    auto got = unpermute(y, p.index.row_TK, w);
    // K <= 2: the same two fp32 additions; more terms are summed in k order here and in
    // expert order by index_add.
    if (K <= 2) {
      EXPECT_TRUE(torch::equal(got, want)) << "K " << K;
    } else {
      EXPECT_LT(max_abs_diff(got, want), 1e-6) << "K " << K;
    }
  }
}

TEST(Permute, RoundTrips) {
  torch::manual_seed(1);
  const int64_t T = 40, E = 8, K = 3, D = 5;
  auto x = torch::randn({T, D}, torch::kFloat64);
  auto idx = random_topk(T, E, K);
  auto p = permute(x, idx, E);
  EXPECT_LT(max_abs_diff(unpermute(p.x_ND, p.index.row_TK, {}), x * K), 1e-12);
  auto w = torch::rand({T, K}, torch::kFloat64);
  EXPECT_LT(max_abs_diff(unpermute(p.x_ND, p.index.row_TK, w), x * w.sum(1, true)), 1e-12);
  // Rows of each expert are contiguous, in token order.
  auto counts = p.index.counts_E;
  auto tok = p.index.token_idx_N;
  int64_t start = 0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t n = counts[e].item<int64_t>();
    auto seg = tok.narrow(0, start, n);
    if (n > 1) {
      EXPECT_TRUE((seg.narrow(0, 1, n - 1) > seg.narrow(0, 0, n - 1)).all().item<bool>());
    }
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_TRUE((idx[seg[i].item<int64_t>()] == e).any().item<bool>());
    }
    start += n;
  }
  EXPECT_EQ(start, T * K);
}

TEST(Permute, ZeroTokenExpertsAndAllOnOne) {
  torch::manual_seed(2);
  const int64_t T = 30, E = 16, D = 4;
  // Only even experts receive tokens.
  auto idx = random_topk(T, E / 2, 2) * 2;
  auto x = torch::randn({T, D});
  auto p = permute(x, idx, E);
  auto counts = p.index.counts_E;
  EXPECT_TRUE(torch::equal(counts, counts_of(idx, E)));
  EXPECT_EQ(counts.index({torch::indexing::Slice(1, E, 2)}).sum().item<int64_t>(), 0);
  EXPECT_LT(max_abs_diff(unpermute(p.x_ND, p.index.row_TK, {}), x * 2), 1e-6);
  // Every token on expert 3.
  auto one = torch::full({T, 1}, 3, torch::kInt64);
  auto q = permute(x, one, E);
  EXPECT_TRUE(torch::equal(q.index.token_idx_N, torch::arange(T)));
  EXPECT_TRUE(torch::equal(q.index.row_TK.view(-1), torch::arange(T)));
  EXPECT_EQ(q.index.counts_E[3].item<int64_t>(), T);
  EXPECT_TRUE(torch::equal(q.x_ND, x));
}

TEST(Permute, EmptyBatch) {
  auto x = torch::randn({0, 6}).requires_grad_(true);
  auto idx = torch::empty({0, 2}, torch::kInt64);
  auto w = torch::empty({0, 2}).requires_grad_(true);
  auto p = permute(x, idx, 8);
  EXPECT_EQ(p.x_ND.sizes(), (std::vector<int64_t>{0, 6}));
  EXPECT_TRUE(torch::equal(p.index.counts_E, torch::zeros({8}, torch::kInt64)));
  auto out = unpermute(p.x_ND * 2, p.index.row_TK, w);
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{0, 6}));
  out.sum().backward();
  EXPECT_EQ(x.grad().sizes(), x.sizes());
  EXPECT_EQ(w.grad().sizes(), w.sizes());
}

// The MoE data path with stand-in experts (a fixed per-row scale), through our ops or through
// the dispatcher's composite ops; the loss sees random upstream gradients.
struct Path {
  torch::Tensor x, w, loss;
};

Path run_ops(const torch::Tensor& x0, const torch::Tensor& w0, const torch::Tensor& idx,
             const torch::Tensor& scale_N, const torch::Tensor& r, int64_t E) {
  auto x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
  auto p = permute(x, idx, E);
  auto out = unpermute(p.x_ND * scale_N, p.index.row_TK, w);
  auto loss = (out * r).sum();
  loss.backward();
  return {x, w, loss};
}

Path run_dispatcher(const torch::Tensor& x0, const torch::Tensor& w0, const torch::Tensor& idx,
                    const torch::Tensor& scale_N, const torch::Tensor& r, int64_t E) {
  auto x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
  model::LocalTokenDispatcher d;
  auto st = d.dispatch(x, idx, w, counts_of(idx, E));
  auto out = d.combine(st.x_ND * scale_N, st);
  auto loss = (out * r).sum();
  loss.backward();
  return {x, w, loss};
}

TEST(Permute, GradientsEqualAutogradThroughDispatcher) {
  torch::manual_seed(3);
  for (int64_t K : {1, 2, 6}) {
    // fp32: the dispatcher combines in fp32 whatever the rows' dtype.
    const int64_t T = 21, E = 8, D = 7;
    auto x = torch::randn({T, D});
    auto w = torch::rand({T, K});
    auto idx = random_topk(T, E, K);
    auto scale = torch::randn({T * K, 1});
    auto r = torch::randn({T, D});
    auto a = run_ops(x, w, idx, scale, r, E);
    auto b = run_dispatcher(x, w, idx, scale, r, E);
    EXPECT_NEAR(a.loss.item<double>(), b.loss.item<double>(), 1e-4) << "K " << K;
    EXPECT_LT(max_abs_diff(a.x.grad(), b.x.grad()), 1e-5) << "K " << K;
    EXPECT_LT(max_abs_diff(a.w.grad(), b.w.grad()), 1e-5) << "K " << K;
    EXPECT_GT(a.w.grad().abs().sum().item<double>(), 0.0);
  }
}

TEST(Permute, GradientsMatchFiniteDifferencesFp64) {
  torch::manual_seed(4);
  const int64_t T = 5, E = 4, K = 2, D = 3;
  auto x = torch::randn({T, D}, torch::kFloat64);
  auto w = torch::rand({T, K}, torch::kFloat64);
  auto idx = random_topk(T, E, K);
  auto scale = torch::randn({T * K, 1}, torch::kFloat64);
  auto r = torch::randn({T, D}, torch::kFloat64);
  auto a = run_ops(x, w, idx, scale, r, E);
  auto loss = [&](const torch::Tensor& xx, const torch::Tensor& ww) {
    torch::NoGradGuard no_grad;
    auto p = permute(xx, idx, E);
    return (unpermute(p.x_ND * scale, p.index.row_TK, ww) * r).sum().item<double>();
  };
  const double eps = 1e-6;
  for (auto* which : {&x, &w}) {
    const auto& grad = which == &x ? a.x.grad() : a.w.grad();
    for (int64_t i = 0; i < which->numel(); ++i) {
      auto plus = which->clone(), minus = which->clone();
      plus.view(-1)[i] += eps;
      minus.view(-1)[i] -= eps;
      const double fd = which == &x ? (loss(plus, w) - loss(minus, w)) / (2 * eps)
                                    : (loss(x, plus) - loss(x, minus)) / (2 * eps);
      EXPECT_NEAR(fd, grad.reshape(-1)[i].item<double>(), 1e-7) << (which == &x ? "x " : "w ") << i;
    }
  }
}

TEST(Permute, PrimitiveBackwardEqualsAutogradOfReference) {
  torch::manual_seed(5);
  const int64_t T = 9, E = 6, K = 3, D = 4;
  auto idx = random_topk(T, E, K);
  auto p = permute_index(idx, E, Impl::kReference);
  auto y = torch::randn({T * K, D}).requires_grad_(true);
  auto w = torch::rand({T, K}).requires_grad_(true);
  auto g = torch::randn({T, D});
  // Autograd through plain index_select / mul / add.
  auto out = torch::zeros({T, D});
  for (int64_t k = 0; k < K; ++k) {
    out = out + y.index_select(0, p.row_TK.select(1, k)) * w.select(1, k).unsqueeze(1);
  }
  (out * g).sum().backward();
  auto grads = combine_rows_backward(g, y.detach(), p.row_TK, w.detach(), true, Impl::kReference);
  EXPECT_TRUE(torch::equal(grads.grad_y_ND, y.grad()));
  EXPECT_LT(max_abs_diff(grads.grad_weight_TK, w.grad()), 1e-6);
}

TEST(Permute, BadShapesAndCudaRequestsAreClearErrors) {
  auto x = torch::randn({4, 3});
  auto idx = torch::tensor({{0, 1}, {1, 2}, {2, 0}, {0, 1}}, torch::kInt64);
  EXPECT_THROW(permute(x, idx.narrow(0, 0, 3), 3), Error);
  EXPECT_THROW(permute(x, idx.to(torch::kFloat32), 3), Error);
  auto p = permute(x, idx, 3);
  EXPECT_THROW(unpermute(p.x_ND.narrow(0, 0, 7), p.index.row_TK, {}), Error);
  EXPECT_THROW(unpermute(p.x_ND, p.index.row_TK, torch::ones({4, 3})), Error);
  try {
    permute(x, idx, 3, Impl::kCuda);
    FAIL();
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_TRUE(msg.find("CUDA tensor") != std::string::npos ||
                msg.find("no CUDA kernels") != std::string::npos)
        << msg;
  }
}

}  // namespace
}  // namespace moetron::ops
