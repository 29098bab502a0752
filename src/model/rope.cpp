// RoPE frequencies (plain and YaRN, SPEC 1.5), softmax scale (SPEC 1.6) and the interleaved
// rotation (SPEC 1.4). Frequencies follow HF's fp32 arithmetic so tables match bit for bit.
#include "moetron/model/rope.h"

#include <cmath>

#include <torch/torch.h>

#include "moetron/core/error.h"

namespace moetron::model {

double yarn_get_mscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

namespace {

// Dimension index whose wavelength completes `num_rotations` turns over the original context.
double yarn_correction_dim(double num_rotations, int64_t dim, double base, int64_t max_pos) {
  return (dim * std::log(max_pos / (num_rotations * 2 * M_PI))) / (2 * std::log(base));
}

}  // namespace

torch::Tensor rope_inv_freq(int64_t rope_dim, double theta,
                            const std::optional<config::RopeScaling>& scaling) {
  MOETRON_CHECK_CONFIG(rope_dim > 0 && rope_dim % 2 == 0,
                       "mla.qk_rope_head_dim must be positive and even, got ", rope_dim);
  // base^(2j/dim) in fp32, as HF: arange(0, dim, 2).float() / dim.
  auto exponent_R = torch::arange(0, rope_dim, 2, torch::kInt64).to(torch::kFloat32) / rope_dim;
  auto pos_freqs_R = torch::pow(static_cast<float>(theta), exponent_R);
  auto inv_freq_R = 1.0 / pos_freqs_R;
  if (!scaling) return inv_freq_R;

  const auto& s = *scaling;
  MOETRON_CHECK_CONFIG(s.type == "yarn", "model.rope_scaling.type: expected 'yarn', got '", s.type,
                       "'");
  MOETRON_CHECK_CONFIG(s.factor >= 1.0, "model.rope_scaling.factor must be >= 1, got ", s.factor);
  auto inv_interp_R = 1.0 / (s.factor * pos_freqs_R);
  // Ramp bounds truncated to integers (HF truncate=True, official floor/ceil).
  double low = std::floor(
      yarn_correction_dim(s.beta_fast, rope_dim, theta, s.original_max_position_embeddings));
  double high = std::ceil(
      yarn_correction_dim(s.beta_slow, rope_dim, theta, s.original_max_position_embeddings));
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(rope_dim - 1));
  if (low == high) high += 0.001;  // avoid 0/0 in the ramp
  auto ramp_R = ((torch::arange(rope_dim / 2, torch::kFloat32) - low) / (high - low)).clamp(0, 1);
  auto extrapolation_R = 1 - ramp_R;  // 1 keeps the original frequency
  return inv_interp_R * (1 - extrapolation_R) + inv_freq_R * extrapolation_R;
}

double softmax_scale(const config::ModelConfig& model, const config::MlaConfig& mla) {
  double scale = 1.0 / std::sqrt(static_cast<double>(mla.qk_nope_head_dim + mla.qk_rope_head_dim));
  if (model.rope_scaling && model.rope_scaling->mscale_all_dim != 0.0) {
    const double m =
        yarn_get_mscale(model.rope_scaling->factor, model.rope_scaling->mscale_all_dim);
    scale *= m * m;
  }
  return scale;
}

RotaryEmbedding::RotaryEmbedding(int64_t rope_dim, double theta,
                                 const std::optional<config::RopeScaling>& scaling)
    : rope_dim_(rope_dim), inv_freq_(rope_inv_freq(rope_dim, theta, scaling)) {
  // HF _compute_yarn_parameters: ratio of the two mscales when both are set (1.0 for every
  // DeepSeek config), else the plain YaRN factor on cos/sin.
  if (scaling) {
    attention_factor_ = (scaling->mscale != 0.0 && scaling->mscale_all_dim != 0.0)
                            ? yarn_get_mscale(scaling->factor, scaling->mscale) /
                                  yarn_get_mscale(scaling->factor, scaling->mscale_all_dim)
                            : yarn_get_mscale(scaling->factor, 1.0);
  }
}

RotaryEmbedding::RotaryEmbedding(const config::Config& cfg)
    : RotaryEmbedding(cfg.mla.qk_rope_head_dim, cfg.model.rope_theta, cfg.model.rope_scaling) {}

