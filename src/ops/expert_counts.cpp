// expert_counts: the bincount reference and the dispatch to the CUDA histogram kernel.
#include "moetron/ops/expert_counts.h"

#include <torch/torch.h>

#include "moetron/build_config.h"
#include "moetron/core/error.h"

#if MOETRON_HAVE_CUDA_KERNELS
#include <c10/cuda/CUDAStream.h>

#include "moetron/kernels/routing.h"
#endif

namespace moetron::ops {
namespace {

torch::Tensor expert_counts_reference(const torch::Tensor& idx, int64_t n_experts) {
  return torch::bincount(idx.reshape(-1).to(torch::kLong), {}, n_experts);
}

torch::Tensor expert_counts_cuda(const torch::Tensor& idx, int64_t n_experts) {
#if MOETRON_HAVE_CUDA_KERNELS
  MOETRON_CHECK(idx.is_cuda(), "expert_counts(cuda): topk_idx must be a CUDA tensor, got ",
                idx.device());
  // Shared memory holds one 32-bit counter per expert.
  MOETRON_CHECK(n_experts <= 8192, "expert_counts(cuda) supports at most 8192 experts, got ",
                n_experts, "; use kernels.gate: reference");
  auto flat = idx.reshape(-1).to(torch::kLong).contiguous();
  auto counts = torch::empty({n_experts}, flat.options());
  kernels::ExpertCountsParams p;
  p.topk_idx = flat.data_ptr<int64_t>();
  p.num_assignments = flat.numel();
  p.n_experts = n_experts;
  p.counts = counts.data_ptr<int64_t>();
  const int err = kernels::launch_expert_counts(p, c10::cuda::getCurrentCUDAStream().stream());
  MOETRON_CHECK(err == 0, "expert_counts CUDA launch failed with cudaError ", err);
  return counts;
#else
  throw Error(ErrorKind::kConfig,
              "expert_counts: implementation 'cuda' requested but this build has no CUDA "
              "kernels (configure with MOETRON_WITH_CUDA=ON); use 'reference'");
#endif
}

}  // namespace

torch::Tensor expert_counts(const torch::Tensor& topk_idx, int64_t n_experts, Impl impl) {
  MOETRON_CHECK(n_experts > 0, "expert_counts: n_experts must be positive, got ", n_experts);
  MOETRON_CHECK(!topk_idx.is_floating_point(), "expert_counts: topk_idx must be integer, got ",
                topk_idx.dtype());
  if (topk_idx.numel() > 0) {
    // One host sync; indices out of range are a routing bug, not something to count silently.
    auto [lo, hi] = torch::aminmax(topk_idx);
    MOETRON_CHECK(lo.item<int64_t>() >= 0 && hi.item<int64_t>() < n_experts,
                  "expert_counts: expert index out of [0, ", n_experts, "): min ",
                  lo.item<int64_t>(), ", max ", hi.item<int64_t>());
  }
  return impl == Impl::kCuda ? expert_counts_cuda(topk_idx, n_experts)
                             : expert_counts_reference(topk_idx, n_experts);
}

}  // namespace moetron::ops
