// Token permute / unpermute: the stable grouping of (token, k) pairs by expert (chunked
// counting sort: per-chunk histograms, one scan, per-chunk ranks with warp match), the row
// gather into expert order, and the weighted fp32 combine back to tokens with its backward.
// No float atomics anywhere: every result is deterministic.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "../common/convert.cuh"

#include <cstdint>
#include <initializer_list>

#include "moetron/kernels/permute.h"

namespace moetron::kernels {
namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kIndexWarps = 4;  // chunks (one warp each) per block in the index kernels
constexpr int kScanThreads = 1024;
constexpr int kRowThreads = 256;  // gather / combine: one warp per row or token

int sm_count() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 1;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    return 1;
  }
  return sms > 0 ? sms : 1;
}

int grid_for(int64_t warps_wanted, int warps_per_block, int64_t cap) {
  int64_t blocks = (warps_wanted + warps_per_block - 1) / warps_per_block;
  if (blocks > cap) blocks = cap;
  return static_cast<int>(blocks < 1 ? 1 : blocks);
}

// ---- index: chunked stable counting sort -------------------------------------------------------

// Pairs per chunk (one warp each): at least 256, and at most 1024 chunks so the scan's serial
// walk over chunks stays short.
int64_t chunk_pairs(int64_t n) {
  int64_t per = (n + 1023) / 1024;
  per = (per + 31) / 32 * 32;
  return per < 256 ? 256 : per;
}

int64_t num_chunks(int64_t n) {
  const int64_t c = chunk_pairs(n);
  return (n + c - 1) / c;
}

// chunk_counts[c][e] = pairs of chunk c routed to expert e.
__global__ void chunk_histogram_kernel(const int64_t* __restrict__ idx, int64_t n, int64_t chunk,
                                       int64_t chunks, int E, int* __restrict__ chunk_counts) {
  extern __shared__ int cnt_all[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t c = int64_t(blockIdx.x) * kIndexWarps + warp;
  if (c >= chunks) return;  // whole warp; these kernels have no block-wide barrier
  int* cnt = cnt_all + warp * E;
  for (int e = lane; e < E; e += 32) cnt[e] = 0;
  __syncwarp();
  const int64_t begin = c * chunk, end = begin + chunk < n ? begin + chunk : n;
  for (int64_t p = begin + lane; p < end; p += 32) {
    const int64_t e = idx[p];
    if (e >= 0 && e < E) atomicAdd(&cnt[e], 1);  // integer counts: order does not matter
  }
  __syncwarp();
  for (int e = lane; e < E; e += 32) chunk_counts[c * E + e] = cnt[e];
}

// One block: counts[e] = Σ_c chunk_counts[c][e]; offsets = exclusive scan over experts; then
// chunk_counts[c][e] becomes the first row of chunk c's pairs of expert e.
__global__ void __launch_bounds__(kScanThreads)
    scan_kernel(int* __restrict__ chunk_counts, int64_t chunks, int E, int64_t* __restrict__ counts,
                int64_t* __restrict__ offsets) {
  extern __shared__ long long tot[];  // [E]
  __shared__ long long warp_tot[32];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    long long s = 0;
    for (int64_t c = 0; c < chunks; ++c) s += chunk_counts[c * E + e];
    tot[e] = s;
    counts[e] = s;
  }
  __syncthreads();
  // Exclusive scan of tot: each thread a contiguous run, warp scans, then the warp totals.
  const int per = (E + blockDim.x - 1) / blockDim.x;
  const int lo = threadIdx.x * per < E ? threadIdx.x * per : E;
  const int hi = lo + per < E ? lo + per : E;
  long long local = 0;
  for (int e = lo; e < hi; ++e) local += tot[e];
  long long incl = local;
  for (int off = 1; off < 32; off <<= 1) {
    const long long y = __shfl_up_sync(kFull, incl, off);
    if (lane >= off) incl += y;
  }
  if (lane == 31) warp_tot[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    const int nwarps = blockDim.x >> 5;
    long long v = lane < nwarps ? warp_tot[lane] : 0;
    for (int off = 1; off < 32; off <<= 1) {
      const long long y = __shfl_up_sync(kFull, v, off);
      if (lane >= off) v += y;
    }
    warp_tot[lane] = v;  // inclusive over warps
  }
  __syncthreads();
  long long base = (warp > 0 ? warp_tot[warp - 1] : 0) + incl - local;
  for (int e = lo; e < hi; ++e) {
    const long long v = tot[e];
    tot[e] = base;
    base += v;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    long long run = tot[e];
    if (offsets != nullptr) offsets[e] = run;
    for (int64_t c = 0; c < chunks; ++c) {
      const int v = chunk_counts[c * E + e];
      chunk_counts[c * E + e] = static_cast<int>(run);
      run += v;
    }
  }
  if (threadIdx.x == 0 && offsets != nullptr) offsets[E] = warp_tot[(blockDim.x >> 5) - 1];
}