torch::Tensor RotaryEmbedding::inv_freq_on(const torch::Device& device) const {
  if (device.is_cpu()) return inv_freq_;
  std::lock_guard<std::mutex> lock(mu_);
  auto& t = per_device_[device.str()];
  if (!t.defined()) t = inv_freq_.to(device);
  return t;
}

RopeAngles RotaryEmbedding::angles(const torch::Tensor& position_ids_BT,
                                   torch::ScalarType dtype) const {
  MOETRON_CHECK(position_ids_BT.dim() == 2, "position_ids: expected [B, T], got ",
                position_ids_BT.sizes());
  auto inv_freq_R = inv_freq_on(position_ids_BT.device());
  auto freqs_BTR = position_ids_BT.to(torch::kFloat32).unsqueeze(-1) * inv_freq_R;
  auto cos_BTR = freqs_BTR.cos();
  auto sin_BTR = freqs_BTR.sin();
  if (attention_factor_ != 1.0) {
    cos_BTR = cos_BTR * attention_factor_;
    sin_BTR = sin_BTR * attention_factor_;
  }
  return {cos_BTR.to(dtype), sin_BTR.to(dtype)};
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// y = x · rot on interleaved pairs read as complex numbers (x[2j] + i·x[2j+1]); rot broadcasts.
// Written into a fresh real tensor so the result is no view (callers may modify it in place).
torch::Tensor rotate_pairs(const torch::Tensor& x, const torch::Tensor& rot) {
  auto pairs = x.unflatten(-1, {x.size(-1) / 2, 2});
  bool complex_view_ok = pairs.stride(-1) == 1 && pairs.storage_offset() % 2 == 0;
  for (int64_t d = 0; d + 1 < pairs.dim(); ++d) complex_view_ok &= pairs.stride(d) % 2 == 0;
  if (!complex_view_ok) pairs = pairs.contiguous();
  auto y = torch::empty(x.sizes(), x.options());
  auto y_complex = torch::view_as_complex(y.unflatten(-1, {x.size(-1) / 2, 2}));
  at::mul_out(y_complex, torch::view_as_complex(pairs), rot);
  return y;
}

// The rotation travels wrapped so autograd does not treat it as a differentiable input.
struct Rotation {
  torch::Tensor rot;  // complex e^{iθ}, broadcastable to x's pairs
};

// The interleaved rotation is complex multiplication by e^{iθ}: one kernel each way instead of
// the real formula's eight elementwise ops and their backward nodes. Its backward rotates the
// gradient back: dx = dy · e^{-iθ}.
struct InterleavedRotation : public torch::autograd::Function<InterleavedRotation> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const Rotation& r) {
    ctx->saved_data["rot"] = r.rot;
    return rotate_pairs(x, r.rot);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto rot = ctx->saved_data["rot"].toTensor();
    return {rotate_pairs(grad_outputs[0], rot.conj()), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor apply_rope_interleaved(const torch::Tensor& x, const RopeAngles& angles) {
  const int64_t P = x.size(-1);
  MOETRON_CHECK(P == 2 * angles.cos_BTR.size(-1), "apply_rope_interleaved: rope dim ", P,
                " does not match ", angles.cos_BTR.size(-1), " frequencies");
  MOETRON_CHECK(x.dim() == 3 || x.dim() == 4, "apply_rope_interleaved: expected [B,T,P] or ",
                "[B,T,H,P], got ", x.sizes());
  auto cos = angles.cos_BTR.to(x.scalar_type());
  auto sin = angles.sin_BTR.to(x.scalar_type());
  if (x.dim() == 4) {  // broadcast over heads
    cos = cos.unsqueeze(2);
    sin = sin.unsqueeze(2);
  }
  if (x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kFloat64) {
    return InterleavedRotation::apply(x, Rotation{torch::complex(cos, sin)});
  }
  // No complex type for bf16: the real formula, in x's dtype.
  auto pairs = x.unflatten(-1, {P / 2, 2});
  auto x_even = pairs.select(-1, 0);
  auto x_odd = pairs.select(-1, 1);
  auto y_even = x_even * cos - x_odd * sin;
  auto y_odd = x_even * sin + x_odd * cos;
  return torch::stack({y_even, y_odd}, -1).flatten(-2);
}

torch::Tensor default_position_ids(int64_t B, int64_t T, const torch::Device& device) {
  return torch::arange(T, torch::TensorOptions().dtype(torch::kInt64).device(device))
      .unsqueeze(0)
      .expand({B, T});
}

}  // namespace moetron::model
