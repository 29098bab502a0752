// `moetron train CONFIG [overrides] [--resume PATH]`: one training stage (train.stage) in
// runs/<log.name>; `moetron run CONFIG`: pretrain -> SFT with a per-stage accuracy table.
#include <iostream>

#include "command.h"
#include "moetron/config/loader.h"
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

Run setup_run(CLI::App& app) {
  auto args = std::make_shared<ConfigArgs>();
  add_config_args(app, args, true);
  return [args]() {
    auto cfg = config::load_file(args->path, args->overrides);
    auto stages = train::run_pipeline(cfg);
    std::cout << "\n" << train::format_stage_table(stages);
    return 0;
  };
}

}  // namespace moetron::cli
