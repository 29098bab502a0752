// The glue between the chat template, the tokenizer and the generation engine that every
// sampling user shares (eval accuracy, `moetron generate`, GRPO rollouts, `moetron distill`):
// prompt ids in the configured template, sampling options from `rl.*`, completion text.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moetron/config/config.h"
#include "moetron/data/chat_template.h"
#include "moetron/data/dataset.h"
#include "moetron/data/tokenizer.h"
#include "moetron/model/model.h"
#include "moetron/rewards/reward.h"
#include "moetron/rl/generate.h"

namespace moetron::train {

// Token ids of a single-turn user prompt in `chat`'s template, ending where the assistant's
// completion starts.
std::vector<int64_t> prompt_ids(const data::ChatTemplate& chat, const std::string& prompt);

// rl.temperature / top_k / top_p / max_new_tokens; stop at the tokenizer's eos, and with the
// R1-Zero template (rl.r1_zero) also at "</answer>". The decode function keeps a reference to
// `tokenizer`.
rl::SamplingOptions sampling_options(const config::Config& cfg, const data::Tokenizer& tokenizer);

// k completions of each prompt, all from one batched rl::generate call (the cost is one batch
// of prompts.size() x k rows, finished rows dropped as they stop).
struct SampledGroup {
  std::vector<int64_t> prompt_ids;
  std::vector<rl::Completion> completions;  // k of them
};
std::vector<SampledGroup> sample_groups(model::DeepseekV3ForCausalLM& model,
                                        const data::ChatTemplate& chat,
                                        const std::vector<std::string>& prompts, int64_t k,
                                        const rl::SamplingOptions& sampling);

// What the verifiers score for `prompt` and a completion text (num_tokens / truncated unset).
rewards::Sample reward_sample(const data::RlPrompt& prompt, std::string completion);

// The completion's text with special tokens written out (the verifiers read </think> and
// <answer>), without a final eos.
std::string completion_text(const data::Tokenizer& tokenizer, const rl::Completion& completion);

}  // namespace moetron::train