// Rows of each pair: a warp walks its chunk 32 pairs at a time in flat order; lanes with the
// same expert find each other with __match_any_sync and take consecutive rows by lane order,
// so the grouping is stable (pair order within an expert) without any ordering atomics.
__global__ void rank_kernel(const int64_t* __restrict__ idx, int64_t n, int K, int64_t chunk,
                            int64_t chunks, int E, const int* __restrict__ bases,
                            int64_t* __restrict__ token_idx, int64_t* __restrict__ row_of_pair) {
  extern __shared__ int next_all[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t c = int64_t(blockIdx.x) * kIndexWarps + warp;
  if (c >= chunks) return;
  int* next = next_all + warp * E;
  for (int e = lane; e < E; e += 32) next[e] = bases[c * E + e];
  __syncwarp();
  const int64_t begin = c * chunk, end = begin + chunk < n ? begin + chunk : n;
  const unsigned lower = (1u << lane) - 1u;
  for (int64_t p0 = begin; p0 < end; p0 += 32) {  // uniform over the warp
    const int64_t p = p0 + lane;
    int e = -1;
    if (p < end) {
      const int64_t v = idx[p];
      if (v >= 0 && v < E) e = static_cast<int>(v);
    }
    const unsigned peers = __match_any_sync(kFull, e);
    const int rank = __popc(peers & lower);
    if (e >= 0) {
      const int64_t dest = next[e] + rank;
      row_of_pair[p] = dest;
      token_idx[dest] = p / K;
    } else if (p < end) {
      row_of_pair[p] = -1;
    }
    __syncwarp();
    if (e >= 0 && rank == 0) next[e] += __popc(peers);
    __syncwarp();
  }
}

// ---- gather -----------------------------------------------------------------------------------

template <typename V>
__global__ void gather_rows_kernel(const V* __restrict__ src, int64_t src_rows,
                                   const int64_t* __restrict__ index, int64_t num_rows,
                                   int64_t vecs, V* __restrict__ dst) {
  const int lane = threadIdx.x & 31;
  const int64_t wpb = blockDim.x >> 5;
  for (int64_t n = int64_t(blockIdx.x) * wpb + (threadIdx.x >> 5); n < num_rows;
       n += int64_t(gridDim.x) * wpb) {
    const int64_t s = index[n];
    V* out = dst + n * vecs;
    if (s >= 0 && s < src_rows) {
      const V* in = src + s * vecs;
      for (int64_t j = lane; j < vecs; j += 32) out[j] = in[j];
    } else {
      for (int64_t j = lane; j < vecs; j += 32) out[j] = V{};
    }
  }
}

template <typename V>
int gather_as(const GatherRowsParams& p, cudaStream_t stream) {
  const int64_t vecs = p.row_bytes / static_cast<int64_t>(sizeof(V));
  const int grid = grid_for(p.num_rows, kRowThreads / 32, 32LL * sm_count());
  gather_rows_kernel<V><<<grid, kRowThreads, 0, stream>>>(
      static_cast<const V*>(p.src), p.src_rows, p.index, p.num_rows, vecs, static_cast<V*>(p.dst));
  return static_cast<int>(cudaGetLastError());
}

bool aligned(const void* ptr, size_t bytes) {
  return reinterpret_cast<uintptr_t>(ptr) % bytes == 0;
}

// ---- combine ----------------------------------------------------------------------------------

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFull, v, off);
  return v;
}

// One warp per token, lanes over packs of V elements. __fmul_rn / __fadd_rn keep the compiler
// from fusing into FMAs: each term is rounded like the reference's separate mul and add.
template <typename T, int V>
__global__ void combine_rows_kernel(const Pack<T, V>* __restrict__ rows, int64_t num_rows,
                                    const int64_t* __restrict__ row_of_pair,
                                    const float* __restrict__ weights, int64_t num_tokens, int K,
                                    int64_t packs, Pack<T, V>* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int64_t wpb = blockDim.x >> 5;
  for (int64_t t = int64_t(blockIdx.x) * wpb + (threadIdx.x >> 5); t < num_tokens;
       t += int64_t(gridDim.x) * wpb) {
    for (int64_t j = lane; j < packs; j += 32) {
      float acc[V];
#pragma unroll
      for (int i = 0; i < V; ++i) acc[i] = 0.0f;
      for (int k = 0; k < K; ++k) {
        const int64_t r = row_of_pair[t * K + k];
        if (r < 0 || r >= num_rows) continue;
        const float w = weights != nullptr ? weights[t * K + k] : 1.0f;
        const Pack<T, V> y = rows[r * packs + j];
#pragma unroll
        for (int i = 0; i < V; ++i) acc[i] = __fadd_rn(acc[i], __fmul_rn(to_float(y.v[i]), w));
      }
      Pack<T, V> o;
#pragma unroll
      for (int i = 0; i < V; ++i) o.v[i] = from_float<T>(acc[i]);
      out[t * packs + j] = o;
    }
  }
}

