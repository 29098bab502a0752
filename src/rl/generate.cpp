// Batched sampling: prefill of left-padded prompts (padding masked, positions counted from each
// row's first real token), then decode steps; finished rows are compacted out of the cache.
#include "moetron/rl/generate.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>

#include "moetron/core/error.h"

namespace moetron::rl {
namespace {

// Restricts logits to top-k / nucleus top-p (in place semantics on a copy) after temperature.
torch::Tensor filtered_probs(torch::Tensor logits_BV, const SamplingOptions& o) {
  logits_BV = logits_BV / std::max(o.temperature, 1e-6);
  if (o.top_k > 0 && o.top_k < logits_BV.size(1)) {
    auto kth = std::get<0>(logits_BV.topk(o.top_k, 1)).narrow(1, o.top_k - 1, 1);
    logits_BV = logits_BV.masked_fill(logits_BV < kth, -std::numeric_limits<float>::infinity());
  }
  auto probs = torch::softmax(logits_BV, 1);
  if (o.top_p < 1.0) {
    auto [sorted, idx] = probs.sort(1, /*descending=*/true);
    auto cum = sorted.cumsum(1);
    // Keep the smallest prefix whose mass reaches top_p (the first token always stays).
    auto drop = (cum - sorted) >= o.top_p;
    sorted = sorted.masked_fill(drop, 0);
    probs = torch::zeros_like(probs).scatter(1, idx, sorted);
    probs = probs / probs.sum(1, true);
  }
  return probs;
}

// Keeps cache rows `keep` (int64 indices) in every layer and the validity mask.
void compact_cache(model::KvCache& cache, const torch::Tensor& keep) {
  for (auto& layer : cache.layers) {
    layer.c_kv_BSC = layer.c_kv_BSC.index_select(0, keep);
    layer.k_pe_BSP = layer.k_pe_BSP.index_select(0, keep);
  }
  cache.valid_BS = cache.valid_BS.index_select(0, keep);
}

// Whether the completion's text now contains a stop string that ends in its last token: only a
// tail of tokens long enough to hold the longest stop string (every token decodes to >= 1
// byte, special tokens to their text) is decoded, so the check costs O(longest) per step.
bool hits_stop_string(const std::vector<int64_t>& ids, const SamplingOptions& o, size_t longest) {
  const size_t n = std::min(ids.size(), longest + 1);
  const std::string tail = o.decode(std::vector<int64_t>(ids.end() - n, ids.end()));
  const std::string before =
      n > 1 ? o.decode(std::vector<int64_t>(ids.end() - n, ids.end() - 1)) : std::string();
  for (const auto& s : o.stop_strings) {
    // Found in the tail but not already before the last token (then it would have stopped).
    if (tail.find(s) != std::string::npos && before.find(s) == std::string::npos) return true;
  }
  return false;
}

}  // namespace

std::vector<Completion> generate(model::DeepseekV3ForCausalLM& model,
                                 const std::vector<std::vector<int64_t>>& prompts,
                                 const SamplingOptions& options) {
  MOETRON_CHECK(!prompts.empty(), "generate: no prompts");
  MOETRON_CHECK(options.max_new_tokens > 0, "generate: max_new_tokens must be > 0");
  MOETRON_CHECK(options.stop_strings.empty() || options.decode,
                "generate: stop_strings need a decode function");
  size_t longest_stop = 0;
  for (const auto& s : options.stop_strings) {
    MOETRON_CHECK(!s.empty(), "generate: empty stop string");
    longest_stop = std::max(longest_stop, s.size());
  }
  const auto& cfg = model->config().model;
  int64_t max_prompt = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    MOETRON_CHECK(!prompts[i].empty(), "generate: prompt ", i, " is empty");
    max_prompt = std::max<int64_t>(max_prompt, static_cast<int64_t>(prompts[i].size()));
  }
  const int64_t capacity = max_prompt + options.max_new_tokens;
  MOETRON_CHECK(capacity <= cfg.max_position_embeddings, "generate: prompt (", max_prompt,
                ") + max_new_tokens (", options.max_new_tokens,
                ") exceeds model.max_position_embeddings (", cfg.max_position_embeddings, ")");

