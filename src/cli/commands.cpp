// The list of commands shown by `moetron --help`; add a line here when a command works.
#include "command.h"

namespace moetron::cli {

const std::vector<Command>& commands() {
  static const std::vector<Command> all = {
      {"run", "The whole recipe on the built-in task: data, pretrain, SFT, GRPO, per-stage eval",
       setup_run},
      {"train", "Train one stage (train.stage: pretrain | sft | grpo) with checkpoints and resume",
       setup_train},
      {"eval", "Held-out loss and task accuracy of a checkpoint", setup_eval},
      {"generate", "Sample completions of chat prompts from a checkpoint", setup_generate},
      {"reward", "Score completions with the configured verifiable rewards", setup_reward},
      {"distill", "Rejection sampling: keep verified samples of a model as SFT data",
       setup_distill},
      {"data", "Built-in task data: moetron data make TASK --out DIR", setup_data},
      {"config", "Print the resolved config (or the config reference) and check it", setup_config},
      {"tokenize", "Encode JSONL text to token ids (or decode ids) with a tokenizer",
       setup_tokenize},
      {"score", "Per-token log-probabilities and mean loss of token sequences", setup_score},
      {"launch",
       "Run a moetron command on N local ranks (torchrun-compatible), with teardown and restarts",
       setup_launch},
      {"bench", "Benchmarks: a model's training step against HF transformers; CUDA kernels",
       setup_bench},
      {"convert", "Check an HF DeepSeek checkpoint (or export a training one) and rewrite it",
       setup_convert},
  };
  return all;
}

void add_config_args(CLI::App& app, const std::shared_ptr<ConfigArgs>& args, bool required) {
  auto* path = app.add_option("config", args->path, "Config YAML file (see docs/config.md)");
  if (required) path->required();
  app.add_option("overrides", args->overrides,
                 "Overrides key.sub=value or --key.sub=value (value read as YAML), applied last");
}

}  // namespace moetron::cli
