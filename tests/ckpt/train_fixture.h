// A tiny DeepSeek-V3 training setup shared by the training-checkpoint tests and the crash
// helper: deterministic model, AdamW over both groups, and one step that consumes RNG.
#pragma once

#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>

#include "model/tiny.h"
#include "moetron/model/bias_update.h"
#include "moetron/model/model.h"
#include "moetron/optim/optimizer.h"

namespace moetron::ckpt::testing {

struct TinyTrainer {
  config::Config cfg;
  model::DeepseekV3ForCausalLM model{nullptr};
  std::unique_ptr<torch::optim::AdamW> optimizer;
};

// Parameters drawn from the global generator after torch::manual_seed(seed).
inline TinyTrainer make_trainer(uint64_t seed, int64_t vocab_size = 61, int64_t layers = 3) {
  TinyTrainer t;
  t.cfg = model::testing::tiny_config();
  t.cfg.model.vocab_size = vocab_size;
  t.cfg.model.num_hidden_layers = layers;
  t.cfg.optim.lr = 1e-2;  // large, so every step visibly moves the weights
  torch::manual_seed(seed);
  t.model = model::DeepseekV3ForCausalLM(t.cfg);
  t.optimizer = optim::make_adamw(*t.model, t.cfg.optim);
  return t;
}

// Fixed token ids that do not depend on the global generator.
inline torch::Tensor fixed_batch(int64_t vocab_size, int64_t B = 2, int64_t T = 12) {
  auto gen = at::detail::createCPUGenerator(1234);
  return torch::randint(0, vocab_size, {B, T}, gen, torch::kInt64);
}

// One training step as the trainer does it, plus token dropout drawn from the global generator
// (so a resume is only exact when the RNG state is restored). Returns the loss (detached).
inline torch::Tensor train_step(TinyTrainer& t, const torch::Tensor& ids_BT) {
  t.optimizer->zero_grad();
  // Drawn on the batch's device: the CPU generator on CPU, the device's generator on CUDA.
  const auto keep_BT = torch::rand(ids_BT.sizes(), ids_BT.options().dtype(torch::kFloat)) > 0.2;
  const auto noise_BT = torch::randint(0, t.cfg.model.vocab_size, ids_BT.sizes(), ids_BT.options());
  const auto input_BT = torch::where(keep_BT, ids_BT, noise_BT);
  auto out = t.model->forward(input_BT, ids_BT);
  out.loss.backward();
  optim::clip_grad_norm(t.model->parameters(), 1.0);
  t.optimizer->step();
  model::update_expert_bias(t.model, out.expert_counts_ME, t.cfg.moe.bias_update_speed);
  return out.loss.detach().clone();
}

}  // namespace moetron::ckpt::testing
