// Fused router (SPEC 2.2) after the logits GEMM: scores, biased group-limited top-k, combine
// weights and per-expert counts in one launch. One warp per token; the warp keeps the token's
// scores in shared memory; a block-local histogram gives one global atomic per (block, expert).
#include <cuda_runtime.h>
#include <math.h>

#include "moetron/kernels/routing.h"

namespace moetron::kernels {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr unsigned kFull = 0xffffffffu;

// Shared-memory slot of expert e: one float of padding per 32 keeps the lane-per-group scans
// (lane g reads expert g * E/G + i) free of bank conflicts when E/G is a multiple of 32.
__device__ __forceinline__ int slot(int e) {
  return e + (e >> 5);
}
__host__ __device__ constexpr int padded(int n) {
  return n + (n >> 5) + 1;
}

// a above b by value: NaN above every number (as torch.topk), else larger.
__device__ __forceinline__ bool above(float a, float b) {
  return (isnan(a) && !isnan(b)) || a > b;
}

// (a, ia) ranks before (b, ib): by value as `above`, equal values by the lower index. A strict
// total order on distinct indices, so the argmax is unique and deterministic.
__device__ __forceinline__ bool ranks_before(float a, int ia, float b, int ib) {
  const bool an = isnan(a), bn = isnan(b);
  if (an != bn) return an;
  if (!an && a != b) return a > b;
  return ia < ib;
}

// Warp-wide best (v, i) over the lanes with i >= 0 (i < 0: no candidate). Every lane ends
// with the same pair.
__device__ __forceinline__ void warp_best(float& v, int& i) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(kFull, v, off);
    const int oi = __shfl_xor_sync(kFull, i, off);
    if (oi >= 0 && (i < 0 || ranks_before(ov, oi, v, i))) {
      v = ov;
      i = oi;
    }
  }
}

// Butterfly reductions: each step combines the same two partials on both lanes, so every lane
// ends with bitwise the same result, and the order is fixed from run to run.
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float o = __shfl_xor_sync(kFull, v, off);
    v = (isnan(o) || o > v) ? o : v;
  }
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFull, v, off);
  return v;
}

