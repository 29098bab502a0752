// train.dtype bf16: the forward runs under autocast (CPU autocast here; CUDA on GPUs) while the
// parameters and optimizer state stay fp32 master weights.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moetron/ckpt/safetensors.h"
#include "moetron/train/autocast.h"
#include "moetron/train/trainer.h"
#include "train/train_test_util.h"

namespace moetron::train::testing {
namespace {

class Autocast : public ScratchTest {};

TEST_F(Autocast, GuardSwitchesMatmulsToBf16AndRestores) {
  auto a = torch::randn({8, 8});
  {
    AutocastGuard guard(torch::kCPU, "bf16");
    EXPECT_EQ(torch::mm(a, a).scalar_type(), torch::kBFloat16);
  }
  EXPECT_EQ(torch::mm(a, a).scalar_type(), torch::kFloat32);
  AutocastGuard off(torch::kCPU, "fp32");
  EXPECT_EQ(torch::mm(a, a).scalar_type(), torch::kFloat32);
}

TEST_F(Autocast, Bf16TrainingKeepsFp32MasterWeightsAndDiffersFromFp32) {
  auto fp32 = train(tiny_config(dir_, "fp32", {"train.steps=3"}));
  auto bf16 = train(tiny_config(dir_, "bf16", {"train.steps=3", "train.dtype=bf16"}));
  EXPECT_TRUE(std::isfinite(bf16.last_loss));
  EXPECT_NE(bf16.last_loss, fp32.last_loss) << "bf16 autocast did not change the arithmetic";
  EXPECT_NEAR(bf16.last_loss, fp32.last_loss, 0.1 * fp32.last_loss);
  auto weights = ckpt::load_safetensors(checkpoint("bf16", 3) + "/model.safetensors");
  for (const auto& [name, t] : weights) {
    EXPECT_EQ(t.scalar_type(), torch::kFloat32) << name;
  }
  auto optimizer = ckpt::load_safetensors(checkpoint("bf16", 3) + "/optimizer.safetensors");
  for (const auto& [name, t] : optimizer) {
    if (t.is_floating_point() && t.dim() > 0) {
      EXPECT_EQ(t.scalar_type(), torch::kFloat32) << name;
    }
  }
}

}  // namespace
}  // namespace moetron::train::testing
