// `moetron data make TASK --out DIR [--seed N] [generator options]`: writes a built-in task's
// pretraining corpus, cold-start SFT data, RL prompts and held-out eval set as JSONL.
#include <iostream>

#include "command.h"
#include "moetron/core/error.h"
#include "moetron/data/tasks.h"

namespace moetron::cli {

Run setup_data(CLI::App& app) {
  app.require_subcommand(1);
  struct Args {
    std::string task, out;
    data::TaskDataOptions options;
  };
  auto args = std::make_shared<Args>();
  std::string names;
  for (const auto& t : data::task_names()) names += (names.empty() ? "" : ", ") + t;
  CLI::App* make = app.add_subcommand("make", "Write a built-in task's data (" + names + ")");
  make->add_option("task", args->task, "Task name")->required();
  make->add_option("--out", args->out, "Output directory")->required();
  make->add_option("--seed", args->options.seed, "Generator seed")->capture_default_str();
  make->add_option("--pretrain-docs", args->options.num_pretrain_docs)->capture_default_str();
  make->add_option("--sft", args->options.num_sft, "SFT samples")->capture_default_str();
  make->add_option("--rl", args->options.num_rl, "RL prompts")->capture_default_str();
  make->add_option("--eval", args->options.num_eval, "Held-out problems")->capture_default_str();
  make->add_option("--max-digits", args->options.max_digits,
                   "arithmetic: operands have 1..n digits")
      ->capture_default_str();
  make->add_option("--ops", args->options.ops, "arithmetic: operators drawn from (of +-*)")
      ->capture_default_str();
  make->add_option("--terms", args->options.max_terms,
                   "arithmetic: 2..n operands (> 2: left-to-right + - chains)")
      ->capture_default_str();
  make->add_option("--max-numbers", args->options.max_numbers, "countdown: 3..n given numbers")
      ->capture_default_str();
  return [args, make]() {
    if (!make->parsed()) throw Error(ErrorKind::kUsage, "data: choose a subcommand (make)");
    data::make_task_data(args->task, args->out, args->options);
    std::cout << "wrote " << args->out << "/{pretrain,sft,rl,eval}.jsonl and meta.json\n";
    return 0;
  };
}

}  // namespace moetron::cli
