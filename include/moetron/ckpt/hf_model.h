// A model and an HF checkpoint directory in one call each: load_hf_model reads config.json +
// safetensors into a DeepseekV3ForCausalLM; save_hf_model writes one back in HF's layout.
#pragma once

#include <string>

#include <torch/torch.h>

#include "moetron/ckpt/hf_checkpoint.h"
#include "moetron/config/config.h"
#include "moetron/model/model.h"

namespace moetron::ckpt {

struct LoadedModel {
  config::Config config;  // model sections from config.json, the rest defaults
  model::DeepseekV3ForCausalLM model{nullptr};
  HfConfigInfo info;
};

// Builds the model from `dir`/config.json and copies the checkpoint in (FP8 weights are
// dequantised); the model is fp32 on the CPU in eval mode. `base` supplies every non-model
// section (training settings, kernels, ...). Errors name the directory and list all missing
// or unexpected tensors.
LoadedModel load_hf_model(const std::string& dir, const config::Config& base = {});

// The HF model-config part of a full config.
HfModelConfig hf_model_config(const config::Config& cfg);

// Writes `model` as an HF checkpoint directory (config.json + safetensors, sharded above
// max_shard_bytes). Refuses a non-empty `dir` unless overwrite.
void save_hf_model(const std::string& dir, model::DeepseekV3ForCausalLM& model,
                   torch::ScalarType dtype, uint64_t max_shard_bytes = kDefaultMaxShardBytes,
                   bool overwrite = false);

}  // namespace moetron::ckpt
