// The pretrain -> SFT -> GRPO pipeline over the configured stages (see pipeline.h).
#include "moetron/train/pipeline.h"

#include <cstdio>
#include <filesystem>

#include "moetron/core/error.h"
#include "moetron/core/logging.h"
#include "moetron/data/tasks.h"

namespace fs = std::filesystem;

namespace moetron::train {

std::vector<StageResult> run_pipeline(const config::Config& cfg) {
  const fs::path root = fs::path(cfg.log.run_dir) / cfg.log.name;
  config::Config base = cfg;
  base.log.run_dir = root.string();
  // Built-in task data as files in the run directory, so users can read what the model saw.
  const bool builtin = cfg.data.train_path.empty();
  std::string data_dir = (root / "data").string();
  if (builtin) {
    if (!fs::exists(fs::path(data_dir) / "meta.json")) {
      data::make_task_data(
          cfg.data.task, data_dir,
          data::task_options(cfg.data, static_cast<uint64_t>(cfg.data.shuffle_seed),
                             cfg.sft.think_open, cfg.sft.think_close));
      log::info("wrote built-in task '", cfg.data.task, "' data to ", data_dir);
    }
    base.data.eval_path = data_dir + "/eval.jsonl";
  }

  std::vector<StageResult> out;
  std::string previous;  // run directory of the previous stage
  if (cfg.pipeline.pretrain_steps > 0) {
    config::Config c = base;
    c.train.stage = config::Stage::kPretrain;
    c.train.steps = cfg.pipeline.pretrain_steps;
    c.optim.warmup_steps = std::min(c.optim.warmup_steps, c.train.steps);
    c.log.name = "pretrain";
    if (builtin) c.data.train_path = data_dir + "/pretrain.jsonl";
    log::info("=== stage pretrain: ", c.train.steps, " steps");
    out.push_back({"pretrain", train(c)});
    previous = out.back().result.run_dir;
  }
  if (cfg.pipeline.sft_steps > 0) {
    config::Config c = base;
    c.train.stage = config::Stage::kSft;
    c.train.steps = cfg.pipeline.sft_steps;
    c.optim.lr = cfg.pipeline.sft_lr;
    c.optim.min_lr = cfg.pipeline.sft_min_lr;
    c.optim.warmup_steps = cfg.pipeline.sft_warmup_steps;
    c.log.name = "sft";
    if (!previous.empty()) c.train.init_from = previous;
    if (builtin) c.data.train_path = data_dir + "/sft.jsonl";
    log::info("=== stage sft: ", c.train.steps, " steps", previous.empty() ? "" : " from ",
              previous);
    out.push_back({"sft", train(c)});
    previous = out.back().result.run_dir;
  }
  if (cfg.pipeline.grpo_steps > 0) {
    // GRPO after SFT (R1), or straight from the pretrained model with the R1-Zero template
    // (R1-Zero) when SFT is skipped.
    config::Config c = base;
    c.train.stage = config::Stage::kGrpo;
    c.train.steps = cfg.pipeline.grpo_steps;
    c.optim.lr = cfg.pipeline.grpo_lr;
    c.optim.min_lr = cfg.pipeline.grpo_min_lr;
    c.optim.warmup_steps = cfg.pipeline.grpo_warmup_steps;
    if (cfg.pipeline.sft_steps == 0 && !c.rl.r1_zero) {
      log::warn(
          "GRPO without SFT uses the R1 chat template; set rl.r1_zero: true for the "
          "R1-Zero template a base model can follow");
    }
    c.log.name = "grpo";
    if (!previous.empty()) c.train.init_from = previous;
    if (builtin) c.data.train_path = data_dir + "/rl.jsonl";
    log::info("=== stage grpo: ", c.train.steps, " steps", c.rl.r1_zero ? " (R1-Zero)" : "",
              previous.empty() ? "" : " from ", previous);
    out.push_back({"grpo", train(c)});
  }
  MOETRON_CHECK_CONFIG(!out.empty(),
                       "pipeline.pretrain_steps, sft_steps and grpo_steps are all 0: "
                       "nothing to run");
  return out;
}

std::string format_stage_table(const std::vector<StageResult>& stages) {
  std::string text =
      "stage      steps   loss/reward   eval loss   held-out accuracy   tokens/s   wall\n";
  for (const auto& s : stages) {
    const auto& r = s.result;
    char acc[48] = "-";
    if (r.eval.total > 0) {
      std::snprintf(acc, sizeof(acc), "%5.1f%% (%ld/%ld)", 100 * r.eval.accuracy,
                    static_cast<long>(r.eval.correct), static_cast<long>(r.eval.total));
    }
    char line[256];
    std::snprintf(line, sizeof(line), "%-9s %6ld   %11.4f   %9.4f   %-18s  %8.0f   %6.1fs\n",
                  s.stage.c_str(), static_cast<long>(r.steps), r.last_loss, r.eval.loss, acc,
                  r.tokens_per_s, r.seconds);
    text += line;
  }
  return text;
}

}  // namespace moetron::train
