// Evaluation: loss on held-out batches and task accuracy by greedy decoding of held-out prompts
// (the built-in task's eval set, or data.eval_path), checked with the task's answer checker.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "moetron/config/config.h"
#include "moetron/data/tokenizer.h"
#include "moetron/model/model.h"

namespace moetron::train {

struct EvalResult {
  double loss = 0;          // mean next-token loss over the eval batches' target tokens
  int64_t loss_tokens = 0;  // target tokens in that mean
  double accuracy = 0;      // correct / total
  int64_t correct = 0;
  int64_t total = 0;  // 0 when the eval data has no answers to check
  // train.eval_samples > 0: the fraction of k sampled completions per prompt that are correct
  // (pass@1 estimated from k samples), over the same prompts.
  int64_t samples = 0;  // k; 0 when not measured
  double sampled_pass1 = 0;
};

struct EvalPrompt {
  std::string prompt;
  std::string answer;
  std::string task;
};

// The first n held-out prompts with answers: data.eval_path when set, else the built-in task's
// eval set (never in any training file).
std::vector<EvalPrompt> load_eval_prompts(const config::Config& cfg, int64_t n);

// Loss over train.eval_batches held-out micro-batches of the configured stage (sft-style for
// grpo) and accuracy over train.eval_batches * train.micro_batch_size prompts (greedy, at most
// rl.max_new_tokens new tokens); with train.eval_samples = k > 0 also pass@1 over k samples per
// prompt (rl.* sampling, a fixed seed, so every evaluation of a run draws alike). Restores the
// model's training mode.
EvalResult evaluate(model::DeepseekV3ForCausalLM& model, const config::Config& cfg,
                    const data::Tokenizer& tokenizer);

// The metrics-file record of an evaluation: {"step", "eval_loss", "eval_tokens"} and, when
// answers were checked, "eval_accuracy", "eval_correct", "eval_total", and with samples
// "eval_pass@1", "eval_samples".
nlohmann::json eval_record(int64_t step, const EvalResult& e);

// Loads weights into `model` from an HF directory (config.json), a training checkpoint
// directory (manifest.json, verified first), or a run / checkpoints directory (its newest valid
// checkpoint). Errors list missing, unexpected and mismatched tensors.
void load_model_weights(const std::string& path, model::DeepseekV3ForCausalLM& model);

// A training checkpoint directory from a checkpoint, checkpoints or run directory path; throws
// naming the path when it holds no valid checkpoint.
std::string resolve_checkpoint(const std::string& path);

}  // namespace moetron::train
