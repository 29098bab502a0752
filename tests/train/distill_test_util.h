// A tiny model with a known output distribution for the distill tests: every next token is
// '4' or eos with probability 1/2 each, whatever the context, so a completion is "4" repeated
// n times then eos with P(n) = 2^-(n+1). The real accuracy verifier then verifies "4" for
// answer "4" with probability 1/4 and "44" for answer "44" with probability 1/8.
#pragma once

#include <torch/torch.h>

#include <string>

#include "moetron/config/config.h"
#include "moetron/data/tokenizer.h"
#include "moetron/model/model.h"

namespace moetron::train::testing {

// Every weight but the RMSNorm scales is zero except: each token embeds to e_0 (so the
// residual stream is e_0 everywhere: attention and MLPs read zero weights and add nothing), and
// the lm_head rows of '4' and eos read e_0 with the same large weight. The final norm maps e_0
// to sqrt(D) e_0, so those two logits are 5 sqrt(D) (40 for D = 64) and every other one is 0.
inline model::DeepseekV3ForCausalLM coin_model(const config::Config& cfg,
                                               const data::Tokenizer& tokenizer) {
  torch::manual_seed(0);
  model::DeepseekV3ForCausalLM m(cfg);
  torch::NoGradGuard no_grad;
  for (auto& item : m->named_parameters()) {
    if (item.key().find("norm") == std::string::npos) item.value().zero_();
  }
  m->model->embed_tokens->weight.select(1, 0).fill_(1.0);
  auto head = m->lm_head_weight();
  head[tokenizer.encode("4", false).at(0)][0] = 5.0;
  head[*tokenizer.eos_id()][0] = 5.0;
  return m;
}

}  // namespace moetron::train::testing
