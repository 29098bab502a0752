// Memory-lean language-model head losses: per-token log-probabilities computed a chunk of rows
// at a time, with a backward that recomputes each chunk's logits, so neither forward nor
// backward ever holds the full [N, V] logits. Only when all of them are small (at most 64 MiB
// in fp32, e.g. a byte-level vocabulary) does forward keep the softmax for backward instead.
#pragma once

#include <torch/types.h>

namespace moetron::model {

// Legend: N rows (tokens), D hidden, V vocab.

// log p(targets_n | hidden_n) with logits = hidden · weightᵀ, softmax in fp32. Rows whose
// target is kIgnoreIndex (-100) give 0 and no gradient. Differentiable w.r.t. hidden and
// weight; the matmuls run in the autocast dtype when autocast is on, else in hidden's dtype.
// Returns fp32 [N].
// `temperature` divides the logits first (the log-probs of the tempered distribution a sampler
// at that temperature draws from).
torch::Tensor chunked_token_logprobs(const torch::Tensor& hidden_ND, const torch::Tensor& weight_VD,
                                     const torch::Tensor& targets_N, int64_t chunk_rows = 4096,
                                     double temperature = 1.0);

// Mean negative log-likelihood over rows with a valid target (0 when there is none), built on
// chunked_token_logprobs. Same value as cross_entropy(hidden·weightᵀ, targets).
torch::Tensor chunked_cross_entropy(const torch::Tensor& hidden_ND, const torch::Tensor& weight_VD,
                                    const torch::Tensor& targets_N, int64_t chunk_rows = 4096);

}  // namespace moetron::model
