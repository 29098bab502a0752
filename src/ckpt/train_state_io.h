// Internal: the three tensor files of a training checkpoint (model, AdamW state, RNG). Each
// reader is split into prepare (open, check everything, change nothing) and apply (copy in),
// so a load that fails leaves the model, optimizer and generators untouched.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/module.h>
#include <torch/optim/adamw.h>

#include "moetron/ckpt/safetensors_format.h"

namespace moetron::ckpt::detail {

// The optimizer as AdamW, or a moetron::Error naming what is supported.
torch::optim::AdamW& as_adamw(torch::optim::Optimizer& optimizer);

// ---- model: every parameter and buffer under the module's own names --------------------
void save_model_state(const std::string& path, torch::nn::Module& model);

struct PreparedModel {
  std::unique_ptr<SafetensorsFile> file;
  std::vector<std::pair<torch::Tensor, std::string>> copies;  // destination, tensor name in file
};
// Throws a config Error listing every missing / unexpected / mismatched (shape, dtype) name.
PreparedModel prepare_model_load(const std::string& path, torch::nn::Module& model);
void apply_model_load(PreparedModel& prepared);

// ---- AdamW state by parameter name, hyper-parameters in the metadata -------------------
void save_optimizer_state(const std::string& path, torch::nn::Module& model,
                          torch::optim::AdamW& optimizer);

struct PreparedOptimizerParam {
  torch::Tensor param;
  std::string name;
  bool has_state = false;
  bool has_max = false;
};
struct PreparedOptimizer {
  std::unique_ptr<SafetensorsFile> file;
  std::vector<PreparedOptimizerParam> params;
  std::vector<torch::optim::AdamWOptions> group_options;  // one per param group, from the file
};
// Throws listing every parameter without a name in `model`, group membership differences,
// state of the wrong shape/dtype, incomplete state, and state for unknown names.
PreparedOptimizer prepare_optimizer_load(const std::string& path, torch::nn::Module& model,
                                         torch::optim::AdamW& optimizer);
void apply_optimizer_load(PreparedOptimizer& prepared, torch::optim::AdamW& optimizer);

// ---- RNG: the CPU default generator and every CUDA device's ------------------------------
void save_rng_state(const std::string& path);

struct PreparedRng {
  torch::Tensor cpu;
  std::vector<torch::Tensor> cuda;  // per device, only those present now and in the file
};
PreparedRng prepare_rng_load(const std::string& path);
void apply_rng_load(const PreparedRng& prepared);

}  // namespace moetron::ckpt::detail
