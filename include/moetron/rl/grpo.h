// The GRPO objective (SPEC 5.1-5.3, 5.5): group-relative advantages, the k3 KL estimator, the
// clipped importance-ratio loss with separate low / high epsilon (DAPO clip-higher), and the
// three loss aggregations, written so that micro-batch losses sum to the mini-batch loss.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/types.h>

namespace moetron::rl {

// Legend: B sequences (completions), T completion tokens (padded), G samples per prompt.

enum class AdvantageStd {
  kSample,      // Bessel-corrected std (N-1), as TRL and verl
  kPopulation,  // std over N
  kNone,        // Dr. GRPO: r - mean, no division
};

enum class LossAggregation {
  kSeqMeanTokenMean,  // (1/G) Σ_i (1/|o_i|) Σ_t ℓ      DeepSeekMath GRPO; TRL grpo
  kTokenMean,         // (1/Σ_i |o_i|) Σ_i Σ_t ℓ       DAPO; TRL dapo; verl token-mean
  kSeqSumNorm,        // (1/(G·L_max)) Σ_i Σ_t ℓ       Dr. GRPO; verl seq-mean-token-sum-norm
};

// Config strings (rl.advantage_std, rl.loss_agg); throws kConfig naming the key otherwise.
AdvantageStd parse_advantage_std(const std::string& name);
LossAggregation parse_loss_aggregation(const std::string& name);

// Â_i for rewards laid out group after group (group g is rewards[g·G, g·G + G)):
// (r_i - mean_g) / (std_g + eps), or r_i - mean_g for kNone. A group of equal rewards gets 0.
// Throws if rewards.size() is not a multiple of G or G < 1 (kSample with G = 1 gives 0).
std::vector<double> group_advantages(const std::vector<double>& rewards, int64_t G,
                                     AdvantageStd std_kind, double eps);

// Per-token k3 estimate of KL(π_θ || π_ref) with x = ref_logp - logp: exp(x) - x - 1 (>= 0,
// unbiased). Like verl's low_var_kl, x is clamped to [-20, 20] and the result to [0, 10].
// Differentiable w.r.t. logp.
torch::Tensor k3_kl(const torch::Tensor& logp, const torch::Tensor& ref_logp);

struct PolicyLossOptions {
  double epsilon_low = 0.2;
  double epsilon_high = 0.2;
  double beta = 0.0;  // k3 weight; ref_logp is only read when beta > 0
  LossAggregation aggregation = LossAggregation::kTokenMean;
};

// The denominators of the aggregation over the whole mini-batch, so that the losses of its
// micro-batches add up to exactly the mini-batch loss (gradient accumulation stays exact).
struct LossNormalizer {
  int64_t num_sequences = 0;  // sequences with at least one loss token
  int64_t num_tokens = 0;     // loss tokens
  int64_t max_length = 0;     // Dr. GRPO's constant L_max (the generation budget)
};
// Counts the normaliser of one mini-batch from its masks ([B_i, T_i] each).
LossNormalizer count_normalizer(const std::vector<torch::Tensor>& masks, int64_t max_length);

struct PolicyLoss {
  torch::Tensor loss;  // scalar, this micro-batch's share of the mini-batch loss
  // Detached sums over this micro-batch's loss tokens, for metrics (one tensor: one host sync):
  // [tokens, clipped_low, clipped_high, kl_sum, ratio_sum, ratio_max]
  torch::Tensor stats;
};
inline constexpr int kStatTokens = 0, kStatClipLow = 1, kStatClipHigh = 2, kStatKl = 3,
                     kStatRatioSum = 4, kStatRatioMax = 5, kNumStats = 6;

// ℓ_{i,t} = -min(ρ Â_i, clip(ρ, 1-ε_low, 1+ε_high) Â_i) + β·k3, ρ = exp(logp - old_logp) with
// the log-ratio clamped to [-20, 20]; aggregated over mask_BT (1 = loss token) by
// options.aggregation with `norm`'s denominators. logp_BT carries the gradient; old_logp_BT
// and ref_logp_BT are constants. Clip counts follow SPEC 5.5: low when ρ < 1-ε_low and Â < 0,
// high when ρ > 1+ε_high and Â > 0.
PolicyLoss policy_loss(const torch::Tensor& logp_BT, const torch::Tensor& old_logp_BT,
                       const torch::Tensor& ref_logp_BT, const torch::Tensor& advantages_B,
                       const torch::Tensor& mask_BT, const PolicyLossOptions& options,
                       const LossNormalizer& norm);

// pass@k of n samples with c correct (unbiased estimator of Chen et al. 2021):
// 1 - C(n-c, k) / C(n, k).
double pass_at_k(int64_t n, int64_t c, int64_t k);

}  // namespace moetron::rl
