// Bridges HF checkpoint directories (hf_checkpoint) and the model's HF names (model/hf_names).
#include "moetron/ckpt/hf_model.h"

#include <unordered_map>

#include "moetron/core/error.h"
#include "moetron/core/logging.h"
#include "moetron/model/hf_names.h"

namespace moetron::ckpt {

HfModelConfig hf_model_config(const config::Config& cfg) {
  return HfModelConfig{cfg.model, cfg.mla, cfg.moe, cfg.mtp};
}

LoadedModel load_hf_model(const std::string& dir, const config::Config& base) {
  HfCheckpoint ckpt = load_hf_checkpoint(dir, HfLoadOptions{torch::kFloat32});
  LoadedModel out;
  out.info = ckpt.config;
  out.config = base;
  out.config.model = ckpt.config.config.model;
  out.config.mla = ckpt.config.config.mla;
  out.config.moe = ckpt.config.config.moe;
  out.config.mtp = ckpt.config.config.mtp;
  model::validate_model_config(out.config);
  out.model = model::DeepseekV3ForCausalLM(out.config);
  std::unordered_map<std::string, torch::Tensor> tensors(ckpt.tensors.begin(), ckpt.tensors.end());
  try {
    model::load_hf_tensors(out.model, tensors);
  } catch (const Error& e) {
    throw Error(e.kind(), str_cat(dir, ": ", e.what()));
  }
  out.model->eval();
  log::info("loaded ", dir, " (", out.info.model_type, ", ", tensors.size(), " tensors)");
  return out;
}

void save_hf_model(const std::string& dir, model::DeepseekV3ForCausalLM& model,
                   torch::ScalarType dtype, uint64_t max_shard_bytes, bool overwrite) {
  save_hf_checkpoint(dir, hf_model_config(model->config()), model::to_hf_tensors(model), dtype,
                     max_shard_bytes, overwrite);
}

}  // namespace moetron::ckpt
