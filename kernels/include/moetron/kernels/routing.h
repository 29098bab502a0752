// Torch-free launchers for the routing kernels. Pointers are device pointers; every launch is
// asynchronous on `stream` and returns the CUDA error of the launch (cudaSuccess = 0).
#pragma once

#include <cstdint>

typedef struct CUstream_st* cudaStream_t;

namespace moetron::kernels {

// Per-expert assignment counts of a top-k routing: counts[e] = #{(t, k) : idx[t, k] == e}.
struct ExpertCountsParams {
  const int64_t* topk_idx = nullptr;  // [num_assignments] = tokens * k, values in [0, n_experts)
  int64_t num_assignments = 0;
  int64_t n_experts = 0;
  int64_t* counts = nullptr;  // [n_experts], overwritten
};

// Returns a cudaError_t as int so this header needs no CUDA include.
int launch_expert_counts(const ExpertCountsParams& params, cudaStream_t stream);

}  // namespace moetron::kernels
