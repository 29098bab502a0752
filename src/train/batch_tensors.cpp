// Batch -> tensors, chat options from the config.
#include "moetron/train/batch_tensors.h"

#include <torch/torch.h>

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
