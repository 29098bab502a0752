// Rejection sampling for SFT data (see distill.h): batched sampling, scoring with the configured
// verifiers, the filter funnel, and the atomic output file.
#include "moetron/train/distill.h"

#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <numeric>
#include <optional>
#include <unordered_set>

#include "moetron/core/error.h"
#include "moetron/core/files.h"
#include "moetron/core/logging.h"
#include "moetron/core/signals.h"
#include "moetron/core/timer.h"
#include "moetron/data/chat_template.h"
#include "moetron/rewards/reward.h"
#include "moetron/rl/generate.h"
#include "moetron/rl/grpo.h"
#include "moetron/train/batch_tensors.h"
#include "moetron/train/evaluate.h"
#include "moetron/train/rollout.h"
#include "session.h"

namespace fs = std::filesystem;

namespace moetron::train {
namespace {

// A reward component read from the reward function when rl.rewards has it, else from a
// standalone verifier of that name.
class Component {
 public:
  Component(const std::string& name, const std::vector<std::string>& names,
            const rewards::RewardContext& context) {
    const auto it = std::find(names.begin(), names.end(), name);
    if (it != names.end()) {
      index_ = static_cast<int64_t>(it - names.begin());
    } else {
      standalone_ = rewards::make_verifier(name, context);
    }
  }
  double value(const rewards::Score& score, const rewards::Sample& sample) const {
    return standalone_ ? standalone_->score(sample)
                       : score.components[static_cast<size_t>(index_)].second;
  }

