// The pretraining / SFT trainer (SPEC 4.3, 6): AdamW with the LR schedule, gradient
// accumulation and clipping, MTP and balance losses, the aux-loss-free bias update after each
// optimizer step, Selective Language Modeling, periodic eval, a NaN/Inf guard, checkpoints
// with exact resume, and SIGINT/SIGTERM handled at step boundaries.
#pragma once

#include <cstdint>
#include <string>

#include "moetron/config/config.h"
#include "moetron/train/evaluate.h"

namespace moetron::train {

struct TrainOptions {
  // A checkpoint (or run / checkpoints directory) to resume from; overrides ckpt.resume.
  std::string resume;
};

struct TrainResult {
  int64_t steps = 0;        // optimizer steps done in total (including before a resume)
  double last_loss = 0;     // loss of the last step (GRPO: its mean reward)
  EvalResult eval;          // the final evaluation
  std::string run_dir;      // runs/<name>
  std::string checkpoint;   // the last checkpoint written
  double seconds = 0;       // wall time of this invocation
  double tokens_per_s = 0;  // training tokens per second of this invocation
};

// Runs cfg.train.stage (pretrain | sft | grpo) in runs/<log.name>. Throws moetron::Error: config
// problems (kConfig), an interrupt after saving a checkpoint (kInterrupted), too many
// consecutive non-finite steps (kRuntime, naming the step).
TrainResult train(const config::Config& cfg, const TrainOptions& options = {});

// The device train.device names: "cpu", "cuda" (a config error when none is visible) or "auto"
// (CUDA when visible, else CPU).
torch::Device resolve_device(const std::string& name);

}  // namespace moetron::train
