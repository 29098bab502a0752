// `moetron generate CONFIG --model PATH --prompt TEXT... [--input IN.jsonl]`: chat-formatted
// prompts through the sampler (greedy or temperature / top-k / top-p from rl.*), one JSON line
// per completion {"prompt", "completion", "tokens", "stopped"}.
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <iostream>

#include "command.h"
#include "moetron/config/loader.h"
#include "moetron/core/error.h"
#include "moetron/data/chat_template.h"
#include "moetron/data/dataset.h"
#include "moetron/data/tokenizer.h"
#include "moetron/rl/generate.h"
#include "moetron/train/batch_tensors.h"
#include "moetron/train/evaluate.h"
#include "moetron/train/rollout.h"

namespace moetron::cli {

Run setup_generate(CLI::App& app) {
  struct Args {
    std::shared_ptr<ConfigArgs> config = std::make_shared<ConfigArgs>();
    std::string model, input;
    std::vector<std::string> prompts, stop;
    bool greedy = false;
    int64_t max_new_tokens = 0;
    uint64_t seed = 0;
  };
  auto args = std::make_shared<Args>();
  add_config_args(app, args->config, true);
  app.add_option("--model", args->model, "Checkpoint (training, run directory or HF directory)")
      ->required();
  app.add_option("--prompt", args->prompts, "A user message (repeatable)");
  app.add_option("--input", args->input, "JSONL with {\"prompt\": ...} lines");
  app.add_flag("--greedy", args->greedy,
               "Argmax decoding (default: sample with rl.temperature, "
               "rl.top_k, rl.top_p)");
  app.add_option("--max-new-tokens", args->max_new_tokens, "Default: rl.max_new_tokens");
  app.add_option("--stop", args->stop,
                 "Stop string (repeatable), besides eos; the completion keeps it");
  app.add_option("--seed", args->seed, "Sampling seed")->capture_default_str();
  return [args]() {
    auto cfg = config::load_file(args->config->path, args->config->overrides);
    std::vector<std::string> prompts = args->prompts;
    if (!args->input.empty()) {
      for (auto& p : data::read_rl_prompts(args->input, cfg.data.skip_bad_lines)) {
        prompts.push_back(p.prompt);
      }
    }
    if (prompts.empty()) throw Error(ErrorKind::kUsage, "generate: give --prompt or --input");
    auto tokenizer = data::load_tokenizer(cfg.data.tokenizer);
    torch::manual_seed(cfg.train.seed);
    model::DeepseekV3ForCausalLM model(cfg);
    train::load_model_weights(args->model, model);
    data::ChatTemplate chat(*tokenizer, train::chat_options(cfg));
    std::vector<std::vector<int64_t>> ids;
    for (const auto& p : prompts) ids.push_back(train::prompt_ids(chat, p));
    auto o = train::sampling_options(cfg, *tokenizer);
    o.greedy = args->greedy;
    if (args->max_new_tokens > 0) o.max_new_tokens = args->max_new_tokens;
    o.seed = args->seed;
    for (const auto& s : args->stop) o.stop_strings.push_back(s);
    auto completions = rl::generate(model, ids, o);
    for (size_t i = 0; i < prompts.size(); ++i) {
      std::vector<int32_t> gen(completions[i].ids.begin(), completions[i].ids.end());
      nlohmann::json row{{"prompt", prompts[i]},
                         {"completion", tokenizer->decode(gen, false)},
                         {"tokens", gen.size()},
                         {"stopped", completions[i].stopped}};
      std::cout << row.dump() << "\n";
    }
    return 0;
  };
}

}  // namespace moetron::cli
