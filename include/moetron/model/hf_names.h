// Our parameters <-> HF DeepseekV3 checkpoint names (SPEC 1.10, 3.1): per-expert tensors are
// slices of the stacked experts; MTP module k lives at `model.layers.{num_hidden_layers+k}.`
// with its own copies of the shared embedding and head, as the official release stores them.
#pragma once

#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <torch/types.h>

#include "moetron/model/model.h"

namespace moetron::model {

// Every tensor of the model under its HF name (views, not copies; detached). Includes the
// fp32 e_score_correction_bias buffers; omits lm_head.weight when embeddings are tied.
std::vector<std::pair<std::string, torch::Tensor>> to_hf_tensors(DeepseekV3ForCausalLM& model);

struct HfLoadOptions {
  // Official checkpoints carry MTP layers (`model.layers.{L+k}.*`) that a model built with
  // fewer MTP modules has no place for; HF transformers drops them too. When false they are
  // reported as unexpected.
  bool skip_extra_mtp_layers = true;
};

// Copies every value in (casting dtype, moving device). Throws moetron::Error listing ALL
// missing and ALL unexpected names (sorted) and every shape mismatch (expected vs got); the
// model is left unchanged in that case. MTP copies of embed_tokens / shared_head.head are
// accepted and ignored (a warning is logged when they differ from the shared tensors).
void load_hf_tensors(DeepseekV3ForCausalLM& model,
                     const std::unordered_map<std::string, torch::Tensor>& tensors,
                     const HfLoadOptions& options = {});

}  // namespace moetron::model
