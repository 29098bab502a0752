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
  auto run =
      run_ranks({kMoetron, "convert", "--from", root_ + "/ep2", "--to", hf, "--dtype", "fp32"}, 1,
                root_, 120);
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

// GRPO over 2 ranks: each samples half of the step's prompts; metrics count all of them; the
// run checkpoints and a longer rerun resumes from it.
TEST_F(DistributedTrain, GrpoDataParallelSplitsThePromptsAndResumes) {
  const std::vector<std::string> grpo = {"train.stage=grpo",         "rl.prompts_per_step=4",
                                         "rl.num_generations=2",     "rl.mini_batch_size=8",
                                         "rl.micro_batch_size=4",    "rl.max_new_tokens=8",
                                         "rl.dynamic_sampling=false"};
  train("grpo", 2, 1, 2, 2, grpo);
  std::ifstream in(root_ + "/grpo/metrics.jsonl");
  std::string line;
  int records = 0;
  while (std::getline(in, line)) {
    auto rec = nlohmann::json::parse(line);
    if (!rec.contains("groups_sampled")) continue;
    ++records;
    EXPECT_EQ(rec["groups_sampled"].get<int64_t>(), 4) << line;  // 2 per rank, both counted
    EXPECT_EQ(rec["gen_tokens"].get<int64_t>() > 0, true) << line;
  }
  EXPECT_EQ(records, 2);
  ASSERT_TRUE(fs::exists(root_ + "/grpo/checkpoints/step-2/manifest.json"));
  train("grpo", 2, 1, 2, 3, grpo);
  std::ifstream again(root_ + "/grpo/metrics.jsonl");
  int last = 0;
  while (std::getline(again, line)) {
    auto rec = nlohmann::json::parse(line);
    if (rec.contains("groups_sampled")) last = rec["step"].get<int>();
  }
  EXPECT_EQ(last, 3);
}

// `moetron run` on 2 ranks: rank 0 writes the task data, the three stages reuse one set of
// process groups, and only rank 0 prints the stage table.
TEST_F(DistributedTrain, PipelineRunsOnTwoRanks) {
  const std::string logs = root_ + "/logs_pipeline";
  fs::create_directories(logs);
  auto run = run_ranks(
      {kMoetron, "run", kTiny, "pipeline.pretrain_steps=2", "pipeline.sft_steps=2",
       "pipeline.grpo_steps=1", "pipeline.sft_warmup_steps=0", "pipeline.grpo_warmup_steps=0",
       "optim.warmup_steps=1", "data.seq_len=32", "train.micro_batch_size=2", "rl.max_new_tokens=8",
       "rl.prompts_per_step=4", "rl.mini_batch_size=16", "train.eval_batches=1",
       "data.task_eval_size=4", "log.run_dir=" + root_, "--no-plots"},
      2, logs, 240);
  ASSERT_FALSE(run.timed_out) << all_output(run);
  for (const auto& r : run.ranks) ASSERT_EQ(r.exit_code, 0) << all_output(run);
  EXPECT_NE(run.ranks[0].output.find("stage      steps"), std::string::npos) << all_output(run);
  EXPECT_EQ(run.ranks[1].output.find("stage      steps"), std::string::npos) << all_output(run);
  for (const std::string stage : {"pretrain", "sft", "grpo"}) {
    EXPECT_TRUE(fs::exists(root_ + "/tiny/" + stage + "/metrics.jsonl")) << stage;
  }
}

TEST_F(DistributedTrain, LayoutErrorsNameTheKey) {
  const std::string logs = root_ + "/logs_bad";
  fs::create_directories(logs);
  auto expect_error = [&](int world, const std::string& ep, const std::string& message) {
    auto run = run_ranks({kMoetron, "train", kTiny, "dist.ep=" + ep, "log.run_dir=" + root_}, world,
                         logs, 120);
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

// Rank 0 alone opens the run directory; its refusal (another config lives there) is every
// rank's config error, not a hang or a collective failure on the others.
TEST_F(DistributedTrain, RankZerosRunDirectoryErrorReachesEveryRank) {
  train("taken", 1, 1, 2, 1);
  const std::string logs = root_ + "/logs_taken";
  fs::create_directories(logs);
  auto run = run_ranks(
      {kMoetron, "train", kTiny, "train.steps=1", "data.seq_len=16", "optim.warmup_steps=1",
       "ckpt.resume=none", "log.run_dir=" + root_, "log.name=taken"},
      2, logs, 120);
  ASSERT_FALSE(run.timed_out) << all_output(run);
  for (const auto& r : run.ranks) {
    EXPECT_EQ(r.exit_code, 2) << all_output(run);
    EXPECT_NE(r.output.find("belongs to a different config"), std::string::npos) << r.output;
  }
}

TEST_F(DistributedTrain, GrpoLayoutErrorsNameTheKeys) {
  const std::string logs = root_ + "/logs_bad";
  fs::create_directories(logs);
  auto expect_error = [&](std::vector<std::string> overrides, const std::string& message) {
    std::vector<std::string> argv = {kMoetron, "train", kTiny, "train.stage=grpo",
                                     "log.run_dir=" + root_};
    argv.insert(argv.end(), overrides.begin(), overrides.end());
    auto run = run_ranks(argv, 2, logs, 120);
    ASSERT_FALSE(run.timed_out) << all_output(run);
    for (const auto& r : run.ranks) {
      EXPECT_EQ(r.exit_code, 2) << all_output(run);
      EXPECT_NE(r.output.find(message), std::string::npos) << r.output;
    }
  };
  expect_error({"dist.ep=2"}, "train.stage: grpo supports data parallelism only (dist.ep: 1)");
  expect_error({"rl.prompts_per_step=3", "rl.mini_batch_size=12", "rl.micro_batch_size=4"},
               "rl.prompts_per_step (3) and rl.mini_batch_size (12) must be divisible by the "
               "number of ranks (2)");
}

}  // namespace
