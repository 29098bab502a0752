// Decoupled RoPE for MLA (SPEC 1.4-1.6): interleaved-pair rotation (the official DeepSeek
// convention), YaRN frequency blend, and the softmax-scale mscale correction.
#pragma once

#include <map>
#include <mutex>
#include <string>

#include <torch/types.h>

#include "moetron/config/config.h"

namespace moetron::model {

// Legend: B batch, T tokens, H heads, R = rope_dim/2 frequency pairs, P = rope_dim.

// YaRN's attention-temperature factor: 0.1·m·ln(s) + 1 for s > 1, else 1 (SPEC 1.6).
double yarn_get_mscale(double scale, double mscale);

// Inverse frequencies [R] fp32 exactly as HF computes them (fp32 pow, then the YaRN ramp
// blend when `scaling` is set; SPEC 1.5).
torch::Tensor rope_inv_freq(int64_t rope_dim, double theta,
                            const std::optional<config::RopeScaling>& scaling);

// 1/sqrt(qk_nope+qk_rope), times mscale(factor, mscale_all_dim)^2 when YaRN is configured
// (HF convention: YaRN is on whenever rope_scaling is present; SPEC 1.6).
double softmax_scale(const config::ModelConfig& model, const config::MlaConfig& mla);

// cos/sin of position·inv_freq for each (b, t): [B, T, R] each, in the requested dtype.
struct RopeAngles {
  torch::Tensor cos_BTR;
  torch::Tensor sin_BTR;
};

// Holds the frequencies and turns position ids into angles. cos/sin are computed from the
// positions directly (fp32 outer product, then cos/sin, as HF) rather than gathered from a
// table: same values, no host sync to bound-check positions, no max-length limit.
class RotaryEmbedding {
 public:
  RotaryEmbedding(int64_t rope_dim, double theta,
                  const std::optional<config::RopeScaling>& scaling);
  explicit RotaryEmbedding(const config::Config& cfg);

  // position_ids_BT: integer [B, T]. Angles are fp32 math, cast to `dtype` at the end.
  RopeAngles angles(const torch::Tensor& position_ids_BT, torch::ScalarType dtype) const;
  const torch::Tensor& inv_freq() const { return inv_freq_; }  // [R] fp32, CPU
  int64_t rope_dim() const { return rope_dim_; }
  // HF's cos/sin multiplier mscale(s, mscale)/mscale(s, mscale_all_dim); 1.0 for DeepSeek.
  double attention_factor() const { return attention_factor_; }

 private:
  torch::Tensor inv_freq_on(const torch::Device& device) const;

  int64_t rope_dim_;
  double attention_factor_ = 1.0;
  torch::Tensor inv_freq_;
  mutable std::mutex mu_;
  mutable std::map<std::string, torch::Tensor> per_device_;
};

// Interleaved rotation (SPEC 1.4): pairs (x[2j], x[2j+1]) rotated by pos·θ_j.
// x is [B, T, P] or [B, T, H, P]; angles are [B, T, R] with R = P/2.
torch::Tensor apply_rope_interleaved(const torch::Tensor& x, const RopeAngles& angles);

// Default positions 0..T-1 for every row: int64 [B, T] on `device`.
torch::Tensor default_position_ids(int64_t B, int64_t T, const torch::Device& device);

}  // namespace moetron::model
