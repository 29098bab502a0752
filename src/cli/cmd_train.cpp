// `moetron train CONFIG [overrides] [--resume PATH]`: one training stage (train.stage) in
// runs/<log.name>; `moetron run CONFIG`: pretrain -> SFT with a per-stage accuracy table.
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "moetron/build_config.h"
#include "moetron/core/env.h"
#include "moetron/core/error.h"

#include "command.h"
#include "moetron/config/loader.h"
#include "moetron/dist/env.h"
#include "moetron/train/pipeline.h"
#include "moetron/train/trainer.h"

namespace moetron::cli {

Run setup_train(CLI::App& app) {
  auto args = std::make_shared<ConfigArgs>();
  auto resume = std::make_shared<std::string>();
  add_config_args(app, args, true);
  app.add_option("--resume", *resume,
                 "Resume from this checkpoint (or run / checkpoints directory); default is "
                 "ckpt.resume (auto: the run's latest valid checkpoint)");
  return [args, resume]() {
    auto cfg = config::load_file(args->path, args->overrides);
    train::TrainOptions options;
    options.resume = *resume;
    auto r = train::train(cfg, options);
    std::cout << "trained " << r.steps << " steps in " << r.run_dir << ": loss " << r.last_loss
              << ", eval loss " << r.eval.loss;
    if (r.eval.total > 0) {
      std::cout << ", accuracy " << r.eval.correct << "/" << r.eval.total;
    }
    std::cout << "\ncheckpoint " << r.checkpoint << "\n";
    return 0;
  };
}

namespace {

// Draws each stage's metrics with scripts/plot_metrics.py (matplotlib, from the venv setup.sh
// made; MOETRON_PYTHON overrides the interpreter). Plots are a convenience: a missing Python
// or a failing script is reported, never an error of the run.
void write_plots(const std::vector<train::StageResult>& stages) {
  const std::string python = env::get("MOETRON_PYTHON").value_or(MOETRON_PYTHON_DEFAULT);
  const std::string script = std::string(MOETRON_SOURCE_DIR_DEFAULT) + "/scripts/plot_metrics.py";
  if (!std::filesystem::exists(python) || !std::filesystem::exists(script)) {
    std::cout << "plots skipped: " << python << " or " << script << " not found\n";
    return;
  }
  for (const auto& s : stages) {
    const std::string cmd =
        str_cat("'", python, "' '", script, "' '", s.result.run_dir, "' > /dev/null 2>&1");
    if (std::system(cmd.c_str()) == 0) {
      std::cout << "plots: " << s.result.run_dir << "/plots\n";
    } else {
      std::cout << "plots of " << s.stage << " failed: " << cmd << "\n";
    }
  }
}

}  // namespace

Run setup_run(CLI::App& app) {
  auto args = std::make_shared<ConfigArgs>();
  auto no_plots = std::make_shared<bool>(false);
  add_config_args(app, args, true);
  app.add_flag("--no-plots", *no_plots,
               "Do not draw the stages' metrics (scripts/plot_metrics.py)");
  return [args, no_plots]() {
    auto cfg = config::load_file(args->path, args->overrides);
    auto stages = train::run_pipeline(cfg);
    if (dist::read_dist_env().rank != 0) return 0;  // rank 0 reports for a distributed run
    std::cout << "\n" << train::format_stage_table(stages);
    if (!*no_plots) write_plots(stages);
    return 0;
  };
}

}  // namespace moetron::cli