__global__ void __launch_bounds__(kThreads) fused_gate_kernel(const FusedGateParams p) {
  extern __shared__ float smem[];
  const int E = p.n_experts, K = p.top_k, G = p.n_group, S = E / G;
  const int slots = (E + 31) / 32;
  float* bias_s = smem;                                    // [E]
  unsigned* hist = reinterpret_cast<unsigned*>(smem + E);  // [E]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float* row = smem + 2 * E + warp * padded(E);  // this warp's token: s per expert
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    bias_s[e] = p.bias != nullptr ? p.bias[e] : 0.0f;  // s + 0 == s: no bias, same choice
    hist[e] = 0u;
  }
  __syncthreads();

  for (int64_t t = int64_t(blockIdx.x) * kWarps + warp; t < p.num_tokens;
       t += int64_t(gridDim.x) * kWarps) {
    const float* x = p.logits + t * E;
    float* s_out = p.scores + t * E;
    // 1. scores. Same expressions as ATen's CUDA sigmoid (1 / (1 + exp(-x)) in fp32) and
    // softmax (exp(x - max) / sum), so sigmoid scores are bitwise those of torch on the device.
    if (p.scoring == GateScoring::kSigmoid) {
      for (int e = lane; e < E; e += 32) {
        const float s = 1.0f / (1.0f + expf(-x[e]));
        row[slot(e)] = s;
        s_out[e] = s;
      }
    } else {
      float m = -INFINITY;
      for (int e = lane; e < E; e += 32) {
        const float v = x[e];
        row[slot(e)] = v;
        m = (isnan(v) || v > m) ? v : m;
      }
      m = warp_max(m);
      float sum = 0.0f;
      for (int e = lane; e < E; e += 32) {
        const float v = expf(row[slot(e)] - m);
        row[slot(e)] = v;
        sum += v;
      }
      sum = warp_sum(sum);
      for (int e = lane; e < E; e += 32) {
        const float s = row[slot(e)] / sum;
        row[slot(e)] = s;
        s_out[e] = s;
      }
    }
    __syncwarp();

    // 2. groups: lane g scores group g; the warp keeps the topk_group best (bit g of `kept`).
    unsigned kept = kFull;
    if (G > 1) {
      float gs = -INFINITY;
      int gi = -1;
      if (lane < G) {
        float b1 = -INFINITY, b2 = -INFINITY;
        for (int i = 0; i < S; ++i) {
          const int e = lane * S + i;
          const float c = row[slot(e)] + bias_s[e];
          if (above(c, b1)) {
            b2 = b1;
            b1 = c;
          } else if (above(c, b2)) {
            b2 = c;
          }
        }
        gs = (p.group_score == GroupScore::kTop2Sum && S > 1) ? b1 + b2 : b1;
        gi = lane;
      }
      kept = 0u;
      for (int i = 0; i < p.topk_group; ++i) {
        float v = gs;
        int g = (gi >= 0 && ((kept >> gi) & 1u) == 0u) ? gi : -1;
        warp_best(v, g);
        kept |= 1u << g;  // g >= 0: topk_group <= G lanes have candidates
      }
    }

    // 3. top-K by c = s + bias over the kept groups (dropped groups read as -inf, SPEC 8.5),
    // one warp argmax per k: the K come out in descending c, as torch.topk(sorted=True).
    unsigned taken = 0u;  // bit j: this lane's expert lane + 32 j is chosen
    int my_idx = 0;       // lane k < K: the k-th choice
    for (int k = 0; k < K; ++k) {
      float v = -INFINITY;
      int idx = -1;
      for (int j = 0; j < slots; ++j) {
        const int e = lane + 32 * j;
        if (e >= E || ((taken >> j) & 1u) != 0u) continue;
        const float c = ((kept >> (e / S)) & 1u) != 0u ? row[slot(e)] + bias_s[e] : -INFINITY;
        if (idx < 0 || ranks_before(c, e, v, idx)) {
          v = c;
          idx = e;
        }
      }
      warp_best(v, idx);  // idx >= 0: K <= E, so some lane still has an expert
      if ((idx & 31) == lane) taken |= 1u << (idx >> 5);
      if (k == lane) my_idx = idx;
    }

    // 4. weights from the UNBIASED s; the sum runs in k order on every lane.
    float w = lane < K ? row[slot(my_idx)] : 0.0f;
    if (p.normalize) {
      float sum = 0.0f;
      for (int j = 0; j < K; ++j) sum += __shfl_sync(kFull, w, j);
      w = w / (sum + 1e-20f);
    }
    w = w * p.scale;
    if (lane < K) {
      p.topk_idx[t * K + lane] = my_idx;
      p.topk_weight[t * K + lane] = w;
      atomicAdd(&hist[my_idx], 1u);
    }
    __syncwarp();  // the next token overwrites `row`
  }
  __syncthreads();
  auto* counts = reinterpret_cast<unsigned long long*>(p.counts);
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    if (hist[e] != 0u) atomicAdd(&counts[e], static_cast<unsigned long long>(hist[e]));
  }
}

bool valid(const FusedGateParams& p) {
  const int E = p.n_experts;
  if (E < 1 || E > kFusedGateMaxExperts || p.num_tokens < 0 || p.counts == nullptr) return false;
  if (p.top_k < 1 || p.top_k > kFusedGateMaxTopK || p.top_k > E) return false;
  if (p.n_group < 1 || p.n_group > kFusedGateMaxGroups || E % p.n_group != 0) return false;
  if (p.topk_group < 1 || p.topk_group > p.n_group) return false;
  if (p.n_group > 1 && p.top_k > p.topk_group * (E / p.n_group)) return false;
  if (p.num_tokens > 0 && (p.logits == nullptr || p.topk_idx == nullptr ||
                           p.topk_weight == nullptr || p.scores == nullptr)) {
    return false;
  }
  return true;
}

}  // namespace

int launch_fused_gate(const FusedGateParams& p, cudaStream_t stream) {
  static_assert(sizeof(unsigned long long) == sizeof(int64_t));
  if (!valid(p)) return static_cast<int>(cudaErrorInvalidValue);
  cudaError_t err = cudaMemsetAsync(p.counts, 0, sizeof(int64_t) * p.n_experts, stream);
  if (err != cudaSuccess || p.num_tokens == 0) return static_cast<int>(err);
  int device = 0, sms = 0;
  if ((err = cudaGetDevice(&device)) != cudaSuccess) return static_cast<int>(err);
  err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return static_cast<int>(err);
  // A few blocks per SM, each looping over tokens: fewer blocks, fewer global count atomics.
  const int64_t want = (p.num_tokens + kWarps - 1) / kWarps;
  const int64_t cap = 4 * static_cast<int64_t>(sms > 0 ? sms : 1);
  const int blocks = static_cast<int>(want < cap ? want : cap);
  const size_t smem = sizeof(float) * (2 * static_cast<size_t>(p.n_experts) +
                                       kWarps * static_cast<size_t>(padded(p.n_experts)));
  fused_gate_kernel<<<blocks, kThreads, smem, stream>>>(p);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace moetron::kernels
