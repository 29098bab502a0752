// Mixed precision for training and eval: `train.dtype: bf16` runs the forward pass under
// LibTorch autocast (matmuls in bf16, reductions and the losses in fp32) while parameters,
// gradients and optimizer state stay fp32 (master weights). Backward runs outside the guard.
#pragma once

#include <ATen/autocast_mode.h>
#include <torch/types.h>

#include <string>

namespace moetron::train {

class AutocastGuard {
 public:
  // Enabled when `dtype` is "bf16"; a no-op for "fp32".
  AutocastGuard(const torch::Device& device, const std::string& dtype)
      : type_(device.type()), enabled_(dtype == "bf16") {
    if (!enabled_) return;
    prev_enabled_ = at::autocast::is_autocast_enabled(type_);
    prev_dtype_ = at::autocast::get_autocast_dtype(type_);
    at::autocast::set_autocast_dtype(type_, at::kBFloat16);
    at::autocast::set_autocast_enabled(type_, true);
  }
  ~AutocastGuard() {
    if (!enabled_) return;
    at::autocast::set_autocast_enabled(type_, prev_enabled_);
    at::autocast::set_autocast_dtype(type_, prev_dtype_);
    // Casted weight copies are cached per autocast region; drop them with the region.
    at::autocast::clear_cache();
  }
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  at::DeviceType type_;
  bool enabled_;
  bool prev_enabled_ = false;
  at::ScalarType prev_dtype_ = at::kBFloat16;
};

}  // namespace moetron::train
