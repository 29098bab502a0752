// R1 stage-3 rejection sampling (SPEC 5.4): sample k completions per prompt from a model, score
// them with the configured verifiable rewards, keep the verified ones that pass the filters
// (stopped, length, format, duplicates, a per-prompt cap) and write them as SFT records
// {"prompt", "response"} that `train.stage: sft` reads directly. docs/distill.md has the
// details; `moetron distill` is the command.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "moetron/config/config.h"
#include "moetron/data/dataset.h"
#include "moetron/data/tokenizer.h"
#include "moetron/model/model.h"

namespace moetron::train {

// Which of a prompt's passing samples are kept first when keep_per_prompt caps them.
enum class DistillPrefer {
  kShortest,  // fewest tokens first (ties: sampling order): concise reasoning
  kFirst,     // sampling order
};
// "shortest" | "first"; throws (kUsage) naming --prefer otherwise.
DistillPrefer parse_distill_prefer(const std::string& name);

struct DistillOptions {
  int64_t samples_per_prompt = 4;  // k
  int64_t batch_prompts = 8;       // prompts per rl::generate call (batch_prompts * k rows)
  // Completion length filter in generated tokens (the stop token counts); max_tokens 0 = no
  // limit besides the generation budget rl.max_new_tokens.
  int64_t min_tokens = 0;
  int64_t max_tokens = 0;
  int64_t keep_per_prompt = 1;  // 0 = keep every passing sample
  bool require_format = false;  // also require the "format" verifier to give 1
  DistillPrefer prefer = DistillPrefer::kShortest;
  // The reward component that decides "verified" (score > 0.5). Read from rl.rewards when it is
  // a term there, else a standalone verifier of that name from the registry.
  std::string verifier = "accuracy";
  uint64_t seed = 0;
};

// Throws (kUsage) naming the CLI option of the first bad value.
void validate_distill_options(const DistillOptions& options);

// One sampled completion as the filters see it.
struct DistillCandidate {
  std::string response;  // the SFT response text (completion without its final eos)
  int64_t num_tokens = 0;
  bool stopped = false;  // ended on eos / a stop string (false: hit rl.max_new_tokens)
  bool verified = false;
  bool format_ok = true;
  double reward = 0;
};

// Every sample lands in exactly one bucket: kept, or the first filter it failed, in this
// order: unverified, truncated, too_short, too_long, bad_format, duplicate, over_keep.
struct DistillCounts {
  int64_t samples = 0;
  int64_t verified = 0;  // verified samples, whatever the later filters said
  int64_t kept = 0;
  int64_t unverified = 0;
  int64_t truncated = 0;
  int64_t too_short = 0;
  int64_t too_long = 0;
  int64_t bad_format = 0;
  int64_t duplicate = 0;  // same response text as a sample of the same prompt kept before it
  int64_t over_keep = 0;  // passed everything but keep_per_prompt was reached
};

// The kept candidates of one prompt (indices, in output order) and the counts added to
// `counts`. Duplicates and the cap are decided in preference order (DistillPrefer).
std::vector<size_t> select_candidates(const std::vector<DistillCandidate>& candidates,
                                      const DistillOptions& options, DistillCounts& counts);

// One kept sample. The output line is {"prompt", "response", "answer", "task", "num_tokens",
// "reward"}; the SFT reader uses prompt and response and ignores the rest.
struct DistillRecord {
  std::string prompt;
  std::string response;
  std::string answer;
  std::string task;
  int64_t num_tokens = 0;
  double reward = 0;
};
std::string sft_line(const DistillRecord& record);  // JSON text, no newline

struct DistillSummary {
  int64_t prompts = 0;
  int64_t samples_per_prompt = 0;
  int64_t prompts_with_kept = 0;
  DistillCounts counts;
  double pass_at_1 = 0;  // mean over prompts of (verified / k): unbiased pass@1
  double pass_at_k = 0;  // fraction of prompts with at least one verified sample
  double reward_mean = 0;
  std::vector<std::pair<std::string, double>> reward_components;  // means, rl.rewards order
  int64_t gen_tokens = 0;
  double gen_seconds = 0;
  double seconds = 0;
  std::string output;  // the file written (distill_file only)
  // {"prompts", "samples", "verified", "kept", "rejected": {...}, "pass@1", "pass@<k>", ...}
  nlohmann::ordered_json to_json() const;
};

// Samples options.samples_per_prompt completions of every prompt (batch_prompts prompts per
// generate call, seeded per batch from options.seed, so a run is reproducible for the same
// seed and batch_prompts), scores and filters them, and hands each batch's kept records, in
// prompt order, to `emit`. `where` (optional, one per prompt, e.g. "file:line") prefixes errors
// about a prompt; every prompt is checked against the verifiers before any sampling. A prompt's
// empty task becomes data.task. Checks the interrupt flag between batches (throws
// kInterrupted).
DistillSummary distill(model::DeepseekV3ForCausalLM& model, const config::Config& cfg,
                       const data::Tokenizer& tokenizer, std::vector<data::RlPrompt> prompts,
                       const std::vector<std::string>& where, const DistillOptions& options,
                       const std::function<void(const std::vector<DistillRecord>&)>& emit);

// The whole command: reads `input` (JSONL {"prompt", "answer", "task"}; bad lines are errors
// naming file:line unless data.skip_bad_lines), loads the model at `model_path` (training
// checkpoint, run directory or HF directory) on train.device and writes `output` atomically:
// the file appears complete or not at all (a failure or an interrupt leaves no file).
DistillSummary distill_file(const config::Config& cfg, const std::string& model_path,
                            const std::string& input, const std::string& output,
                            const DistillOptions& options);

}  // namespace moetron::train
