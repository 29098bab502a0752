// GPU: the CUDA histogram kernel equals the bincount reference over a sweep of shapes.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moetron/ops/expert_counts.h"

namespace moetron::ops {
namespace {

TEST(ExpertCountsGpu, KernelEqualsReference) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device or no CUDA kernels in this build";
  torch::manual_seed(0);
  for (int64_t tokens : {0, 1, 7, 4096, 100003}) {
    for (int64_t experts : {1, 8, 64, 256}) {
      auto idx = torch::randint(0, experts, {tokens, std::min<int64_t>(8, experts)},
                                torch::TensorOptions().dtype(torch::kLong));
      auto want = expert_counts(idx, experts, Impl::kReference);
      auto got = expert_counts(idx.cuda(), experts, Impl::kCuda).cpu();
      EXPECT_TRUE(torch::equal(got, want)) << "tokens " << tokens << " experts " << experts;
    }
  }
  // All tokens on one expert.
  auto idx = torch::full({5000, 1}, 3, torch::kLong);
  auto got = expert_counts(idx.cuda(), 8, Impl::kCuda).cpu();
  EXPECT_EQ(got[3].item<int64_t>(), 5000);
  EXPECT_EQ(got.sum().item<int64_t>(), 5000);
}

}  // namespace
}  // namespace moetron::ops