template <typename T, int V>
__global__ void combine_rows_backward_kernel(
    const Pack<T, V>* __restrict__ grad_out, const Pack<T, V>* __restrict__ rows, int64_t num_rows,
    const int64_t* __restrict__ row_of_pair, const float* __restrict__ weights, int64_t num_tokens,
    int K, int64_t packs, Pack<T, V>* __restrict__ grad_rows, float* __restrict__ grad_weights) {
  const int lane = threadIdx.x & 31;
  const int64_t wpb = blockDim.x >> 5;
  for (int64_t t = int64_t(blockIdx.x) * wpb + (threadIdx.x >> 5); t < num_tokens;
       t += int64_t(gridDim.x) * wpb) {
    for (int k = 0; k < K; ++k) {
      const int64_t r = row_of_pair[t * K + k];
      const bool ok = r >= 0 && r < num_rows;  // uniform over the warp
      const float w = weights != nullptr ? weights[t * K + k] : 1.0f;
      float dot = 0.0f;
      if (ok) {
        for (int64_t j = lane; j < packs; j += 32) {
          const Pack<T, V> g = grad_out[t * packs + j];
          Pack<T, V> o;
#pragma unroll
          for (int i = 0; i < V; ++i) o.v[i] = from_float<T>(__fmul_rn(to_float(g.v[i]), w));
          grad_rows[r * packs + j] = o;
          if (grad_weights != nullptr) {
            const Pack<T, V> y = rows[r * packs + j];
#pragma unroll
            for (int i = 0; i < V; ++i) {
              dot = __fadd_rn(dot, __fmul_rn(to_float(g.v[i]), to_float(y.v[i])));
            }
          }
        }
      }
      if (grad_weights != nullptr) {
        dot = warp_sum(dot);
        if (lane == 0) grad_weights[t * K + k] = dot;
      }
    }
  }
}

template <typename T, int V>
int run_combine(const CombineRowsParams& p, int grid, cudaStream_t stream) {
  using P = Pack<T, V>;
  combine_rows_kernel<T, V><<<grid, kRowThreads, 0, stream>>>(
      static_cast<const P*>(p.rows), p.num_rows, p.row_of_pair, p.weights, p.num_tokens, p.top_k,
      p.dim / V, static_cast<P*>(p.out));
  return static_cast<int>(cudaGetLastError());
}

template <typename T, int V>
int run_combine_backward(const CombineRowsBackwardParams& p, int grid, cudaStream_t stream) {
  using P = Pack<T, V>;
  combine_rows_backward_kernel<T, V><<<grid, kRowThreads, 0, stream>>>(
      static_cast<const P*>(p.grad_out), static_cast<const P*>(p.rows), p.num_rows, p.row_of_pair,
      p.weights, p.num_tokens, p.top_k, p.dim / V, static_cast<P*>(p.grad_rows), p.grad_weights);
  return static_cast<int>(cudaGetLastError());
}

// 16-byte packs when the row length and every pointer allow them, else one element at a time.
bool use_wide(DType dtype, int64_t dim, std::initializer_list<const void*> ptrs) {
  const int64_t per16 = dtype == DType::kFloat32 ? 4 : 8;
  bool wide = dim % per16 == 0;
  for (const void* ptr : ptrs) wide = wide && (ptr == nullptr || aligned(ptr, 16));
  return wide;
}

}  // namespace

// ---- launchers ----------------------------------------------------------------------------------

size_t permute_index_workspace_bytes(int64_t num_tokens, int top_k, int n_experts) {
  const int64_t n = num_tokens * top_k;
  if (n <= 0 || n_experts <= 0) return 0;
  return sizeof(int) * static_cast<size_t>(num_chunks(n)) * static_cast<size_t>(n_experts);
}

