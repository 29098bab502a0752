// A data::Batch (flat vectors) as tensors on a device, and the chat options from the config.
#pragma once

#include <torch/types.h>

#include "moetron/config/config.h"
#include "moetron/data/batch.h"
#include "moetron/data/chat_template.h"

namespace moetron::train {

struct BatchTensors {
  torch::Tensor input_ids, labels, position_ids, segment_ids;  // int64 [B, T]
  int64_t tokens = 0;  // target tokens (labels the shifted loss counts)
};
BatchTensors to_tensors(const data::Batch& batch, const torch::Device& device);
// Rows [first_row, first_row + rows) only: a rank's share of a global micro-batch.
BatchTensors to_tensors(const data::Batch& batch, const torch::Device& device, int64_t first_row,
                        int64_t rows);

// The chat template the configured stage uses (R1 format, sft.think_* and sft.loss_on_prompt;
// DeepSeek's token strings when the tokenizer is an HF tokenizer.json).
data::ChatTemplateOptions chat_options(const config::Config& cfg);

}  // namespace moetron::train
