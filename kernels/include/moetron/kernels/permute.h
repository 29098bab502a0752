// Torch-free launchers for token permute / unpermute (the local dispatcher's grouping of
// (token, k) pairs by expert). Pointers are device pointers; every launch is asynchronous on
// `stream` and returns the CUDA error of the launch as an int (cudaSuccess = 0).
#pragma once

#include <cstddef>
#include <cstdint>

typedef struct CUstream_st* cudaStream_t;

namespace moetron::kernels {

constexpr int kPermuteMaxExperts = 2048;  // per-warp expert counters in shared memory

// Stable grouping of the N = num_tokens * top_k pairs (t, k) by expert: rows of one expert keep
// the pairs' flat order t * top_k + k (the order of a stable sort of topk_idx), experts are
// contiguous in increasing order. Deterministic (no atomics decide an order).
struct PermuteIndexParams {
  const int64_t* topk_idx = nullptr;  // [num_tokens * top_k]
  int64_t num_tokens = 0;
  int top_k = 0;
  int n_experts = 0;               // <= kPermuteMaxExperts
  int64_t* token_idx = nullptr;    // [N] source token of each row
  int64_t* row_of_pair = nullptr;  // [N] row of pair t * top_k + k; -1 when its expert is
                                   // outside [0, n_experts) (then that pair has no row)
  int64_t* counts = nullptr;       // [n_experts] rows per expert
  int64_t* offsets = nullptr;      // [n_experts + 1] exclusive prefix sum of counts, or null
  void* workspace = nullptr;       // permute_index_workspace_bytes(...) bytes
  size_t workspace_bytes = 0;
};

size_t permute_index_workspace_bytes(int64_t num_tokens, int top_k, int n_experts);
// cudaErrorInvalidValue when N >= 2^31, n_experts is out of range or the workspace is short.
int launch_permute_index(const PermuteIndexParams& params, cudaStream_t stream);

// dst[n] = src[index[n]] for rows of row_bytes bytes (any dtype: a byte copy, 16-byte vectors
// when sizes and pointers allow). An index outside [0, src_rows) gives a zero row.
struct GatherRowsParams {
  const void* src = nullptr;  // [src_rows, row_bytes]
  int64_t src_rows = 0;
  const int64_t* index = nullptr;  // [num_rows]
  int64_t num_rows = 0;
  int64_t row_bytes = 0;
  void* dst = nullptr;  // [num_rows, row_bytes]
};

int launch_gather_rows(const GatherRowsParams& params, cudaStream_t stream);

enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// Unpermute: out[t] = Σ_k w[t, k] · rows[row_of_pair[t * top_k + k]], summed in fp32 in k order
// (no float atomics: deterministic), rounded once to dtype. w = 1 when weights is null. A row
// index outside [0, num_rows) contributes nothing.
struct CombineRowsParams {
  const void* rows = nullptr;  // [num_rows, dim] of dtype
  int64_t num_rows = 0;
  const int64_t* row_of_pair = nullptr;  // [num_tokens * top_k]
  const float* weights = nullptr;        // [num_tokens * top_k] or null
  int64_t num_tokens = 0;
  int top_k = 0;
  int64_t dim = 0;
  DType dtype = DType::kFloat32;
  void* out = nullptr;  // [num_tokens, dim] of dtype
};

int launch_combine_rows(const CombineRowsParams& params, cudaStream_t stream);

// Backward of the weighted combine: grad_rows[row(t, k)] = w[t, k] · grad_out[t] (fp32 product,
// rounded to dtype; w = 1 when weights is null) and, when grad_weights is not null,
// grad_weights[t, k] = Σ_d grad_out[t, d] · rows[row(t, k), d] in fp32 (fixed order). Rows no
// pair maps to are not written (a permutation covers all of them).
struct CombineRowsBackwardParams {
  const void* grad_out = nullptr;  // [num_tokens, dim] of dtype
  const void* rows = nullptr;      // [num_rows, dim] of dtype (read only for grad_weights)
  int64_t num_rows = 0;
  const int64_t* row_of_pair = nullptr;  // [num_tokens * top_k]
  const float* weights = nullptr;        // [num_tokens * top_k] or null
  int64_t num_tokens = 0;
  int top_k = 0;
  int64_t dim = 0;
  DType dtype = DType::kFloat32;
  void* grad_rows = nullptr;      // [num_rows, dim] of dtype
  float* grad_weights = nullptr;  // [num_tokens * top_k] or null
};

int launch_combine_rows_backward(const CombineRowsBackwardParams& params, cudaStream_t stream);

}  // namespace moetron::kernels
