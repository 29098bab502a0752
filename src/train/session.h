// What every training stage opens the same way (trainer.cpp for pretrain / SFT, grpo.cpp for
// GRPO): the resolved config, the device, the resume decision, the run directory and its log
// file, the tokenizer, the model (initialised from train.init_from unless resuming) and AdamW.
// Internal to the train module.
#pragma once

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "moetron/ckpt/train_checkpoint.h"
#include "moetron/config/config.h"
#include "moetron/core/run_dir.h"
#include "moetron/data/tokenizer.h"
#include "moetron/dist/comm.h"
#include "moetron/dist/data_parallel.h"
#include "moetron/model/model.h"
#include "moetron/train/metrics.h"
#include "moetron/train/trainer.h"

namespace moetron::train {

// Adds the run's log file as a sink until destroyed.
class LogFileGuard {
 public:
  explicit LogFileGuard(const std::string& path);
  ~LogFileGuard();
  LogFileGuard(const LogFileGuard&) = delete;
  LogFileGuard& operator=(const LogFileGuard&) = delete;
};

struct Session {
  // Declared first so it is destroyed last (after the model whose dispatchers use its groups).
  std::shared_ptr<dist::Comm> comm;  // world of one unless launched distributed
  config::Config cfg;                // validated; ckpt.resume overridden by TrainOptions::resume
  std::string yaml;  // config::dump(cfg), stored in the run directory and checkpoints
  torch::Device device{torch::kCPU};
  std::optional<std::string> resume_from;  // the checkpoint to resume, if any
  RunDir run;
  std::unique_ptr<LogFileGuard> log_file;
  std::unique_ptr<data::Tokenizer> tokenizer;
  model::DeepseekV3ForCausalLM model{nullptr};  // on `device`, in train mode
  std::unique_ptr<torch::optim::AdamW> optimizer;
  std::vector<torch::Tensor> params;       // the trainable parameters (for clipping)
  std::unique_ptr<dist::DataParallel> dp;  // gradient / metric reduction over the ranks

  bool main_rank() const { return comm->rank() == 0; }
  int64_t rank() const { return comm->rank(); }
  int64_t world() const { return comm->world_size(); }
};

// Writes runs/<name>/checkpoints/step-<step> (model, AdamW, the config text and the stage's own
// loader state and extras), keeping ckpt.keep_last; logs and returns its path.
std::string save_checkpoint(Session& session, int64_t step, std::string loader_state,
                            nlohmann::json extra);

// Validates the config, decides the resume checkpoint (ckpt.resume: auto | none | path), opens
// runs/<log.name>, builds the model (seeded with train.seed) and loads train.init_from unless
// resuming (the caller loads the checkpoint, with its own state). Logs the run's header line.
Session open_session(const config::Config& cfg, const TrainOptions& options);

// At a step boundary: if SIGINT / SIGTERM arrived (at any rank: the ranks agree through one
// all-reduce, so they all stop at the same step), saves a checkpoint through `save` (which
// returns its path) and throws Error(kInterrupted) naming the step and the checkpoint.
void stop_if_interrupted(Session& session, int64_t step, const std::function<std::string()>& save);

// Loads a training checkpoint into the session's model and optimizer (this rank's share).
ckpt::TrainState load_checkpoint(Session& session, const std::string& path);

// After optimizer step `step`: the periodic (train.eval_every) and final evaluation, logged and
// written to `metrics`, then the periodic (ckpt.save_every) and final checkpoint via `save`.
void evaluate_and_save(int64_t step, const config::Config& cfg, model::DeepseekV3ForCausalLM& model,
                       const data::Tokenizer& tokenizer, MetricsLog& metrics, TrainResult& result,
                       const std::function<void(int64_t)>& save);

// A frozen copy of the architecture with the weights at `path` (SLM and KL reference models).
model::DeepseekV3ForCausalLM frozen_model(const config::Config& cfg, const std::string& path,
                                          const torch::Device& device);

// The GRPO stage (grpo.cpp); train() dispatches to it for train.stage: grpo.
TrainResult train_grpo(const config::Config& cfg, const TrainOptions& options);

}  // namespace moetron::train
