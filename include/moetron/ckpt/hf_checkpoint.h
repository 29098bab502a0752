// HF-format checkpoint directories: config.json <-> our config structs (SPEC 4.1), tensors from
// model.safetensors or a sharded index, FP8 block dequantisation (SPEC 1.10), atomic writing.
// Tensor names are HF's; mapping them to model parameters is src/model's job.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "moetron/ckpt/safetensors.h"
#include "moetron/config/config.h"

namespace moetron::ckpt {

// The model part of a Config, which is what an HF config.json describes.
struct HfModelConfig {
  config::ModelConfig model;
  config::MlaConfig mla;
  config::MoeConfig moe;
  config::MtpConfig mtp;
};

// What config.json said beyond the model shape.
struct HfConfigInfo {
  HfModelConfig config;
  std::string model_type;   // deepseek_v3 | deepseek_v2
  std::string torch_dtype;  // as written ("" when absent)
  bool fp8 = false;         // quantization_config: fp8 e4m3, 128x128 blocks
};

// Parses config.json text. Accepts model_type deepseek_v3 / deepseek_v2; maps every SPEC 4.1
// field; refuses (naming `source` and the key) fields whose values change the math in ways we
// do not implement (rope_interleave false, num_key_value_heads != num_attention_heads,
// head_dim != qk_rope_head_dim, hidden_act != silu, unknown scoring_func / topk_method, a
// non-yarn rope_scaling, an unsupported quantization_config, ...) and unknown keys. Harmless
// bookkeeping keys (architectures, torch_dtype, transformers_version, use_cache, auto_map, ...)
// are ignored. Absent optional fields keep our struct defaults; the shape fields are required.
HfConfigInfo parse_hf_config(const std::string& json_text, const std::string& source);
HfConfigInfo read_hf_config(const std::string& config_json_path);

// config.json text HF's DeepseekV3Config loads: model_type deepseek_v3 (deepseek_v2 when the
// routing is V2-style softmax/greedy, which HF's V3 model cannot compute), architectures,
// num_key_value_heads = num_attention_heads, head_dim = qk_rope_head_dim, rope_interleave true,
// torch_dtype ("float32" / "bfloat16"). parse_hf_config(hf_config_json(c)) == c.
std::string hf_config_json(const HfModelConfig& config, torch::ScalarType dtype);

// Dequantises a block-FP8 weight [out, in] with its fp32 `scale_inv`
// [ceil(out/block), ceil(in/block)]: every block x block tile times its scale (edge tiles of
// non-multiple sizes use the same scale over their smaller extent). Result in `dtype`.
torch::Tensor dequantize_fp8_blocks(const torch::Tensor& weight, const torch::Tensor& scale_inv,
                                    torch::ScalarType dtype, int64_t block = 128);

struct HfLoadOptions {
  // dtype of dequantised FP8 weights; other tensors keep their stored dtype.
  torch::ScalarType fp8_dequant_dtype = torch::kBFloat16;
};

// Tensors of an HF directory: model.safetensors, else model.safetensors.index.json with its
// shards (a name listed twice, a missing or escaping shard file, a tensor missing from its
// shard or present in a shard but not in weight_map are errors). F8_E4M3 weights with a
// sibling `.weight_scale_inv` are dequantised; the scale tensors do not appear in the result.
std::map<std::string, torch::Tensor> load_hf_tensors(const std::string& dir,
                                                     const HfLoadOptions& options = {});

struct HfCheckpoint {
  HfConfigInfo config;
  std::map<std::string, torch::Tensor> tensors;
};
HfCheckpoint load_hf_checkpoint(const std::string& dir, const HfLoadOptions& options = {});

inline constexpr uint64_t kDefaultMaxShardBytes = 5ull << 30;  // HF's default 5 GB

// Writes config.json + model.safetensors, or model-0000i-of-0000N.safetensors shards plus
// model.safetensors.index.json when the data exceeds `max_shard_bytes` (a tensor larger than
// that gets a shard of its own). Floating tensors are cast to `dtype` (kFloat32 or kBFloat16)
// except `*.e_score_correction_bias`, which stays fp32 as in the released checkpoints.
// Everything is written into `<dir>.tmp.<pid>` and renamed into place; an existing non-empty
// `dir` is an error unless `overwrite`, in which case it is swapped out atomically and removed.
void save_hf_checkpoint(const std::string& dir, const HfModelConfig& config,
                        const NamedTensors& tensors, torch::ScalarType dtype = torch::kBFloat16,
                        uint64_t max_shard_bytes = kDefaultMaxShardBytes, bool overwrite = false);

}  // namespace moetron::ckpt
