// Batch: one micro-batch of token rows as flat row-major [B*T] vectors (torch-free; the
// trainer turns them into tensors).
#pragma once

#include <cstdint>
#include <vector>

namespace moetron::data {

// Label value that contributes no loss (prompt tokens in SFT, padding); matches PyTorch's
// cross_entropy ignore_index default.
inline constexpr int64_t kIgnoreLabel = -100;

struct Batch {
  int64_t batch_size = 0;
  int64_t seq_len = 0;
  // All four are [batch_size * seq_len], row-major.
  std::vector<int64_t> input_ids;
  // HF convention: labels[i] is the token at i (or kIgnoreLabel); the model shifts internally,
  // predicting labels[i+1] from position i.
  std::vector<int64_t> labels;
  // 0..T-1 in pretraining; restart at 0 at each packed sample in SFT (and in padding).
  std::vector<int64_t> position_ids;
  // Equal within one packed sample (SFT, attention masked between segments); all 0 in a
  // pretraining row (no cross-document masking, SPEC 1.9). Padding has its own segment id.
  std::vector<int64_t> segment_ids;
  // Positions the shifted loss counts: labels[b][t] != kIgnoreLabel for t >= 1.
  int64_t num_target_tokens = 0;
};

}  // namespace moetron::data
