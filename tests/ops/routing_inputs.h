// Router and dispatch inputs shared by the ops tests: tie-free logits (every implementation's
// top-k must then agree exactly), specs from the MoE config, distinct random top-k indices.
#pragma once

#include <torch/torch.h>

#include <string>

#include "moetron/config/config.h"
#include "moetron/core/error.h"
#include "moetron/ops/fused_gate.h"

namespace moetron::ops::testing {

inline config::MoeConfig moe_config(const GateSpec& s, int64_t E) {
  config::MoeConfig m;
  m.n_routed_experts = E;
  m.num_experts_per_tok = s.top_k;
  m.n_group = s.n_group;
  m.topk_group = s.topk_group;
  m.norm_topk_prob = s.norm_topk_prob;
  m.routed_scaling_factor = s.routed_scaling_factor;
  m.scoring_func = s.scoring == GateScoring::kSigmoid ? config::ScoringFunc::kSigmoid
                                                      : config::ScoringFunc::kSoftmax;
  m.topk_method = s.method == GateTopk::kNoauxTc  ? config::TopkMethod::kNoauxTc
                  : s.method == GateTopk::kGreedy ? config::TopkMethod::kGreedy
                                                  : config::TopkMethod::kGroupLimitedGreedy;
  return m;
}

inline GateSpec spec(GateTopk method, GateScoring scoring, int64_t K, int64_t G = 1,
                     int64_t topk_group = 1, bool norm = true, double rsf = 2.5) {
  GateSpec s;
  s.method = method;
  s.scoring = scoring;
  s.top_k = K;
  s.n_group = G;
  s.topk_group = topk_group;
  s.norm_topk_prob = norm;
  s.routed_scaling_factor = rsf;
  return s;
}

inline std::string describe(const GateSpec& s, int64_t T, int64_t E, bool bias) {
  const char* m = s.method == GateTopk::kNoauxTc  ? "noaux_tc"
                  : s.method == GateTopk::kGreedy ? "greedy"
                                                  : "group_limited_greedy";
  return str_cat(m, s.scoring == GateScoring::kSigmoid ? "/sigmoid" : "/softmax", " T=", T,
                 " E=", E, " K=", s.top_k, " G=", s.n_group, " topk_group=", s.topk_group,
                 " bias=", bias, " norm=", s.norm_topk_prob);
}

// Rows whose sorted values have two neighbours closer than rel (relative), per row of v [R, C].
inline torch::Tensor near_tie_rows(const torch::Tensor& v, double rel) {
  if (v.size(1) < 2) return torch::zeros({v.size(0)}, torch::kBool);
  auto sorted = std::get<0>(v.sort(-1));
  auto a = sorted.narrow(1, 1, v.size(1) - 1), b = sorted.narrow(1, 0, v.size(1) - 1);
  auto scale = torch::maximum(a.abs(), b.abs()).clamp_min(1e-30);
  return ((a - b) <= rel * scale).any(1);
}

// fp32 logits [T, E] (and bias [E] when with_bias) on the CPU whose selection scores s + b, and
// group scores when grouped, are pairwise at least `rel` apart (relative) in every row, so a
// kernel whose scores differ from ATen's by a few ulps must still pick the same experts.
inline std::pair<torch::Tensor, torch::Tensor> tie_free_inputs(int64_t T, int64_t E,
                                                               const GateSpec& s, bool with_bias,
                                                               double rel = 2e-6) {
  auto logits = torch::randn({T, E}) * 2;
  torch::Tensor bias = with_bias ? torch::randn({E}) * 0.1 : torch::Tensor();
  const bool grouped = s.method != GateTopk::kGreedy && s.n_group > 1;
  for (int attempt = 0; attempt < 200 && T > 0; ++attempt) {
    auto l = logits.to(torch::kFloat64);
    auto c = s.scoring == GateScoring::kSigmoid ? torch::sigmoid(l) : torch::softmax(l, -1);
    if (with_bias) c = c + bias.to(torch::kFloat64);
    auto bad = near_tie_rows(c, rel);
    if (grouped) {
      auto cg = c.view({T, s.n_group, E / s.n_group});
      auto g = s.method == GateTopk::kNoauxTc
                   ? std::get<0>(cg.topk(std::min<int64_t>(2, E / s.n_group), -1)).sum(-1)
                   : std::get<0>(cg.max(-1));
      bad = bad | near_tie_rows(g, rel);
    }
    auto rows = bad.nonzero().squeeze(1);
    if (rows.numel() == 0) return {logits, bias};
    logits.index_put_({rows}, torch::randn({rows.numel(), E}) * 2);
  }
  throw Error(str_cat("tie_free_inputs: could not draw tie-free logits for T=", T, " E=", E));
}

// Distinct experts per token, [T, K] int64 (a router never picks one expert twice).
inline torch::Tensor random_topk(int64_t T, int64_t E, int64_t K) {
  return std::get<1>(torch::rand({T, E}).topk(K, -1));
}

}  // namespace moetron::ops::testing
