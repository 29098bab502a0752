// Causal softmax attention for the MLA training path: ATen SDPA, or on CPU the fused kernel of
// ops/cpu_fused.h (fp32, and bf16 / fp16 upcast) or a block-causal path built from batched
// matmuls (fp64), both several times faster than SDPA for MLA's small heads.
#pragma once

#include <torch/types.h>

namespace moetron::model {

// Legend: B batch, H heads, T tokens, K q/k head width, V value head width.

// softmax(q kᵀ · scale + mask) v with the softmax in fp32, causal within each row and, when
// allowed_BTT (bool [B, T, T], true = may attend) is given, restricted to it as well.
// q_BHTK, k_BHTK: [B, H, T, K]; v_BHTV: [B, H, T, V]; V may differ from K. Returns
// [B, H, T, V]. Every row must be allowed to see at least itself (causal masks are).
torch::Tensor causal_attention(const torch::Tensor& q_BHTK, const torch::Tensor& k_BHTK,
                               const torch::Tensor& v_BHTV, double scale,
                               const torch::Tensor& allowed_BTT = {});

// The query-block size of the block-causal path and the most bytes of softmax probabilities one
// call (one layer) may keep for backward; above that (long sequences, many heads) causal_attention
// takes SDPA instead. 64 MiB covers moe-100m training (seq 512, batch 8: ~38 MB per layer).
inline constexpr int64_t kAttentionBlock = 64;
inline constexpr int64_t kBlockedAttentionMaxSavedBytes = int64_t{64} << 20;

// Whether causal_attention takes the CPU path (fused kernel or block-causal) for these inputs:
// CPU, fp32 / fp64 or (autocast) bf16 / fp16, within the memory budget (exposed for tests).
bool use_blocked_attention(const torch::Tensor& q_BHTK);

// The CPU path itself (exposed for tests): on CPU fp32 / bf16 / fp16 the fused kernel (`block`
// unused), otherwise the block-causal batched matmuls (any device and floating dtype).
torch::Tensor blocked_causal_attention(const torch::Tensor& q_BHTK, const torch::Tensor& k_BHTK,
                                       const torch::Tensor& v_BHTV, double scale,
                                       const torch::Tensor& allowed_BTT = {},
                                       int64_t block = kAttentionBlock);

}  // namespace moetron::model
