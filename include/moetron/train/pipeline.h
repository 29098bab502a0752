// `moetron run`: the DeepSeek-R1 recipe in one command on the built-in task (or the configured
// data): make the task data, pretrain, cold-start SFT, GRPO, evaluate after each stage. Every stage
// is a normal training run under runs/<log.name>/<stage>, so rerunning resumes where it stopped.
#pragma once

#include <string>
#include <vector>

#include "moetron/config/config.h"
#include "moetron/train/trainer.h"

namespace moetron::train {

struct StageResult {
  std::string stage;  // pretrain | sft | grpo
  TrainResult result;
};

std::vector<StageResult> run_pipeline(const config::Config& cfg);

// The per-stage accuracy table printed at the end of `moetron run`.
std::string format_stage_table(const std::vector<StageResult>& stages);

}  // namespace moetron::train
