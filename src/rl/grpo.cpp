// GRPO loss pieces (see grpo.h): advantages in double on the host (they are G numbers per
// prompt), the per-token loss and its aggregation as tensors.
#include "moetron/rl/grpo.h"

#include <torch/torch.h>

#include <cmath>

#include "moetron/core/error.h"

namespace moetron::rl {

AdvantageStd parse_advantage_std(const std::string& name) {
  if (name == "sample") return AdvantageStd::kSample;
  if (name == "population") return AdvantageStd::kPopulation;
  if (name == "none") return AdvantageStd::kNone;
  throw Error(ErrorKind::kConfig, str_cat("rl.advantage_std: expected sample | population | none, "
                                          "got '",
                                          name, "'"));
}

LossAggregation parse_loss_aggregation(const std::string& name) {
  if (name == "seq_mean_token_mean") return LossAggregation::kSeqMeanTokenMean;
  if (name == "token_mean") return LossAggregation::kTokenMean;
  if (name == "seq_sum_norm") return LossAggregation::kSeqSumNorm;
  throw Error(ErrorKind::kConfig,
              str_cat("rl.loss_agg: expected seq_mean_token_mean | token_mean | seq_sum_norm, "
                      "got '",
                      name, "'"));
}

std::vector<double> group_advantages(const std::vector<double>& rewards, int64_t G,
                                     AdvantageStd std_kind, double eps) {
  MOETRON_CHECK(G >= 1, "group_advantages: group size must be >= 1, got ", G);
  const int64_t n = static_cast<int64_t>(rewards.size());
  MOETRON_CHECK(n % G == 0, "group_advantages: ", n, " rewards are not whole groups of ", G);
  std::vector<double> adv(rewards.size(), 0.0);
  for (int64_t g = 0; g < n; g += G) {
    double mean = 0;
    for (int64_t i = g; i < g + G; ++i) mean += rewards[i];
    mean /= static_cast<double>(G);
    double ss = 0;
    for (int64_t i = g; i < g + G; ++i) ss += (rewards[i] - mean) * (rewards[i] - mean);
    if (ss == 0) continue;  // equal rewards: no signal (Â = 0 for every kind)
    double scale = 1.0;
    if (std_kind == AdvantageStd::kSample) {
      scale = G > 1 ? 1.0 / (std::sqrt(ss / static_cast<double>(G - 1)) + eps) : 0.0;
    } else if (std_kind == AdvantageStd::kPopulation) {
      scale = 1.0 / (std::sqrt(ss / static_cast<double>(G)) + eps);
    }
    for (int64_t i = g; i < g + G; ++i) adv[i] = (rewards[i] - mean) * scale;
  }
  return adv;
}

torch::Tensor k3_kl(const torch::Tensor& logp, const torch::Tensor& ref_logp) {
  auto x = (ref_logp - logp).clamp(-20.0, 20.0);
  return (torch::exp(x) - x - 1).clamp(0.0, 10.0);
}

LossNormalizer count_normalizer(const std::vector<torch::Tensor>& masks, int64_t max_length) {
  LossNormalizer n;
  n.max_length = max_length;
  for (const auto& m : masks) {
    auto per_seq = m.to(torch::kInt64).sum(1);
    n.num_tokens += per_seq.sum().item<int64_t>();
    n.num_sequences += (per_seq > 0).sum().item<int64_t>();
  }
  return n;
}

PolicyLoss policy_loss(const torch::Tensor& logp_BT, const torch::Tensor& old_logp_BT,
                       const torch::Tensor& ref_logp_BT, const torch::Tensor& advantages_B,
                       const torch::Tensor& mask_BT, const PolicyLossOptions& options,
                       const LossNormalizer& norm) {
  MOETRON_CHECK(logp_BT.dim() == 2 && old_logp_BT.sizes() == logp_BT.sizes() &&
                    mask_BT.sizes() == logp_BT.sizes() && advantages_B.dim() == 1 &&
                    advantages_B.size(0) == logp_BT.size(0),
                "policy_loss: expected logp, old_logp, mask [B, T] and advantages [B], got ",
                logp_BT.sizes(), ", ", old_logp_BT.sizes(), ", ", mask_BT.sizes(), ", ",
                advantages_B.sizes());
  const bool kl = options.beta > 0;
  MOETRON_CHECK(!kl || (ref_logp_BT.defined() && ref_logp_BT.sizes() == logp_BT.sizes()),
                "policy_loss: beta > 0 needs ref_logp [B, T]");
  auto mask = mask_BT.to(torch::kFloat32);
  auto adv_B1 = advantages_B.to(torch::kFloat32).unsqueeze(1);
  auto ratio = torch::exp((logp_BT - old_logp_BT.detach()).clamp(-20.0, 20.0));
  auto clipped = ratio.clamp(1.0 - options.epsilon_low, 1.0 + options.epsilon_high);
  auto per_token = -torch::min(ratio * adv_B1, clipped * adv_B1);
  torch::Tensor kl_BT;
  if (kl) {
    kl_BT = k3_kl(logp_BT, ref_logp_BT.detach());
    per_token = per_token + options.beta * kl_BT;
  }
  per_token = per_token * mask;

  torch::Tensor loss;
  switch (options.aggregation) {
    case LossAggregation::kTokenMean:
      loss = per_token.sum() / static_cast<double>(std::max<int64_t>(norm.num_tokens, 1));
      break;
    case LossAggregation::kSeqMeanTokenMean: {
      auto len_B = mask.sum(1);
      auto seq_B = per_token.sum(1) / len_B.clamp_min(1.0);
      loss = seq_B.sum() / static_cast<double>(std::max<int64_t>(norm.num_sequences, 1));
      break;
    }
    case LossAggregation::kSeqSumNorm:
      MOETRON_CHECK(norm.max_length > 0, "policy_loss: seq_sum_norm needs max_length > 0");
      loss = per_token.sum() /
             static_cast<double>(std::max<int64_t>(norm.num_sequences, 1) * norm.max_length);
      break;
  }

  torch::NoGradGuard no_grad;
  auto r = ratio.detach();
  auto on = mask > 0;
  auto adv_BT = adv_B1.expand_as(r);
  auto low = (r < 1.0 - options.epsilon_low) & (adv_BT < 0) & on;
  auto high = (r > 1.0 + options.epsilon_high) & (adv_BT > 0) & on;
  auto zero = torch::zeros({}, mask.options());
  auto stats =
      torch::stack({mask.sum(), low.to(torch::kFloat32).sum(), high.to(torch::kFloat32).sum(),
                    kl ? (kl_BT.detach() * mask).sum() : zero, (r * mask).sum(),
                    (r * mask).max()});  // ratios are > 0: masked entries never win
  return {loss, stats.to(torch::kDouble)};
}

double pass_at_k(int64_t n, int64_t c, int64_t k) {
  MOETRON_CHECK(n >= 1 && c >= 0 && c <= n && k >= 1 && k <= n, "pass_at_k: need 0 <= c <= n, ",
                "1 <= k <= n; got n ", n, ", c ", c, ", k ", k);
  if (n - c < k) return 1.0;
  // C(n-c, k) / C(n, k) = Π_{i=n-c+1}^{n} (1 - k/i)
  double miss = 1.0;
  for (int64_t i = n - c + 1; i <= n; ++i) miss *= 1.0 - static_cast<double>(k) / i;
  return 1.0 - miss;
}

}  // namespace moetron::rl
