// `moetron train` and `moetron eval` as processes: SIGTERM mid-run saves a checkpoint and exits
// 128+15, the same command resumes and ends bit-identical to an uninterrupted run; eval prints
// one JSON line.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <thread>

#include "moetron/ckpt/train_checkpoint.h"
#include "moetron/data/tokenizer.h"
#include "moetron/model/model.h"
#include "moetron/train/evaluate.h"
#include "moetron/train/trainer.h"
#include "support/cli_runner.h"
#include "support/process.h"
#include "train_test_util.h"

namespace moetron::train {
namespace {

using namespace moetron::train::testing;
using moetron::testing::ChildGuard;
using moetron::testing::count_lines;
using moetron::testing::run_moetron;
using moetron::testing::spawn_moetron;

class TrainerCliTest : public ScratchTest {
 protected:
  void SetUp() override {
    ScratchTest::SetUp();
    // The child processes use one intra-op thread like this one (set_num_threads(1)), so a
    // run in this process and one in a child do the same arithmetic.
    ::setenv("OMP_NUM_THREADS", "1", 1);
  }
  void expect_sigterm_resume(const std::vector<std::string>& common, int64_t kSteps);
};

std::vector<std::string> cli_args(const std::vector<std::string>& overrides) {
  std::vector<std::string> args = {"train", kTinyYaml};
  args.insert(args.end(), overrides.begin(), overrides.end());
  return args;
}

// SIGTERM in the middle of `moetron train`, then the same command: the run resumes from the
// checkpoint the interrupt saved and ends bit-identical to an uninterrupted run.
void TrainerCliTest::expect_sigterm_resume(const std::vector<std::string>& common, int64_t kSteps) {
  auto overrides = fast_overrides(dir_, "run");
  overrides.insert(overrides.end(), common.begin(), common.end());
  overrides.push_back("log.level=info");  // "resumed from" is an info line
  const std::string metrics = run_path("run") + "/metrics.jsonl";
  const std::string out = dir_ + "/first.out", err = dir_ + "/first.err";

  const pid_t pid = spawn_moetron(cli_args(overrides), dir_, out, err);
  ASSERT_GT(pid, 0);
  ChildGuard child{pid};
  // Interrupt once a few steps are logged: well inside the run.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  bool exited = false;
  int status = 0;
  while (count_lines(metrics) < 3 && std::chrono::steady_clock::now() < deadline) {
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      exited = true;
      child.pid = -1;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_FALSE(exited) << "moetron train exited early: " << moetron::testing::read_text(err);
  ASSERT_GE(count_lines(metrics), 3u) << "no progress: " << moetron::testing::read_text(err);
  ASSERT_EQ(::kill(pid, SIGTERM), 0);
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  child.pid = -1;
  ASSERT_TRUE(WIFEXITED(status)) << "killed by the signal instead of handling it";
  const std::string first_err = moetron::testing::read_text(err);
  EXPECT_EQ(WEXITSTATUS(status), 128 + SIGTERM) << first_err;

  // The message names the checkpoint it saved, which is a valid one short of the end.
  const std::string ckpts = run_path("run") + "/checkpoints/";
  const size_t at = first_err.find("checkpoint " + ckpts + "step-");
  ASSERT_NE(at, std::string::npos) << first_err;
  const size_t begin = at + std::string("checkpoint ").size();
  const std::string saved = first_err.substr(begin, first_err.find_first_of(" \n", begin) - begin);
  const int64_t stopped_at = std::stoll(saved.substr(saved.rfind('-') + 1));
  EXPECT_GE(stopped_at, 3);
  EXPECT_LT(stopped_at, kSteps);
  EXPECT_NO_THROW(ckpt::verify_checkpoint(saved));
  EXPECT_NE(first_err.find(str_cat("interrupted by signal ", SIGTERM, " at step ", stopped_at)),
            std::string::npos)
      << first_err;

  // The same command resumes from there and finishes.
  const auto second = run_moetron(cli_args(overrides), dir_);
  ASSERT_EQ(second.code, 0) << second.err;
  EXPECT_NE(second.out.find(str_cat("trained ", kSteps, " steps")), std::string::npos)
      << second.out;
  const std::string log = read_text_file(run_path("run") + "/log.txt");
  EXPECT_NE(log.find(str_cat("resumed from ", saved, " at step ", stopped_at)), std::string::npos)
      << log;

  // An uninterrupted run of the same config (in this process) ends bit-identical.
  const TrainResult straight = train(tiny_config(dir_, "straight", common));
  ASSERT_EQ(straight.steps, kSteps);
  expect_same_checkpoint(straight.checkpoint, checkpoint("run", kSteps));
  const auto a = step_records(run_path("straight") + "/metrics.jsonl");
  const auto b = step_records(metrics);
  ASSERT_EQ(a.size(), static_cast<size_t>(kSteps));
  ASSERT_EQ(b.size(), static_cast<size_t>(kSteps)) << "steps logged twice or lost on resume";
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(without_timing(b[i]), without_timing(a[i])) << "step " << i + 1;
  }
}

TEST_F(TrainerCliTest, SigtermSavesAndTheSameCommandResumesExactly) {
  expect_sigterm_resume(
      {"train.steps=60", "train.grad_accum_steps=2", "ckpt.save_every=20", "data.task_size=40"},
      60);
}

TEST_F(TrainerCliTest, GrpoSigtermSavesAndTheSameCommandResumesExactly) {
  // GRPO on the built-in arithmetic RL prompts with the default rewards (accuracy, format).
  expect_sigterm_resume({"train.stage=grpo", "train.steps=40", "ckpt.save_every=10",
                         "rl.prompts_per_step=2", "rl.num_generations=4", "rl.mini_batch_size=4",
                         "rl.micro_batch_size=4", "data.task_size=40"},
                        40);
}

// Exit code 2 (config error) and the directory named on stderr when a run directory belongs to
// another config; nothing in it changes.
TEST_F(TrainerCliTest, ForeignRunDirectoryExitsWithConfigError) {
  train(tiny_config(dir_, "own", {"train.steps=2"}));
  const auto before = snapshot_tree(run_path("own"));
  auto overrides = fast_overrides(dir_, "own");
  for (const char* o : {"train.steps=2", "optim.lr=2e-3", "ckpt.resume=none"}) {
    overrides.push_back(o);
  }
  const auto r = run_moetron(cli_args(overrides), dir_);
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("run directory " + run_path("own")), std::string::npos) << r.err;
  EXPECT_EQ(snapshot_tree(run_path("own")), before);
}

TEST_F(TrainerCliTest, EvalPrintsOneJsonLine) {
  const auto cfg = tiny_config(dir_, "ev", {"train.steps=2", "train.eval_batches=2"});
  train(cfg);
  std::vector<std::string> args = {"eval", kTinyYaml};
  for (const auto& o : fast_overrides(dir_, "ev")) args.push_back(o);
  args.push_back("train.eval_batches=2");
  args.push_back("--model");
  args.push_back(run_path("ev"));
  const auto r = run_moetron(args, dir_);
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  const auto j = nlohmann::json::parse(r.out);

  torch::manual_seed(cfg.train.seed);
  model::DeepseekV3ForCausalLM model(cfg);
  load_model_weights(run_path("ev"), model);
  auto tokenizer = data::load_tokenizer(cfg.data.tokenizer);
  const EvalResult e = evaluate(model, cfg, *tokenizer);
  EXPECT_EQ(j.at("model").get<std::string>(), run_path("ev"));
  EXPECT_NEAR(j.at("eval_loss").get<double>(), e.loss, 1e-6 * e.loss);
  EXPECT_EQ(j.at("eval_tokens").get<int64_t>(), e.loss_tokens);
  EXPECT_EQ(j.at("total").get<int64_t>(), cfg.train.eval_batches * cfg.train.micro_batch_size);
  EXPECT_EQ(j.at("correct").get<int64_t>(), e.correct);
  EXPECT_DOUBLE_EQ(j.at("accuracy").get<double>(), e.accuracy);
}

}  // namespace
}  // namespace moetron::train
