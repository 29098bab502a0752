// Prompt rendering, sampling options and completion text (see rollout.h).
#include "moetron/train/rollout.h"

#include <iterator>

namespace moetron::train {

std::vector<int64_t> prompt_ids(const data::ChatTemplate& chat, const std::string& prompt) {
  auto r = chat.render_prompt({{"user", prompt}});
  return {r.begin(), r.end()};
}

rl::SamplingOptions sampling_options(const config::Config& cfg, const data::Tokenizer& tokenizer) {
  rl::SamplingOptions o;
  o.temperature = cfg.rl.temperature;
  o.top_k = cfg.rl.top_k;
  o.top_p = cfg.rl.top_p;
  o.max_new_tokens = cfg.rl.max_new_tokens;
  if (auto eos = tokenizer.eos_id()) o.stop_ids = {*eos};
  if (cfg.rl.r1_zero) o.stop_strings = {"</answer>"};
  o.decode = [&tokenizer](const std::vector<int64_t>& ids) {
    return tokenizer.decode(std::vector<int32_t>(ids.begin(), ids.end()), false);
  };
  return o;
}

std::vector<SampledGroup> sample_groups(model::DeepseekV3ForCausalLM& model,
                                        const data::ChatTemplate& chat,
                                        const std::vector<std::string>& prompts, int64_t k,
                                        const rl::SamplingOptions& sampling) {
  std::vector<SampledGroup> groups(prompts.size());
  std::vector<std::vector<int64_t>> batch;
  batch.reserve(prompts.size() * static_cast<size_t>(k));
  for (size_t i = 0; i < prompts.size(); ++i) {
    groups[i].prompt_ids = prompt_ids(chat, prompts[i]);
    for (int64_t g = 0; g < k; ++g) batch.push_back(groups[i].prompt_ids);
  }
  auto completions = rl::generate(model, batch, sampling);
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto first = completions.begin() + static_cast<int64_t>(i) * k;
    groups[i].completions.assign(std::make_move_iterator(first),
                                 std::make_move_iterator(first + k));
  }
  return groups;
}

rewards::Sample reward_sample(const data::RlPrompt& prompt, std::string completion) {
  rewards::Sample s;
  s.completion = std::move(completion);
  s.answer = prompt.answer;
  s.task = prompt.task;
  s.prompt = prompt.prompt;
  return s;
}

std::string completion_text(const data::Tokenizer& tokenizer, const rl::Completion& completion) {
  std::vector<int32_t> ids(completion.ids.begin(), completion.ids.end());
  const auto eos = tokenizer.eos_id();
  if (completion.stopped && !ids.empty() && eos && ids.back() == *eos) ids.pop_back();
  return tokenizer.decode(ids, /*skip_special_tokens=*/false);
}

}  // namespace moetron::train
