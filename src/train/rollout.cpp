// Prompt rendering, sampling options and completion text (see rollout.h).
#include "moetron/train/rollout.h"

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

std::string completion_text(const data::Tokenizer& tokenizer, const rl::Completion& completion) {
  std::vector<int32_t> ids(completion.ids.begin(), completion.ids.end());
  const auto eos = tokenizer.eos_id();
  if (completion.stopped && !ids.empty() && eos && ids.back() == *eos) ids.pop_back();
  return tokenizer.decode(ids, /*skip_special_tokens=*/false);
}

}  // namespace moetron::train
