// GPU: CUDA tensors (also non-contiguous, bf16/fp8) save through the copy to host and read back
// identical; FP8 dequantisation gives the same result from CUDA inputs as on the CPU.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <filesystem>

#include "moetron/ckpt/hf_checkpoint.h"
#include "moetron/ckpt/safetensors.h"
#include "moetron/core/files.h"

namespace moetron::ckpt {
namespace {

TEST(CkptGpu, CudaTensorsSaveAndLoad) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const std::string dir =
      (std::filesystem::temp_directory_path() / ("moetron_ckpt_gpu_" + std::to_string(::getpid())))
          .string();
  remove_tree(dir);
  std::filesystem::create_directories(dir);
  torch::manual_seed(0);
  const auto x = torch::randn({64, 48}, torch::kCUDA);
  const NamedTensors tensors = {
      {"f32_t", x.t()},
      {"bf16", x.to(torch::kBFloat16)},
      {"fp8", x.to(torch::kFloat8_e4m3fn)},
      {"i64", torch::arange(10, torch::TensorOptions(torch::kCUDA).dtype(torch::kLong))}};
  save_safetensors(dir + "/g.safetensors", tensors);
  const auto back = load_safetensors(dir + "/g.safetensors");
  for (const auto& [name, t] : tensors) {
    const auto got = back.at(name);
    EXPECT_TRUE(got.device().is_cpu());
    EXPECT_TRUE(torch::equal(got.to(torch::kFloat32), t.cpu().to(torch::kFloat32))) << name;
  }
  const auto scale = torch::rand({1, 1}) + 0.5;
  const auto w8 = x.to(torch::kFloat8_e4m3fn);
  EXPECT_TRUE(torch::equal(dequantize_fp8_blocks(w8, scale.cuda(), torch::kFloat32).cpu(),
                           dequantize_fp8_blocks(w8.cpu(), scale, torch::kFloat32)));
  remove_tree(dir);
}

}  // namespace
}  // namespace moetron::ckpt
