// `moetron distill CONFIG --model PATH --input PROMPTS.jsonl --output SFT.jsonl [-k 4] ...`:
// R1 stage-3 rejection sampling (train/distill.h does the work): k samples per prompt, the
// verified ones that pass the filters become SFT records; a summary JSON line on stdout.
#include <iostream>

#include "command.h"
#include "moetron/config/loader.h"
#include "moetron/core/logging.h"
#include "moetron/train/distill.h"

namespace moetron::cli {

Run setup_distill(CLI::App& app) {
  struct Args {
    std::shared_ptr<ConfigArgs> config = std::make_shared<ConfigArgs>();
    std::string model, input, output, prefer = "shortest";
    train::DistillOptions options;
  };
  auto args = std::make_shared<Args>();
  auto& o = args->options;
  add_config_args(app, args->config, true);
  app.add_option("--model", args->model,
                 "Checkpoint to sample from (training checkpoint, run directory or HF directory)")
      ->required();
  app.add_option("--input", args->input, "JSONL of {\"prompt\", \"answer\", \"task\"} lines")
      ->required();
  app.add_option("--output", args->output,
                 "SFT JSONL of {\"prompt\", \"response\", ...} lines, written atomically")
      ->required();
  app.add_option("-k,--samples", o.samples_per_prompt, "Samples per prompt")->capture_default_str();
  app.add_option("--batch-prompts", o.batch_prompts,
                 "Prompts per generation batch (batch-prompts * k sequences at once)")
      ->capture_default_str();
  app.add_option("--max-tokens", o.max_tokens,
                 "Keep completions of at most N generated tokens (0: no limit; the generation "
                 "budget is rl.max_new_tokens)")
      ->capture_default_str();
  app.add_option("--min-tokens", o.min_tokens, "Keep completions of at least N generated tokens")
      ->capture_default_str();
  app.add_option("--keep-per-prompt", o.keep_per_prompt,
                 "At most N kept samples per prompt (0: all that pass)")
      ->capture_default_str();
  app.add_option("--prefer", args->prefer,
                 "Which passing samples the cap keeps: shortest (fewest tokens) or first")
      ->capture_default_str();
  app.add_flag("--require-format", o.require_format,
               "Also require the format verifier (think block, then an answer)");
  app.add_option("--verifier", o.verifier,
                 "Reward component that decides 'verified' (score > 0.5); rl.rewards' term of "
                 "that name, else the registry's verifier")
      ->capture_default_str();
  app.add_option("--seed", o.seed, "Sampling seed")->capture_default_str();
  return [args]() {
    auto cfg = config::load_file(args->config->path, args->config->overrides);
    log::set_level(log::parse_level(cfg.log.level));
    args->options.prefer = train::parse_distill_prefer(args->prefer);
    const auto summary =
        train::distill_file(cfg, args->model, args->input, args->output, args->options);
    log::info("distill: kept ", summary.counts.kept, " of ", summary.counts.samples, " samples (",
              summary.counts.verified, " verified, pass@1 ", summary.pass_at_1, ") from ",
              summary.prompts, " prompts; wrote ", summary.output);
    std::cout << summary.to_json().dump() << "\n";
    return 0;
  };
}

}  // namespace moetron::cli