int launch_permute_index(const PermuteIndexParams& p, cudaStream_t stream) {
  const int E = p.n_experts;
  if (E < 1 || E > kPermuteMaxExperts || p.top_k < 1 || p.num_tokens < 0 || p.counts == nullptr) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const int64_t n = p.num_tokens * p.top_k;
  if (n >= (int64_t(1) << 31)) return static_cast<int>(cudaErrorInvalidValue);
  if (n == 0) {
    cudaError_t err = cudaMemsetAsync(p.counts, 0, sizeof(int64_t) * E, stream);
    if (err == cudaSuccess && p.offsets != nullptr) {
      err = cudaMemsetAsync(p.offsets, 0, sizeof(int64_t) * (E + 1), stream);
    }
    return static_cast<int>(err);
  }
  if (p.topk_idx == nullptr || p.token_idx == nullptr || p.row_of_pair == nullptr ||
      p.workspace == nullptr ||
      p.workspace_bytes < permute_index_workspace_bytes(p.num_tokens, p.top_k, E)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const int64_t chunk = chunk_pairs(n), chunks = num_chunks(n);
  auto* chunk_counts = static_cast<int*>(p.workspace);
  const int blocks = static_cast<int>((chunks + kIndexWarps - 1) / kIndexWarps);
  const size_t smem = sizeof(int) * kIndexWarps * static_cast<size_t>(E);
  chunk_histogram_kernel<<<blocks, kIndexWarps * 32, smem, stream>>>(p.topk_idx, n, chunk, chunks,
                                                                     E, chunk_counts);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return static_cast<int>(err);
  scan_kernel<<<1, kScanThreads, sizeof(long long) * E, stream>>>(chunk_counts, chunks, E, p.counts,
                                                                  p.offsets);
  if ((err = cudaGetLastError()) != cudaSuccess) return static_cast<int>(err);
  rank_kernel<<<blocks, kIndexWarps * 32, smem, stream>>>(p.topk_idx, n, p.top_k, chunk, chunks, E,
                                                          chunk_counts, p.token_idx, p.row_of_pair);
  return static_cast<int>(cudaGetLastError());
}

int launch_gather_rows(const GatherRowsParams& p, cudaStream_t stream) {
  if (p.num_rows < 0 || p.row_bytes < 0 || p.src_rows < 0) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (p.num_rows == 0 || p.row_bytes == 0) return static_cast<int>(cudaSuccess);
  if (p.dst == nullptr || p.index == nullptr || (p.src == nullptr && p.src_rows > 0)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const auto fits = [&](size_t b) {
    return p.row_bytes % static_cast<int64_t>(b) == 0 && aligned(p.src, b) && aligned(p.dst, b);
  };
  if (fits(16)) return gather_as<uint4>(p, stream);
  if (fits(8)) return gather_as<uint2>(p, stream);
  if (fits(4)) return gather_as<unsigned>(p, stream);
  if (fits(2)) return gather_as<unsigned short>(p, stream);
  return gather_as<unsigned char>(p, stream);
}

int launch_combine_rows(const CombineRowsParams& p, cudaStream_t stream) {
  if (p.num_tokens < 0 || p.top_k < 1 || p.dim < 0 || p.num_rows < 0) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (p.num_tokens == 0 || p.dim == 0) return static_cast<int>(cudaSuccess);
  if (p.out == nullptr || p.row_of_pair == nullptr || (p.rows == nullptr && p.num_rows > 0)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const int grid = grid_for(p.num_tokens, kRowThreads / 32, 32LL * sm_count());
  const bool wide = use_wide(p.dtype, p.dim, {p.rows, p.out});
  switch (p.dtype) {
    case DType::kFloat32:
      return wide ? run_combine<float, 4>(p, grid, stream) : run_combine<float, 1>(p, grid, stream);
    case DType::kBFloat16:
      return wide ? run_combine<__nv_bfloat16, 8>(p, grid, stream)
                  : run_combine<__nv_bfloat16, 1>(p, grid, stream);
    case DType::kFloat16:
      return wide ? run_combine<__half, 8>(p, grid, stream)
                  : run_combine<__half, 1>(p, grid, stream);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

int launch_combine_rows_backward(const CombineRowsBackwardParams& p, cudaStream_t stream) {
  if (p.num_tokens < 0 || p.top_k < 1 || p.dim < 0 || p.num_rows < 0) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (p.num_tokens == 0) return static_cast<int>(cudaSuccess);
  if (p.row_of_pair == nullptr ||
      (p.dim > 0 && (p.grad_out == nullptr || p.grad_rows == nullptr)) ||
      (p.grad_weights != nullptr && p.dim > 0 && p.rows == nullptr)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const int grid = grid_for(p.num_tokens, kRowThreads / 32, 32LL * sm_count());
  const bool wide = use_wide(p.dtype, p.dim, {p.grad_out, p.rows, p.grad_rows});
  switch (p.dtype) {
    case DType::kFloat32:
      return wide ? run_combine_backward<float, 4>(p, grid, stream)
                  : run_combine_backward<float, 1>(p, grid, stream);
    case DType::kBFloat16:
      return wide ? run_combine_backward<__nv_bfloat16, 8>(p, grid, stream)
                  : run_combine_backward<__nv_bfloat16, 1>(p, grid, stream);
    case DType::kFloat16:
      return wide ? run_combine_backward<__half, 8>(p, grid, stream)
                  : run_combine_backward<__half, 1>(p, grid, stream);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace moetron::kernels
