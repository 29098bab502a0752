// expert_counts reference: exact counts, zero-token experts, bad indices, cuda on a CPU build.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moetron/core/error.h"
#include "moetron/ops/expert_counts.h"

namespace moetron::ops {
namespace {

TEST(ExpertCounts, ReferenceCountsEveryAssignment) {
  auto idx = torch::tensor({{0, 3}, {3, 1}, {3, 0}}, torch::kLong);
  auto c = expert_counts(idx, 5);
  EXPECT_TRUE(torch::equal(c, torch::tensor({2, 1, 0, 3, 0}, torch::kLong))) << c;
}

TEST(ExpertCounts, LargeRandomMatchesLoop) {
  torch::manual_seed(0);
  auto idx = torch::randint(0, 64, {1000, 8}, torch::kLong);
  auto c = expert_counts(idx, 64);
  std::vector<int64_t> want(64, 0);
  auto acc = idx.accessor<int64_t, 2>();
  for (int64_t t = 0; t < 1000; ++t)
    for (int k = 0; k < 8; ++k) want[acc[t][k]]++;
  EXPECT_EQ(c.sum().item<int64_t>(), 8000);
  for (int e = 0; e < 64; ++e) EXPECT_EQ(c[e].item<int64_t>(), want[e]);
}

TEST(ExpertCounts, RejectsOutOfRangeAndFloat) {
  EXPECT_THROW(expert_counts(torch::tensor({0, 5}, torch::kLong), 5), Error);
  EXPECT_THROW(expert_counts(torch::tensor({-1}, torch::kLong), 5), Error);
  EXPECT_THROW(expert_counts(torch::tensor({0.0}), 5), Error);
}

TEST(ExpertCounts, EmptyInputGivesZeros) {
  auto c = expert_counts(torch::empty({0, 2}, torch::kLong), 3);
  EXPECT_TRUE(torch::equal(c, torch::zeros({3}, torch::kLong)));
}

TEST(ExpertCounts, CudaRequestOnCpuTensorIsAClearError) {
  try {
    expert_counts(torch::tensor({0, 1}, torch::kLong), 2, Impl::kCuda);
    FAIL() << "no throw";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_TRUE(msg.find("CUDA tensor") != std::string::npos ||
                msg.find("no CUDA kernels") != std::string::npos)
        << msg;
  }
}

TEST(Impl, ParseNamesTheKey) {
  EXPECT_EQ(parse_impl("cuda", "kernels.gate"), Impl::kCuda);
  try {
    parse_impl("triton", "kernels.gate");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("kernels.gate: unknown implementation 'triton'"),
              std::string::npos);
  }
}

}  // namespace
}  // namespace moetron::ops
