// GPU: a training checkpoint of a model and AdamW state living on CUDA round-trips exactly
// (state comes back on the device), and the CUDA generator state is restored.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <filesystem>

#include "moetron/ckpt/train_checkpoint.h"
#include "moetron/core/files.h"
#include "train_fixture.h"

namespace moetron::ckpt {
namespace {

using testing::fixed_batch;
using testing::make_trainer;
using testing::TinyTrainer;
using testing::train_step;

TinyTrainer cuda_trainer(uint64_t seed) {
  TinyTrainer t = make_trainer(seed);
  t.model->to(torch::kCUDA);
  t.optimizer = optim::make_adamw(*t.model, t.cfg.optim);  // over the moved parameters
  return t;
}

TEST(TrainCheckpointGpu, CudaStateAndGeneratorRoundTrip) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const std::string dir = (std::filesystem::temp_directory_path() /
                           ("moetron_trainckpt_gpu_" + std::to_string(::getpid())))
                              .string();
  remove_tree(dir);
  TinyTrainer t = cuda_trainer(0);
  const auto ids = fixed_batch(61).cuda();
  for (int s = 0; s < 2; ++s) train_step(t, ids);  // consumes the CUDA generator
  TrainState state;
  state.step = 2;
  const auto path = save_train_checkpoint(dir, *t.model, *t.optimizer, state, 1);
  const auto after_save = torch::rand({64}, torch::kCUDA);

  TinyTrainer fresh = cuda_trainer(5);
  train_step(fresh, ids);
  load_train_checkpoint(path, *fresh.model, *fresh.optimizer);
  EXPECT_TRUE(torch::equal(torch::rand({64}, torch::kCUDA), after_save));

  const auto named = t.model->named_parameters();
  for (const auto& p : named) {
    const auto q = fresh.model->named_parameters()[p.key()];
    EXPECT_TRUE(q.is_cuda()) << p.key();
    EXPECT_TRUE(torch::equal(p.value(), q)) << p.key();
    const auto& a = static_cast<const torch::optim::AdamWParamState&>(
        *t.optimizer->state().at(p.value().unsafeGetTensorImpl()));
    const auto& b = static_cast<const torch::optim::AdamWParamState&>(
        *fresh.optimizer->state().at(q.unsafeGetTensorImpl()));
    EXPECT_TRUE(b.exp_avg().is_cuda()) << p.key();
    EXPECT_EQ(a.step(), b.step()) << p.key();
    EXPECT_TRUE(torch::equal(a.exp_avg(), b.exp_avg())) << p.key();
    EXPECT_TRUE(torch::equal(a.exp_avg_sq(), b.exp_avg_sq())) << p.key();
  }
  for (const auto& b : t.model->named_buffers()) {
    EXPECT_TRUE(torch::equal(b.value(), fresh.model->named_buffers()[b.key()])) << b.key();
  }
  remove_tree(dir);
}

}  // namespace
}  // namespace moetron::ckpt
