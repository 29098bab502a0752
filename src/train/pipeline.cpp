// The pretrain -> SFT -> GRPO pipeline over the configured stages (see pipeline.h).
#include "moetron/train/pipeline.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "moetron/core/error.h"
#include "moetron/core/logging.h"
#include "moetron/data/tasks.h"
#include "moetron/dist/comm.h"
#include "session.h"

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
    // Distributed: rank 0 writes the files, the others wait for them (the process groups made
    // here are the ones every stage then reuses).
    torch::Device device = resolve_device(cfg.train.device);
    auto comm = dist::init_from_env(cfg, device, &device);
    dist::on_rank0(
        comm->world(),
        [&] {
          if (fs::exists(fs::path(data_dir) / "meta.json")) return;
          data::make_task_data(cfg.data.task, data_dir, data::task_options(cfg));
          log::info("wrote built-in task '", cfg.data.task, "' data to ", data_dir);
        },
        "pipeline data");
    base.data.eval_path = data_dir + "/eval.jsonl";
  }

  std::vector<StageResult> out;
  std::string previous;  // run directory of the previous stage
  // One stage: `base` with the stage's own steps / schedule, in runs/<name>/<stage>, starting
  // from the previous stage's weights, on the built-in task's `data_file` when there is one.
  auto run_stage = [&](const char* name, config::Config c, config::Stage stage, int64_t steps,
                       const char* data_file) {
    c.train.stage = stage;
    c.train.steps = steps;
    c.log.name = name;
    if (!previous.empty()) c.train.init_from = previous;
    if (builtin) c.data.train_path = data_dir + "/" + data_file;
    log::info("=== stage ", name, ": ", steps, " steps",
              stage == config::Stage::kGrpo && c.rl.r1_zero ? " (R1-Zero)" : "",
              previous.empty() ? "" : " from ", previous);
    out.push_back({name, train(c)});
    previous = out.back().result.run_dir;
  };
  if (cfg.pipeline.pretrain_steps > 0) {
    config::Config c = base;
    c.optim.warmup_steps = std::min(c.optim.warmup_steps, cfg.pipeline.pretrain_steps);
    run_stage("pretrain", c, config::Stage::kPretrain, cfg.pipeline.pretrain_steps,
              "pretrain.jsonl");
  }
  if (cfg.pipeline.sft_steps > 0) {
    config::Config c = base;
    c.optim.lr = cfg.pipeline.sft_lr;
    c.optim.min_lr = cfg.pipeline.sft_min_lr;
    c.optim.warmup_steps = cfg.pipeline.sft_warmup_steps;
    run_stage("sft", c, config::Stage::kSft, cfg.pipeline.sft_steps, "sft.jsonl");
  }
  if (cfg.pipeline.grpo_steps > 0) {
    // GRPO after SFT (R1), or straight from the pretrained model (R1-Zero) when SFT is skipped.
    config::Config c = base;
    c.optim.lr = cfg.pipeline.grpo_lr;
    c.optim.min_lr = cfg.pipeline.grpo_min_lr;
    c.optim.warmup_steps = cfg.pipeline.grpo_warmup_steps;
    if (cfg.pipeline.sft_steps == 0 && !c.rl.r1_zero) {
      log::warn(
          "GRPO without SFT uses the R1 chat template; set rl.r1_zero: true for the "
          "R1-Zero template a base model can follow");
    }
    run_stage("grpo", c, config::Stage::kGrpo, cfg.pipeline.grpo_steps, "rl.jsonl");
  }
  MOETRON_CHECK_CONFIG(!out.empty(),
                       "pipeline.pretrain_steps, sft_steps and grpo_steps are all 0: "
                       "nothing to run");
  return out;
}

std::string format_stage_table(const std::vector<StageResult>& stages) {
  // The sampled pass@1 column appears when any stage measured it (train.eval_samples > 0).
  int64_t samples = 0;
  for (const auto& s : stages) samples = std::max(samples, s.result.eval.samples);
  std::string text = "stage      steps   loss/reward   eval loss   held-out accuracy";
  if (samples > 0) text += str_cat("   pass@1 (", samples, " samples)");
  text += "   tokens/s   wall\n";
  for (const auto& s : stages) {
    const auto& r = s.result;
    char acc[48] = "-";
    if (r.eval.total > 0) {
      std::snprintf(acc, sizeof(acc), "%5.1f%% (%ld/%ld)", 100 * r.eval.accuracy,
                    static_cast<long>(r.eval.correct), static_cast<long>(r.eval.total));
    }
    char line[256];
    std::snprintf(line, sizeof(line), "%-9s %6ld   %11.4f   %9.4f   %-18s", s.stage.c_str(),
                  static_cast<long>(r.steps), r.last_loss, r.eval.loss, acc);
    text += line;
    if (samples > 0) {
      char pass[48] = "-";
      if (r.eval.samples > 0)
        std::snprintf(pass, sizeof(pass), "%5.1f%%", 100 * r.eval.sampled_pass1);
      std::snprintf(line, sizeof(line), "   %-18s", pass);
      text += line;
    }
    std::snprintf(line, sizeof(line), "  %8.0f   %6.1fs\n", r.tokens_per_s, r.seconds);
    text += line;
  }
  return text;
}

}  // namespace moetron::train
