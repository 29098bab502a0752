// The GRPO stage end to end on the tiny model: reward rises on a trivially learnable verifiable
// task, sampler and trainer log-probs agree, resume is bit-exact, dynamic sampling drops groups
// with no signal, the KL reference starts at the policy, and bad batch settings are config
// errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>

#include "moetron/rewards/reward.h"
#include "moetron/train/pipeline.h"
#include "moetron/train/trainer.h"
#include "train_test_util.h"

namespace moetron::train {
namespace {

using namespace moetron::train::testing;

// Test verifiers: the fraction of the completion's bytes that are 'a' (learnable from a random
// model: every sample has some signal), and a constant (no group ever has signal).
class LetterA : public rewards::Verifier {
 public:
  const std::string& name() const override { return name_; }
  double score(const rewards::Sample& s) const override {
    if (s.completion.empty()) return 0;
    return static_cast<double>(std::count(s.completion.begin(), s.completion.end(), 'a')) /
           static_cast<double>(s.completion.size());
  }

 private:
  std::string name_ = "test_letter_a";
};

class Constant : public rewards::Verifier {
 public:
  const std::string& name() const override { return name_; }
  double score(const rewards::Sample&) const override { return 1.0; }

 private:
  std::string name_ = "test_constant";
};

// Reward 1 when the completion's first byte is even: almost every group of 8 has both.
class FirstByteEven : public rewards::Verifier {
 public:
  const std::string& name() const override { return name_; }
  double score(const rewards::Sample& s) const override {
    return !s.completion.empty() && static_cast<unsigned char>(s.completion[0]) % 2 == 0 ? 1 : 0;
  }

 private:
  std::string name_ = "test_first_byte_even";
};

class GrpoTrainerTest : public ScratchTest {
 protected:
  void SetUp() override {
    ScratchTest::SetUp();
    rewards::register_verifier(
        "test_letter_a", [](const rewards::RewardContext&) { return std::make_unique<LetterA>(); });
    rewards::register_verifier("test_constant", [](const rewards::RewardContext&) {
      return std::make_unique<Constant>();
    });
    rewards::register_verifier("test_first_byte_even", [](const rewards::RewardContext&) {
      return std::make_unique<FirstByteEven>();
    });
    prompts_ = dir_ + "/prompts.jsonl";
    std::ofstream out(prompts_);
    for (int i = 0; i < 16; ++i) {
      out << R"({"prompt":"Write the letter a, )" << i
          << R"( times.","answer":"a","task":"letters"})"
          << "\n";
    }
  }

  // A GRPO run on the letter-a task: 4 prompts x 8 samples, 16 new tokens.
  config::Config grpo_config(const std::string& name, std::vector<std::string> extra = {}) {
    std::vector<std::string> o = {"train.stage=grpo",
                                  "data.train_path=" + prompts_,
                                  "rl.rewards=[{name: test_letter_a, weight: 1.0}]",
                                  "rl.prompts_per_step=4",
                                  "rl.num_generations=8",
                                  "rl.mini_batch_size=32",
                                  "rl.micro_batch_size=16",
                                  "rl.max_new_tokens=16",
                                  "optim.lr=3e-3",
                                  "optim.min_lr=3e-3",
                                  "optim.warmup_steps=0",
                                  "train.steps=4"};
    o.insert(o.end(), extra.begin(), extra.end());
    return tiny_config(dir_, name, o);
  }

  std::string prompts_;
};

double mean_reward(const std::vector<nlohmann::json>& recs, size_t from, size_t to) {
  double s = 0;
  for (size_t i = from; i < to; ++i) s += recs[i].at("reward_mean").get<double>();
  return s / static_cast<double>(to - from);
}

TEST_F(GrpoTrainerTest, RewardRisesOnATriviallyLearnableTask) {
  const auto r =
      train(grpo_config("learn", {"train.steps=30", "optim.lr=1e-2", "optim.min_lr=1e-2"}));
  EXPECT_EQ(r.steps, 30);
  const auto recs = step_records(run_path("learn") + "/metrics.jsonl");
  ASSERT_EQ(recs.size(), 30u);
  const double first = mean_reward(recs, 0, 5), last = mean_reward(recs, 25, 30);
  EXPECT_LT(first, 0.1);
  EXPECT_GT(last, first + 0.4) << "reward did not rise: first 5 steps " << first
                               << ", last 5 steps " << last;
  // Same weights sample and train (fp32, one update per rollout batch): the trainer's
  // log-probs are the sampler's up to round-off.
  for (const auto& rec : recs) {
    EXPECT_LT(rec.at("logp_diff_max").get<double>(), 1e-4) << rec.dump();
    EXPECT_EQ(rec.at("optimizer_steps").get<int64_t>(), rec.at("step").get<int64_t>());
  }
}

