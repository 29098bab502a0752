// Expert assignment histogram: block-local shared-memory counts, one global atomic per
// (block, expert). Indices outside [0, n_experts) are ignored here; the op validates them.
#include <cuda_runtime.h>

#include "moetron/kernels/routing.h"

namespace moetron::kernels {
namespace {

constexpr int kThreads = 256;

__global__ void expert_counts_kernel(const int64_t* __restrict__ idx, int64_t n, int64_t n_experts,
                                     unsigned long long* __restrict__ counts) {
  extern __shared__ unsigned int local[];
  for (int64_t e = threadIdx.x; e < n_experts; e += blockDim.x) local[e] = 0;
  __syncthreads();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t e = idx[i];
    if (e >= 0 && e < n_experts) atomicAdd(&local[e], 1u);
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < n_experts; e += blockDim.x) {
    if (local[e] != 0) atomicAdd(&counts[e], static_cast<unsigned long long>(local[e]));
  }
}

}  // namespace

int launch_expert_counts(const ExpertCountsParams& p, cudaStream_t stream) {
  static_assert(sizeof(unsigned long long) == sizeof(int64_t));
  auto* counts = reinterpret_cast<unsigned long long*>(p.counts);
  cudaError_t err = cudaMemsetAsync(counts, 0, sizeof(int64_t) * p.n_experts, stream);
  if (err != cudaSuccess || p.num_assignments == 0) return static_cast<int>(err);
  const int64_t want = (p.num_assignments + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(want < 1024 ? want : 1024);
  const size_t smem = sizeof(unsigned int) * static_cast<size_t>(p.n_experts);
  expert_counts_kernel<<<blocks, kThreads, smem, stream>>>(p.topk_idx, p.num_assignments,
                                                           p.n_experts, counts);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace moetron::kernels
