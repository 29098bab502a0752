// Batched autoregressive sampling over the MLA latent KV cache: left-padded prefill, then one
// token per step; rows that finish are dropped from the batch so the cost follows the live rows.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "moetron/model/model.h"

namespace moetron::rl {

struct SamplingOptions {
  int64_t max_new_tokens = 128;
  bool greedy = false;  // argmax; ignores temperature / top-k / top-p
  double temperature = 1.0;
  int64_t top_k = 0;              // 0 = off
  double top_p = 1.0;             // 1 = off
  std::vector<int64_t> stop_ids;  // e.g. eos; the stop token is kept in the completion
  // Stop strings (e.g. "</answer>"): a row stops at the first token whose text completes one;
  // that token is kept. Needs `decode` (token ids -> text, special tokens as their text).
  std::vector<std::string> stop_strings;
  std::function<std::string(const std::vector<int64_t>&)> decode;
  uint64_t seed = 0;  // sampling generator seed (runs are reproducible)
};

struct Completion {
  std::vector<int64_t> ids;  // generated tokens only
  // log p of each generated token under softmax(logits / temperature) (temperature 1 when
  // greedy), before top-k / top-p: what token_logprobs(..., temperature) gives for them.
  std::vector<float> logprobs;
  std::vector<float> entropies;  // entropy (nats) of that distribution at each step
  bool stopped = false;          // ended on a stop id or stop string (false: hit max_new_tokens)
};

// Generates one completion per prompt. The model is switched to eval() and restored after;
// runs under NoGradGuard. Prompts must be non-empty and fit max_position_embeddings.
std::vector<Completion> generate(model::DeepseekV3ForCausalLM& model,
                                 const std::vector<std::vector<int64_t>>& prompts,
                                 const SamplingOptions& options);

}  // namespace moetron::rl