 private:
  int64_t index_ = -1;
  std::unique_ptr<rewards::Verifier> standalone_;
};

std::string where_of(const std::vector<std::string>& where, size_t i) {
  return i < where.size() ? where[i] : str_cat("prompt ", i + 1);
}

}  // namespace

DistillPrefer parse_distill_prefer(const std::string& name) {
  if (name == "shortest") return DistillPrefer::kShortest;
  if (name == "first") return DistillPrefer::kFirst;
  throw Error(ErrorKind::kUsage, str_cat("--prefer '", name, "': expected shortest or first"));
}

void validate_distill_options(const DistillOptions& o) {
  auto need = [](bool ok, const std::string& what) {
    if (!ok) throw Error(ErrorKind::kUsage, str_cat("distill: ", what));
  };
  need(o.samples_per_prompt >= 1,
       str_cat("-k (samples per prompt) must be >= 1, got ", o.samples_per_prompt));
  need(o.batch_prompts >= 1, str_cat("--batch-prompts must be >= 1, got ", o.batch_prompts));
  need(o.min_tokens >= 0, str_cat("--min-tokens must be >= 0, got ", o.min_tokens));
  need(o.max_tokens >= 0, str_cat("--max-tokens must be >= 0 (0: no limit), got ", o.max_tokens));
  need(o.max_tokens == 0 || o.max_tokens >= o.min_tokens,
       str_cat("--max-tokens (", o.max_tokens, ") must be >= --min-tokens (", o.min_tokens, ")"));
  need(o.keep_per_prompt >= 0,
       str_cat("--keep-per-prompt must be >= 0 (0: keep all), got ", o.keep_per_prompt));
  need(!o.verifier.empty(), "--verifier is empty");
}

std::vector<size_t> select_candidates(const std::vector<DistillCandidate>& candidates,
                                      const DistillOptions& options, DistillCounts& counts) {
  std::vector<size_t> passing;
  for (size_t i = 0; i < candidates.size(); ++i) {
    const auto& c = candidates[i];
    ++counts.samples;
    if (c.verified) ++counts.verified;
    if (!c.verified) {
      ++counts.unverified;
    } else if (!c.stopped) {
      ++counts.truncated;
    } else if (c.num_tokens < options.min_tokens) {
      ++counts.too_short;
    } else if (options.max_tokens > 0 && c.num_tokens > options.max_tokens) {
      ++counts.too_long;
    } else if (options.require_format && !c.format_ok) {
      ++counts.bad_format;
    } else {
      passing.push_back(i);
    }
  }
  if (options.prefer == DistillPrefer::kShortest) {
    std::stable_sort(passing.begin(), passing.end(), [&](size_t a, size_t b) {
      return candidates[a].num_tokens < candidates[b].num_tokens;
    });
  }
  std::vector<size_t> kept;
  std::unordered_set<std::string> seen;
  for (size_t i : passing) {
    if (!seen.insert(candidates[i].response).second) {
      ++counts.duplicate;
    } else if (options.keep_per_prompt > 0 &&
               static_cast<int64_t>(kept.size()) >= options.keep_per_prompt) {
      ++counts.over_keep;
    } else {
      kept.push_back(i);
    }
  }
  counts.kept += static_cast<int64_t>(kept.size());
  return kept;
}

std::string sft_line(const DistillRecord& r) {
  nlohmann::ordered_json j;
  j["prompt"] = r.prompt;
  j["response"] = r.response;
  j["answer"] = r.answer;
  j["task"] = r.task;
  j["num_tokens"] = r.num_tokens;
  j["reward"] = r.reward;
  // Invalid UTF-8 (a byte-level model can emit it) is replaced rather than failing the run.
  return j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

nlohmann::ordered_json DistillSummary::to_json() const {
  const auto& c = counts;
  nlohmann::ordered_json j;
  j["prompts"] = prompts;
  j["samples_per_prompt"] = samples_per_prompt;
  j["samples"] = c.samples;
  j["verified"] = c.verified;
  j["kept"] = c.kept;
  j["prompts_with_kept"] = prompts_with_kept;
  j["rejected"] = {{"unverified", c.unverified}, {"truncated", c.truncated},
                   {"too_short", c.too_short},   {"too_long", c.too_long},
                   {"bad_format", c.bad_format}, {"duplicate", c.duplicate},
                   {"over_keep", c.over_keep}};
  j["pass@1"] = pass_at_1;
  j[str_cat("pass@", samples_per_prompt)] = pass_at_k;
  j["reward_mean"] = reward_mean;
  nlohmann::ordered_json comps = nlohmann::ordered_json::object();
  for (const auto& [name, value] : reward_components) comps[name] = value;
  j["reward_components"] = std::move(comps);
  j["gen_tokens"] = gen_tokens;
  j["gen_seconds"] = gen_seconds;
  j["gen_tokens_per_s"] = gen_seconds > 0 ? static_cast<double>(gen_tokens) / gen_seconds : 0.0;
  j["seconds"] = seconds;
  if (!output.empty()) j["output"] = output;
  return j;
}

DistillSummary distill(model::DeepseekV3ForCausalLM& model, const config::Config& cfg,
                       const data::Tokenizer& tokenizer, std::vector<data::RlPrompt> prompts,
                       const std::vector<std::string>& where, const DistillOptions& options,
                       const std::function<void(const std::vector<DistillRecord>&)>& emit) {
  Stopwatch wall;
  validate_distill_options(options);
  MOETRON_CHECK(where.empty() || where.size() == prompts.size(), "distill: ", where.size(),
                " locations for ", prompts.size(), " prompts");
  const auto context = rewards::context_from_config(cfg);
  const rewards::RewardFunction reward_fn(cfg.rl.rewards, context);
  const auto names = reward_fn.names();
  const Component verify(options.verifier, names, context);
  std::optional<Component> format;
  if (options.require_format) format.emplace("format", names, context);

  auto scored = [&](size_t i, const rewards::Sample& s, auto&& f) {
    try {
      return f(s);
    } catch (const Error& e) {
      throw Error(e.kind(), str_cat(where_of(where, i), ": ", e.what()));
    }
  };
  // Every prompt meets the verifiers once before any sampling, so a bad task or answer fails
  // in seconds, not after hours of generation.
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (prompts[i].task.empty()) prompts[i].task = cfg.data.task;
    const auto s = reward_sample(prompts[i], "");
    scored(i, s, [&](const rewards::Sample& x) {
      const auto score = reward_fn.score(x);
      verify.value(score, x);
      if (format) format->value(score, x);
      return 0;
    });
  }

  data::ChatTemplate chat(tokenizer, chat_options(cfg));
  auto sampling = sampling_options(cfg, tokenizer);
  const int64_t k = options.samples_per_prompt;
  const int64_t n = static_cast<int64_t>(prompts.size());
  const int64_t batches = (n + options.batch_prompts - 1) / options.batch_prompts;
  DistillSummary sum;
  sum.prompts = n;
  sum.samples_per_prompt = k;
  std::vector<double> component_sums(names.size(), 0.0);
  double reward_sum = 0, pass1 = 0, passk = 0;
  for (int64_t b = 0; b < batches; ++b) {
    if (signals::interrupt_requested()) {
      throw Error(ErrorKind::kInterrupted,
                  str_cat("distill interrupted by signal ", signals::interrupt_signal(),
                          " before batch ", b + 1, " of ", batches, " (no output written)"));
    }
    const int64_t first = b * options.batch_prompts;
    const int64_t last = std::min(n, first + options.batch_prompts);
    std::vector<std::string> texts;
    for (int64_t i = first; i < last; ++i) texts.push_back(prompts[static_cast<size_t>(i)].prompt);
    sampling.seed = options.seed * 1000003u + static_cast<uint64_t>(b);
    Stopwatch gen_clock;
    const auto sampled = sample_groups(model, chat, texts, k, sampling);
    sum.gen_seconds += gen_clock.seconds();

    std::vector<DistillRecord> records;
    for (int64_t i = first; i < last; ++i) {
      const auto& p = prompts[static_cast<size_t>(i)];
      std::vector<DistillCandidate> candidates(static_cast<size_t>(k));
      int64_t correct = 0;
      for (int64_t g = 0; g < k; ++g) {
        const auto& comp =
            sampled[static_cast<size_t>(i - first)].completions[static_cast<size_t>(g)];
        auto& c = candidates[static_cast<size_t>(g)];
        c.num_tokens = static_cast<int64_t>(comp.ids.size());
        c.stopped = comp.stopped;
        auto s = reward_sample(p, completion_text(tokenizer, comp));
        s.num_tokens = c.num_tokens;
        s.truncated = !c.stopped;
        scored(static_cast<size_t>(i), s, [&](const rewards::Sample& x) {
          const auto score = reward_fn.score(x);
          c.reward = score.total;
          c.verified = verify.value(score, x) > 0.5;
          c.format_ok = !format || format->value(score, x) == 1.0;
          for (size_t t = 0; t < names.size(); ++t) component_sums[t] += score.components[t].second;
          return 0;
        });
        // R1-Zero renders an assistant turn as " " + content: drop the space the model wrote
        // after "Assistant:" so SFT reproduces the sampled text.
        c.response = std::move(s.completion);
        if (cfg.rl.r1_zero && !c.response.empty() && c.response[0] == ' ') c.response.erase(0, 1);
        reward_sum += c.reward;
        correct += c.verified ? 1 : 0;
        sum.gen_tokens += c.num_tokens;
      }
      pass1 += rl::pass_at_k(k, correct, 1);
      passk += rl::pass_at_k(k, correct, k);
      const auto kept = select_candidates(candidates, options, sum.counts);
      if (!kept.empty()) ++sum.prompts_with_kept;
      for (size_t idx : kept) {
        const auto& c = candidates[idx];
        records.push_back({p.prompt, c.response, p.answer, p.task, c.num_tokens, c.reward});
      }
    }
    emit(records);
    log::info("distill: batch ", b + 1, "/", batches, " | prompts ", last, "/", n, " | verified ",
              sum.counts.verified, "/", sum.counts.samples, " | kept ", sum.counts.kept, " | gen ",
              static_cast<int64_t>(sum.gen_seconds > 0 ? sum.gen_tokens / sum.gen_seconds : 0),
              " tok/s");
  }
  if (n > 0) {
    sum.pass_at_1 = pass1 / static_cast<double>(n);
    sum.pass_at_k = passk / static_cast<double>(n);
  }
  const double samples = std::max<double>(1.0, static_cast<double>(sum.counts.samples));
  sum.reward_mean = sum.counts.samples > 0 ? reward_sum / samples : 0.0;
  for (size_t t = 0; t < names.size(); ++t) {
    sum.reward_components.emplace_back(names[t],
                                       sum.counts.samples > 0 ? component_sums[t] / samples : 0.0);
  }
  sum.seconds = wall.seconds();
  return sum;
}

DistillSummary distill_file(const config::Config& cfg, const std::string& model_path,
                            const std::string& input, const std::string& output,
                            const DistillOptions& options) {
  Stopwatch wall;
  validate_distill_options(options);
  MOETRON_CHECK_CONFIG(!output.empty(), "distill: --output is empty");
  // The prompts first: a bad line fails before the model is loaded or any file is created.
  data::JsonlFile file(input, data::RecordKind::kRl, cfg.data.skip_bad_lines);
  if (file.skipped_bad_lines() > 0) {
    log::warn("distill: skipped ", file.skipped_bad_lines(), " bad lines of ", input,
              " (data.skip_bad_lines)");
  }
  std::vector<data::RlPrompt> prompts;
  std::vector<std::string> where;
  for (int64_t i = 0; i < file.size(); ++i) {
    where.push_back(file.where(i));
    prompts.push_back(data::parse_rl_record(file.line(i), where.back()));
  }

  auto tokenizer = data::load_tokenizer(cfg.data.tokenizer);
  MOETRON_CHECK_CONFIG(tokenizer->vocab_size() <= cfg.model.vocab_size, "data.tokenizer '",
                       cfg.data.tokenizer, "' has ", tokenizer->vocab_size(),
                       " tokens but model.vocab_size is ", cfg.model.vocab_size);
  const torch::Device device = resolve_device(cfg.train.device);
  torch::manual_seed(cfg.train.seed);
  model::DeepseekV3ForCausalLM model(cfg);
  model->to(device);
  load_model_weights(model_path, model);

  // Whole or nothing: lines go to a temporary file renamed over `output` only at the end.
  const fs::path parent = fs::path(output).parent_path();
  if (!parent.empty()) fs::create_directories(parent);
  AtomicFileWriter writer(output);
  log::info("distill: ", prompts.size(), " prompts from ", input, " x ", options.samples_per_prompt,
            " samples, model ", model_path, " on ", device.str());
  auto summary = distill(model, cfg, *tokenizer, std::move(prompts), where, options,
                         [&](const std::vector<DistillRecord>& records) {
                           for (const auto& r : records) writer.write(sft_line(r) + "\n");
                         });
  writer.commit();
  summary.output = output;
  summary.seconds = wall.seconds();
  return summary;
}

}  // namespace moetron::train
