// `moetron eval CONFIG --model PATH [overrides]`: held-out loss and task accuracy of a
// checkpoint (training checkpoint, run directory or HF directory); one JSON line on stdout.
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <iostream>

#include "command.h"
#include "moetron/config/loader.h"
#include "moetron/data/tokenizer.h"
#include "moetron/train/evaluate.h"

namespace moetron::cli {

Run setup_eval(CLI::App& app) {
  auto args = std::make_shared<ConfigArgs>();
  auto model_path = std::make_shared<std::string>();
  add_config_args(app, args, true);
  app.add_option("--model", *model_path,
                 "Checkpoint to evaluate: a training checkpoint, a run or checkpoints "
                 "directory (its latest valid checkpoint), or an HF directory")
      ->required();
  return [args, model_path]() {
    auto cfg = config::load_file(args->path, args->overrides);
    auto tokenizer = data::load_tokenizer(cfg.data.tokenizer);
    torch::manual_seed(cfg.train.seed);
    model::DeepseekV3ForCausalLM model(cfg);
    train::load_model_weights(*model_path, model);
    auto r = train::evaluate(model, cfg, *tokenizer);
    nlohmann::json out{
        {"model", *model_path}, {"eval_loss", r.loss}, {"eval_tokens", r.loss_tokens}};
    if (r.total > 0) {
      out["accuracy"] = r.accuracy;
      out["correct"] = r.correct;
      out["total"] = r.total;
    }
    if (r.samples > 0) {
      out["pass@1"] = r.sampled_pass1;
      out["samples"] = r.samples;
    }
    std::cout << out.dump() << "\n";
    return 0;
  };
}

}  // namespace moetron::cli
