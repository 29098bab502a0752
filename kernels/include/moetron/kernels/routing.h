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

// ---- fused gate -------------------------------------------------------------------------------

// Limits of the fused gate kernel (one warp per token, the row's scores in shared memory).
constexpr int kFusedGateMaxExperts = 1024;
constexpr int kFusedGateMaxTopK = 32;
constexpr int kFusedGateMaxGroups = 32;

enum class GateScoring : int { kSigmoid = 0, kSoftmax = 1 };
enum class GroupScore : int { kTop2Sum = 0, kMax = 1 };  // noaux_tc | group_limited_greedy

// Router after the logits GEMM, per token t (SPEC 2.2):
//   s = sigmoid(logits) or softmax(logits);  c = s + bias (selection only)
//   group score = sum of the top-2 c (kTop2Sum) or max c (kMax) over E / n_group contiguous
//   experts; keep the topk_group best groups; top_k experts by c among the kept groups, in
//   descending c; w = s[idx]; if normalize w /= (Σ_k w + 1e-20); w *= scale; counts[idx] += 1.
// Ties: the lower index wins (experts and groups); NaN ranks above every number (torch.topk).
struct FusedGateParams {
  const float* logits = nullptr;  // [num_tokens, n_experts], row-major
  const float* bias = nullptr;    // [n_experts] or null
  int64_t num_tokens = 0;
  int n_experts = 0;   // <= kFusedGateMaxExperts
  int top_k = 0;       // <= kFusedGateMaxTopK, <= kept experts
  int n_group = 1;     // 1 = no group limit; divides n_experts; <= kFusedGateMaxGroups
  int topk_group = 1;  // groups kept, <= n_group
  GateScoring scoring = GateScoring::kSigmoid;
  GroupScore group_score = GroupScore::kTop2Sum;
  bool normalize = false;
  float scale = 1.0f;
  int64_t* topk_idx = nullptr;   // [num_tokens, top_k]
  float* topk_weight = nullptr;  // [num_tokens, top_k]
  float* scores = nullptr;       // [num_tokens, n_experts]
  int64_t* counts = nullptr;     // [n_experts], overwritten
};

// cudaErrorInvalidValue (as int) when the params break the limits above.
int launch_fused_gate(const FusedGateParams& params, cudaStream_t stream);

}  // namespace moetron::kernels
