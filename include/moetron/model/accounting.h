// Parameter and FLOP accounting from the config alone (SPEC 7.1): totals, DeepSeek's
// "activated" count, MTP separately, forward FLOPs per token, and a one-line summary.
#pragma once

#include <cstdint>
#include <string>

#include <torch/nn/module.h>

#include "moetron/config/config.h"

namespace moetron::model {

// All counts include RMSNorm weights and exclude e_score_correction_bias (a buffer).
struct ParamCounts {
  int64_t embedding = 0;              // V·d input table
  int64_t lm_head = 0;                // V·d, 0 when tied to the embedding
  int64_t total = 0;                  // main model (embedding, layers, final norm, head)
  int64_t active = 0;                 // DeepSeek convention: token path minus input embedding
  int64_t active_with_embedding = 0;  // active + embedding (when untied)
  int64_t active_matmul = 0;          // matmul weights on the token path (no norms, no lookup)
  int64_t mtp_total = 0;              // unique MTP params (shared embedding/head not counted)
  int64_t mtp_active = 0;             // MTP token path (K routed + shared experts)
  int64_t mtp_active_matmul = 0;      // ... matmul weights only, incl. the shared lm_head
};
ParamCounts count_params(const config::Config& cfg);

// Forward FLOPs per token at sequence length T (multiply-add = 2 FLOPs):
//   matmul    = 2 · active_matmul   (projections, router, K+N_s experts, lm_head)
//   attention = L · n_h · (qk_head_dim + v_head_dim) · (T + 1)
//               (QKᵀ and PV: 2·n_h·(qk+v) per key, averaged over the causal (T+1)/2 keys;
//                materialised-K/V form, as training runs it)
//   mtp       = the same two terms for the MTP modules (counted only in `with_mtp`).
// Backward is ~2x forward; training FLOPs per token ≈ 3 · with_mtp.
struct FlopCounts {
  double matmul = 0;
  double attention = 0;
  double total = 0;     // matmul + attention (main model)
  double mtp = 0;       // MTP modules' matmul + attention
  double with_mtp = 0;  // total + mtp
};
FlopCounts forward_flops_per_token(const config::Config& cfg, int64_t seq_len);

// e.g. "model: 671.03B params (active 36.63B excl. embedding, 37.55B incl.), MTP 11.61B,
//       fwd 77.1 GFLOP/token at T=4096"
std::string summary_line(const config::Config& cfg, int64_t seq_len = 4096);

// Sum of numel over a module's parameters whose name starts with `prefix` (all when empty).
int64_t count_module_params(const torch::nn::Module& module, const std::string& prefix = "");

}  // namespace moetron::model
