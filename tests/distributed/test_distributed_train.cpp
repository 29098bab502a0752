// `moetron train` on several local ranks (Gloo): data and expert parallelism give the losses of
// one process on the same global batch, and a checkpoint saved at ep=2 resumes at ep=1 and ep=4
// with the same next-step loss.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "spawn.h"

namespace {

namespace fs = std::filesystem;
using moetron::testing::all_output;
using moetron::testing::run_ranks;

const std::string kMoetron = MOETRON_BINARY_DIR "/bin/moetron";
const std::string kTiny = MOETRON_SOURCE_DIR "/configs/tiny.yaml";

class DistributedTrain : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    root_ = (fs::temp_directory_path() /
             (std::string("moetron_dtrain_") + info->name() + "_" + std::to_string(::getpid())))
                .string();
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override {
    if (!HasFailure() && !std::getenv("MOETRON_KEEP_TEST_DIRS")) fs::remove_all(root_);
  }

  // `moetron train tiny.yaml` on `world` ranks with `micro` rows each (the global batch is
  // world x micro), run name `name`.
  void train(const std::string& name, int world, int ep, int micro, int steps,
             std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {kMoetron,
                                     "train",
                                     kTiny,
                                     "train.steps=" + std::to_string(steps),
                                     "train.micro_batch_size=" + std::to_string(micro),
                                     "data.seq_len=32",
                                     "train.eval_every=0",
                                     "optim.warmup_steps=1",
                                     "train.eval_batches=1",
                                     "data.task_eval_size=4",
                                     "ckpt.save_every=2",
                                     "dist.ep=" + std::to_string(ep),
                                     "dist.timeout_s=120",
                                     "log.every=1",
                                     "log.run_dir=" + root_,
                                     "log.name=" + name};
    argv.insert(argv.end(), extra.begin(), extra.end());
    const std::string logs = root_ + "/logs_" + name + "_" + std::to_string(world);
    fs::create_directories(logs);
    auto run = run_ranks(argv, world, logs, 280);
    ASSERT_FALSE(run.timed_out) << all_output(run);
    for (const auto& r : run.ranks) ASSERT_EQ(r.exit_code, 0) << all_output(run);
  }

  // step -> loss from runs/<name>/metrics.jsonl.
  std::map<int64_t, double> losses(const std::string& name) {
    std::map<int64_t, double> out;
    std::ifstream in(root_ + "/" + name + "/metrics.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      auto rec = nlohmann::json::parse(line);
      if (rec.contains("loss") && rec.contains("grad_norm")) {
        out[rec["step"].get<int64_t>()] = rec["loss"].get<double>();
      }
    }
    return out;
  }

  void expect_same_losses(const std::map<int64_t, double>& got,
                          const std::map<int64_t, double>& want, double tol) {
    ASSERT_EQ(got.size(), want.size());
    for (const auto& [step, loss] : want) {
      ASSERT_TRUE(got.count(step)) << "step " << step;
      EXPECT_NEAR(got.at(step), loss, tol * std::max(1.0, std::abs(loss))) << "step " << step;
    }
  }

  std::string root_;
};

TEST_F(DistributedTrain, DataParallelTwoRanksEqualOneProcessWithTheDoubledBatch) {
  train("single", 1, 1, 4, 4);
  train("dp2", 2, 1, 2, 4);
  expect_same_losses(losses("dp2"), losses("single"), 2e-5);
}

TEST_F(DistributedTrain, ExpertParallelRunsEqualOneProcess) {
  train("single", 1, 1, 4, 4);
  train("ep2", 2, 2, 2, 4);
  expect_same_losses(losses("ep2"), losses("single"), 2e-5);
  // The sharded checkpoint records its layout and holds one expert file per shard.
  const std::string ckpt = root_ + "/ep2/checkpoints/step-4";
  ASSERT_TRUE(fs::exists(ckpt + "/model.experts-0-of-2.safetensors"));
  ASSERT_TRUE(fs::exists(ckpt + "/model.experts-1-of-2.safetensors"));
  ASSERT_TRUE(fs::exists(ckpt + "/optimizer.experts-1-of-2.safetensors"));
  ASSERT_TRUE(fs::exists(ckpt + "/rng.rank-1.safetensors"));
  // It exports to HF format with all 8 experts of each MoE layer, assembled from both shards.
  const std::string hf = root_ + "/ep2_hf";
  auto run = run_ranks({kMoetron, "convert", "--from", root_ + "/ep2", "--to", hf, "--dtype",
                        "fp32"},
                       1, root_, 120);
  ASSERT_EQ(run.ranks[0].exit_code, 0) << all_output(run);
  std::ifstream in(hf + "/model.safetensors", std::ios::binary);
  uint64_t header_len = 0;
  in.read(reinterpret_cast<char*>(&header_len), 8);
  std::string header(header_len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_len));
  const auto names = nlohmann::json::parse(header);
  for (const std::string expert : {"0", "3", "4", "7"}) {
    EXPECT_TRUE(names.contains("model.layers.2.mlp.experts." + expert + ".down_proj.weight"))
        << expert;
  }
}

// Saved at ep=2 after 2 steps; resumed for a third step at ep=2, at ep=1 (one process) and at
// ep=4: the same global batch must give the same third-step loss.
TEST_F(DistributedTrain, CheckpointSavedAtEp2ResumesAtEp1AndEp4) {
  train("base", 2, 2, 2, 2);
  for (const std::string name : {"as_ep2", "as_ep1", "as_ep4"}) {
    fs::copy(root_ + "/base", root_ + "/" + name, fs::copy_options::recursive);
  }
  train("as_ep2", 2, 2, 2, 3);
  train("as_ep1", 1, 1, 4, 3);
  train("as_ep4", 4, 4, 1, 3);
  const double want = losses("as_ep2").at(3);
  EXPECT_NEAR(losses("as_ep1").at(3), want, 2e-5);
  EXPECT_NEAR(losses("as_ep4").at(3), want, 2e-5);
}

TEST_F(DistributedTrain, LayoutErrorsNameTheKey) {
  const std::string logs = root_ + "/logs_bad";
  fs::create_directories(logs);
  auto expect_error = [&](int world, const std::string& ep, const std::string& message) {
    auto run = run_ranks({kMoetron, "train", kTiny, "dist.ep=" + ep, "log.run_dir=" + root_},
                         world, logs, 120);
    ASSERT_FALSE(run.timed_out) << all_output(run);
    for (const auto& r : run.ranks) {
      EXPECT_EQ(r.exit_code, 2) << all_output(run);
      EXPECT_NE(r.output.find(message), std::string::npos) << r.output;
    }
  };
  // 8 experts do not split over 3 ranks; 3 ranks are not a multiple of ep=2.
  expect_error(3, "3", "moe.n_routed_experts (8) must be divisible by dist.ep (3)");
  expect_error(3, "2", "dist.ep=2 does not divide the world size 3");
}

}  // namespace