TEST_F(GrpoTrainerTest, MetricsRecordsAreComplete) {
  train(grpo_config("metrics", {"train.steps=1", "rl.ppo_epochs=2", "rl.mini_batch_size=16",
                                "rl.micro_batch_size=8"}));
  const auto recs = step_records(run_path("metrics") + "/metrics.jsonl");
  ASSERT_EQ(recs.size(), 1u);
  const auto& r = recs[0];
  for (const char* k : {"reward_mean",
                        "reward/test_letter_a",
                        "response_length_mean",
                        "response_length_max",
                        "truncation_ratio",
                        "entropy",
                        "groups_sampled",
                        "groups_kept",
                        "advantage_mean",
                        "advantage_std",
                        "clip_frac_low",
                        "clip_frac_high",
                        "ratio_mean",
                        "ratio_max",
                        "logp_diff_max",
                        "grad_norm",
                        "lr",
                        "gen_tokens_per_s",
                        "time_generate_s",
                        "time_train_s",
                        "memory_generate_mb",
                        "memory_train_mb"}) {
    EXPECT_TRUE(r.contains(k)) << k << " missing in " << r.dump();
  }
  EXPECT_FALSE(r.contains("accuracy"));  // no accuracy verifier configured
  EXPECT_FALSE(r.contains("kl"));        // beta 0
  // 2 epochs x (32 / 16) mini-batches: four updates; the stored old log-probs came from the
  // policy that sampled, so they match the sampler.
  EXPECT_EQ(r.at("optimizer_steps").get<int64_t>(), 4);
  EXPECT_LT(r.at("logp_diff_max").get<double>(), 1e-4);
  // It is measured, not a constant: the cached decode (absorbed MLA) and the trainer's full
  // forward round differently in fp32.
  EXPECT_GT(r.at("logp_diff_max").get<double>(), 0.0);
  EXPECT_GT(r.at("entropy").get<double>(), 0.0);
  EXPECT_NEAR(r.at("advantage_mean").get<double>(), 0.0, 1e-6);
}

TEST_F(GrpoTrainerTest, ResumeIsBitExact) {
  const std::vector<std::string> common = {"train.steps=4", "ckpt.save_every=2", "ckpt.keep_last=0",
                                           "rl.ppo_epochs=2", "rl.mini_batch_size=16"};
  const auto straight = train(grpo_config("straight", common));
  const std::string k2 = checkpoint("straight", 2);
  const std::string resumed_ckpts = run_path("resumed") + "/checkpoints";
  fs::create_directories(resumed_ckpts);
  fs::copy(k2, resumed_ckpts + "/step-2", fs::copy_options::recursive);
  write_file_atomic(resumed_ckpts + "/latest", "step-2\n");
  const auto resumed = train(grpo_config("resumed", common));
  ASSERT_EQ(resumed.steps, 4);
  expect_same_checkpoint(straight.checkpoint, resumed.checkpoint);
  EXPECT_EQ(loader_state(resumed.checkpoint), loader_state(straight.checkpoint));
  const auto a = step_records(run_path("straight") + "/metrics.jsonl");
  const auto b = step_records(run_path("resumed") + "/metrics.jsonl");
  ASSERT_EQ(a.size(), 4u);
  ASSERT_EQ(b.size(), 2u);
  for (size_t i = 0; i < 2; ++i) EXPECT_EQ(without_timing(b[i]), without_timing(a[2 + i]));
}