  torch::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  const auto device = model->lm_head_weight().device();
  const int64_t B = static_cast<int64_t>(prompts.size());

  // Left padding: row b's prompt occupies the last |p_b| prefill slots.
  auto ids = torch::zeros({B, max_prompt}, torch::kLong);
  auto valid = torch::zeros({B, max_prompt}, torch::kBool);
  auto pos = torch::zeros({B, max_prompt}, torch::kLong);
  for (int64_t b = 0; b < B; ++b) {
    const auto& p = prompts[b];
    const int64_t pad = max_prompt - static_cast<int64_t>(p.size());
    for (size_t i = 0; i < p.size(); ++i) {
      ids[b][pad + static_cast<int64_t>(i)] = p[i];
      pos[b][pad + static_cast<int64_t>(i)] = static_cast<int64_t>(i);
    }
    valid.narrow(0, b, 1).narrow(1, pad, max_prompt - pad).fill_(true);
  }
  auto next_pos = torch::tensor(std::vector<int64_t>(B, 0), torch::kLong);
  for (int64_t b = 0; b < B; ++b) next_pos[b] = static_cast<int64_t>(prompts[b].size());

  auto gen = at::make_generator<at::CPUGeneratorImpl>(options.seed);
  std::vector<Completion> out(B);
  std::vector<int64_t> live(B);  // original row index of each cache row
  for (int64_t b = 0; b < B; ++b) live[b] = b;

  model::KvCache cache = model->new_kv_cache(B, capacity);
  auto logits = model->forward_with_cache(ids.to(device), cache, pos.to(device), valid.to(device));
  auto last_BV = logits.select(1, max_prompt - 1).to(torch::kFloat32).cpu();

  for (int64_t step = 0; step < options.max_new_tokens && !live.empty(); ++step) {
    const double temp = options.greedy ? 1.0 : options.temperature;
    auto logp_BV = torch::log_softmax(temp == 1.0 ? last_BV : last_BV / temp, 1);
    torch::Tensor tok_B;
    if (options.greedy) {
      tok_B = last_BV.argmax(1);
    } else {
      tok_B = torch::multinomial(filtered_probs(last_BV, options), 1, false, gen).squeeze(1);
    }
    tok_B = tok_B.contiguous();
    auto tok_logp_B = logp_BV.gather(1, tok_B.unsqueeze(1)).squeeze(1).contiguous();
    auto entropy_B = (-(logp_BV.exp() * logp_BV).sum(1)).contiguous();
    const auto entropy = entropy_B.accessor<float, 1>();
    const auto tok = tok_B.accessor<int64_t, 1>();
    const auto tok_logp = tok_logp_B.accessor<float, 1>();
    std::vector<int64_t> keep;
    for (size_t r = 0; r < live.size(); ++r) {
      auto& c = out[live[r]];
      const int64_t t = tok[static_cast<int64_t>(r)];
      c.ids.push_back(t);
      c.logprobs.push_back(tok_logp[static_cast<int64_t>(r)]);
      c.entropies.push_back(entropy[static_cast<int64_t>(r)]);
      const bool stop = std::find(options.stop_ids.begin(), options.stop_ids.end(), t) !=
                            options.stop_ids.end() ||
                        (longest_stop > 0 && hits_stop_string(c.ids, options, longest_stop));
      c.stopped = stop;
      if (!stop) keep.push_back(static_cast<int64_t>(r));
    }
    if (step + 1 == options.max_new_tokens || keep.empty()) break;
    if (keep.size() < live.size()) {
      auto keep_t = torch::tensor(keep, torch::kLong);
      compact_cache(cache, keep_t.to(device));
      tok_B = tok_B.index_select(0, keep_t);
      next_pos = next_pos.index_select(0, keep_t);
      std::vector<int64_t> still;
      for (int64_t r : keep) still.push_back(live[r]);
      live.swap(still);
    }
    auto step_logits = model->forward_with_cache(tok_B.unsqueeze(1).to(device), cache,
                                                 next_pos.unsqueeze(1).to(device));
    next_pos = next_pos + 1;
    last_BV = step_logits.select(1, 0).to(torch::kFloat32).cpu();
  }
  if (was_training) model->train();
  return out;
}

}  // namespace moetron::rl
