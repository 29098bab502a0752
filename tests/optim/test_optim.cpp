// Optimizer pieces: LR schedules at their boundaries, parameter groups, AdamW decoupled weight
// decay per group, gradient clipping and the non-finite report.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "moetron/core/error.h"
#include "moetron/optim/optimizer.h"
#include "moetron/optim/schedule.h"

namespace moetron::optim {
namespace {

config::OptimConfig make_cfg(const std::string& schedule) {
  config::OptimConfig c;
  c.lr = 1.0;
  c.min_lr = 0.1;
  c.warmup_steps = 4;
  c.schedule = schedule;
  c.decay_fraction = 0.2;
  return c;
}

TEST(Schedule, WarmupIsLinearFromFirstStep) {
  auto c = make_cfg("cosine");
  EXPECT_DOUBLE_EQ(lr_at(c, 0, 100), 0.25);
  EXPECT_DOUBLE_EQ(lr_at(c, 1, 100), 0.5);
  EXPECT_DOUBLE_EQ(lr_at(c, 3, 100), 1.0);
}

TEST(Schedule, CosineStartsAtPeakEndsAtMinAndIsMonotone) {
  auto c = make_cfg("cosine");
  EXPECT_DOUBLE_EQ(lr_at(c, 4, 100), 1.0);
  EXPECT_NEAR(lr_at(c, 99, 100), 0.1, 1e-12);
  const int64_t mid = 4 + (100 - 4 - 1) / 2;
  EXPECT_NEAR(lr_at(c, 4 + 95 / 2, 100), 0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * (mid - 4) / 95.0)),
              1e-12);
  for (int64_t s = 5; s < 100; ++s) EXPECT_LE(lr_at(c, s, 100), lr_at(c, s - 1, 100));
}

TEST(Schedule, WsdHoldsThenDecaysLinearly) {
  auto c = make_cfg("wsd");
  EXPECT_DOUBLE_EQ(lr_at(c, 10, 100), 1.0);
  EXPECT_DOUBLE_EQ(lr_at(c, 79, 100), 1.0);  // decay starts at 100 - 20
  EXPECT_DOUBLE_EQ(lr_at(c, 80, 100), 1.0);
  EXPECT_NEAR(lr_at(c, 99, 100), 0.1, 1e-12);
  EXPECT_LT(lr_at(c, 90, 100), 1.0);
  EXPECT_GT(lr_at(c, 90, 100), 0.1);
}

TEST(Schedule, ConstantAndUnknown) {
  auto c = make_cfg("constant");
  EXPECT_DOUBLE_EQ(lr_at(c, 50, 100), 1.0);
  c.schedule = "linear";
  EXPECT_THROW(lr_at(c, 50, 100), Error);
}

// Parameters named like the model's: embed_tokens.weight, proj.{weight,bias},
// input_layernorm.weight.
struct Leaf : torch::nn::Module {
  explicit Leaf(std::vector<int64_t> shape, bool with_bias) {
    weight = register_parameter("weight", torch::ones(shape));
    if (with_bias) bias = register_parameter("bias", torch::ones({shape[0]}));
  }
  torch::Tensor weight, bias;
};
struct Toy : torch::nn::Module {
  Toy() {
    embed_tokens =
        register_module("embed_tokens", std::make_shared<Leaf>(std::vector<int64_t>{4, 3}, false))
            ->weight;
    auto p = register_module("proj", std::make_shared<Leaf>(std::vector<int64_t>{3, 3}, true));
    proj = p->weight;
    bias = p->bias;
    norm =
        register_module("input_layernorm", std::make_shared<Leaf>(std::vector<int64_t>{3}, false))
            ->weight;
  }
  torch::Tensor embed_tokens, proj, bias, norm;
};

TEST(ParamGroups, ClassifiesByNameAndRank) {
  Toy toy;
  config::OptimConfig c;
  c.decay_embeddings = false;
  auto g = make_param_groups(toy, c);
  EXPECT_EQ(g.decay_names, std::vector<std::string>({"proj.weight"}));
  EXPECT_EQ(g.no_decay_names.size(), 3u);
  c.decay_embeddings = true;
  c.decay_norms = true;
  g = make_param_groups(toy, c);
  EXPECT_EQ(g.decay_names.size(), 3u);
  EXPECT_EQ(g.no_decay_names, std::vector<std::string>({"proj.bias"}));
}

TEST(AdamW, WeightDecayAppliesOnlyToDecayGroup) {
  Toy toy;
  config::OptimConfig c;
  c.lr = 0.1;
  c.weight_decay = 0.5;
  c.decay_embeddings = false;
  auto opt = make_adamw(toy, c);
  for (auto& p : toy.parameters()) p.mutable_grad() = torch::zeros_like(p);
  opt->step();
  // Decoupled decay: p <- p * (1 - lr * wd); zero gradient moves nothing else.
  EXPECT_TRUE(torch::allclose(toy.proj, torch::full({3, 3}, 1.0 - 0.1 * 0.5)));
  EXPECT_TRUE(torch::equal(toy.bias, torch::ones({3})));
  EXPECT_TRUE(torch::equal(toy.embed_tokens, torch::ones({4, 3})));
  set_lr(*opt, 0.01);
  for (auto& group : opt->param_groups()) EXPECT_DOUBLE_EQ(group.options().get_lr(), 0.01);
}

TEST(ClipGradNorm, MeasuresAndScales) {
  auto a = torch::zeros({2}, torch::requires_grad());
  auto b = torch::zeros({1}, torch::requires_grad());
  a.mutable_grad() = torch::tensor({3.0f, 0.0f});
  b.mutable_grad() = torch::tensor({4.0f});
  auto r = clip_grad_norm({a, b}, 1.0);
  EXPECT_NEAR(r.total_norm, 5.0, 1e-6);
  EXPECT_TRUE(r.finite);
  EXPECT_NEAR(torch::cat({a.grad(), b.grad()}).norm().item<double>(), 1.0, 1e-5);
  r = clip_grad_norm({a, b}, 10.0);  // under the limit: untouched
  EXPECT_NEAR(torch::cat({a.grad(), b.grad()}).norm().item<double>(), 1.0, 1e-5);
}

TEST(ClipGradNorm, ReportsNonFiniteWithoutScaling) {
  auto a = torch::zeros({2}, torch::requires_grad());
  a.mutable_grad() = torch::tensor({std::nanf(""), 1.0f});
  auto r = clip_grad_norm({a}, 1.0);
  EXPECT_FALSE(r.finite);
  EXPECT_EQ(a.grad()[1].item<float>(), 1.0f);
}

}  // namespace
}  // namespace moetron::optim