TEST_F(GrpoTrainerTest, DynamicSamplingDropsGroupsWithoutSignal) {
  const auto cfg =
      grpo_config("flat", {"train.steps=1", "rl.dynamic_sampling=true", "rl.max_sampling_rounds=3",
                           "rl.rewards=[{name: test_constant, weight: 1.0}]"});
  const auto before = [&] {
    torch::manual_seed(cfg.train.seed);
    model::DeepseekV3ForCausalLM m(cfg);
    return m->named_parameters().find("lm_head.weight")->clone();
  }();
  const auto r = train(cfg);
  const auto recs = step_records(run_path("flat") + "/metrics.jsonl");
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0].at("groups_kept").get<int64_t>(), 0);
  EXPECT_EQ(recs[0].at("groups_sampled").get<int64_t>(), 12);  // 3 rounds x 4 prompts
  EXPECT_EQ(recs[0].at("sampling_rounds").get<int64_t>(), 3);
  EXPECT_EQ(recs[0].at("optimizer_steps").get<int64_t>(), 0);
  const auto after = ckpt::load_safetensors(r.checkpoint + "/model.safetensors");
  EXPECT_TRUE(torch::equal(after.at("lm_head.weight"), before)) << "no group, no update";

  // With signal in most groups, the few flat ones are replaced until the batch is full.
  train(grpo_config("mixed", {"train.steps=1", "rl.dynamic_sampling=true",
                              "rl.rewards=[{name: test_first_byte_even, weight: 1.0}]"}));
  const auto m = step_records(run_path("mixed") + "/metrics.jsonl");
  EXPECT_EQ(m[0].at("groups_kept").get<int64_t>(), 4);
  EXPECT_LT(m[0].at("groups_sampled").get<int64_t>(), 12) << "most groups have signal";
}

TEST_F(GrpoTrainerTest, KlToAFrozenReferenceStartsAtZero) {
  // The reference is the starting policy: a pretrain checkpoint of the same tiny model.
  const auto base = train(tiny_config(dir_, "base", {"train.steps=1", "optim.warmup_steps=0"}));
  train(grpo_config("kl", {"train.steps=3", "rl.beta=0.1", "train.init_from=" + base.checkpoint}));
  const auto recs = step_records(run_path("kl") + "/metrics.jsonl");
  ASSERT_EQ(recs.size(), 3u);
  EXPECT_EQ(recs[0].at("kl").get<double>(), 0.0);  // policy == reference at the first update
  EXPECT_GT(recs[2].at("kl").get<double>(), 0.0);
}

TEST_F(GrpoTrainerTest, ConfigErrorsNameTheKey) {
  auto expect_config_error = [&](const std::vector<std::string>& extra, const std::string& key) {
    try {
      train(grpo_config("bad", extra));
      FAIL() << "no error for " << key;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kConfig) << e.what();
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    }
  };
  expect_config_error({"rl.mini_batch_size=12"}, "rl.mini_batch_size");
  expect_config_error({"rl.micro_batch_size=5"}, "rl.micro_batch_size");
  expect_config_error({"rl.beta=0.04"}, "train.init_from");
  expect_config_error({"rl.rewards=[{name: acuracy, weight: 1.0}]"}, "acuracy");
  expect_config_error({"rl.loss_agg=tokens"}, "rl.loss_agg");
}

// `moetron run`: the built-in task's data, then pretrain -> SFT -> GRPO, each stage starting
// from the previous one; a rerun finds every stage finished and only evaluates.
TEST_F(GrpoTrainerTest, PipelineRunsThreeStagesAndARerunResumes) {
  const auto cfg =
      tiny_config(dir_, "pipe",
                  {"pipeline.pretrain_steps=2", "pipeline.sft_steps=2", "pipeline.grpo_steps=2",
                   "pipeline.sft_warmup_steps=0", "rl.prompts_per_step=2", "rl.num_generations=4",
                   "rl.mini_batch_size=8", "rl.micro_batch_size=4"});
  const auto stages = run_pipeline(cfg);
  ASSERT_EQ(stages.size(), 3u);
  EXPECT_EQ(stages[2].stage, "grpo");
  EXPECT_EQ(stages[2].result.steps, 2);
  EXPECT_GT(stages[2].result.eval.total, 0);
  const std::string grpo = run_path("pipe") + "/grpo";
  const std::string grpo_yaml = read_text_file(grpo + "/config.yaml");
  EXPECT_NE(grpo_yaml.find("init_from: " + run_path("pipe") + "/sft"), std::string::npos)
      << grpo_yaml;
  const auto table = format_stage_table(stages);
  EXPECT_NE(table.find("grpo"), std::string::npos) << table;
  const std::string metrics = read_text_file(grpo + "/metrics.jsonl");

  const auto again = run_pipeline(cfg);
  ASSERT_EQ(again.size(), 3u);
  EXPECT_EQ(again[2].result.checkpoint, stages[2].result.checkpoint);
  EXPECT_EQ(again[2].result.eval.correct, stages[2].result.eval.correct);
  EXPECT_EQ(read_text_file(grpo + "/metrics.jsonl"), metrics);
}

}  // namespace
}  // namespace moetron::train
