// Batch -> tensors, chat options from the config.
#include "moetron/train/batch_tensors.h"

#include <torch/torch.h>

#include "moetron/core/error.h"

namespace moetron::train {

BatchTensors to_tensors(const data::Batch& b, const torch::Device& device) {
  auto make = [&](const std::vector<int64_t>& v) {
    return torch::tensor(v, torch::kLong).view({b.batch_size, b.seq_len}).to(device);
  };
  BatchTensors t;
  t.input_ids = make(b.input_ids);
  t.labels = make(b.labels);
  t.position_ids = make(b.position_ids);
  t.segment_ids = make(b.segment_ids);
  t.tokens = b.num_target_tokens;
  return t;
}

BatchTensors to_tensors(const data::Batch& b, const torch::Device& device, int64_t first_row,
                        int64_t rows) {
  if (first_row == 0 && rows == b.batch_size) return to_tensors(b, device);
  MOETRON_CHECK(first_row >= 0 && rows > 0 && first_row + rows <= b.batch_size, "rows [", first_row,
                ", ", first_row + rows, ") of a batch of ", b.batch_size);
  auto make = [&](const std::vector<int64_t>& v) {
    return torch::tensor(v, torch::kLong)
        .view({b.batch_size, b.seq_len})
        .narrow(0, first_row, rows);
  };
  BatchTensors t;
  t.labels = make(b.labels);
  t.tokens = (t.labels.narrow(1, 1, b.seq_len - 1) != data::kIgnoreLabel).sum().item<int64_t>();
  t.labels = t.labels.to(device);
  t.input_ids = make(b.input_ids).to(device);
  t.position_ids = make(b.position_ids).to(device);
  t.segment_ids = make(b.segment_ids).to(device);
  return t;
}

data::ChatTemplateOptions chat_options(const config::Config& cfg) {
  data::ChatTemplateOptions o =
      cfg.data.tokenizer == "byte" ? data::ChatTemplateOptions{} : data::deepseek_chat_options();
  o.think_open = cfg.sft.think_open;
  o.think_close = cfg.sft.think_close;
  o.loss_on_prompt = cfg.sft.loss_on_prompt;
  if (cfg.rl.r1_zero) o.format = data::ChatFormat::kR1Zero;
  return o;
}

}  // namespace moetron::train
