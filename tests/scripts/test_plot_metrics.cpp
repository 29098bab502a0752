// scripts/plot_metrics.py on synthetic metrics files: a GRPO run draws every GRPO plot
// (rewards, accuracy with pass@k, response length, KL, clip fractions, entropy, time split,
// memory) beside lr / grad norm; plots whose keys are absent (KL with beta 0, losses) are
// skipped; a pretraining run draws no GRPO plot; a bad line names file:line.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "support/cli_runner.h"
#include "support/venv_python.h"

namespace moetron::testing {
namespace {

namespace fs = std::filesystem;

const std::string kScript = std::string(MOETRON_SOURCE_DIR) + "/scripts/plot_metrics.py";

class PlotMetrics : public ::testing::Test {
 protected:
  void SetUp() override {
    python_ = venv_python();
    if (!python_has(python_, "matplotlib")) GTEST_SKIP() << "no venv Python with matplotlib";
    dir_ = scratch_dir();
  }
  void TearDown() override {
    if (!dir_.empty()) moetron::remove_tree(dir_);
  }

  struct Result {
    int code = -1;
    std::string out, err;
  };
  // Runs the script on dir_/run; stdout lists the PNGs written.
  Result plot(const std::string& metrics) {
    write_text(dir_ + "/run/metrics.jsonl", metrics);
    const std::string cmd = shell_quote(python_) + " " + shell_quote(kScript) + " " +
                            shell_quote(dir_ + "/run") + " >" + shell_quote(dir_ + "/out") + " 2>" +
                            shell_quote(dir_ + "/err");
    const int status = std::system(cmd.c_str());
    Result r;
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.out = read_text(dir_ + "/out");
    r.err = read_text(dir_ + "/err");
    return r;
  }
  // The PNG file names (without directory) in the plots directory; each must be non-empty.
  std::set<std::string> pngs() const {
    std::set<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_ + "/run/plots")) {
      EXPECT_GT(fs::file_size(e.path()), 1000u) << e.path();
      names.insert(e.path().filename().string());
    }
    return names;
  }

  std::string python_, dir_;
};

std::string grpo_metrics(bool with_kl) {
  std::string text;
  for (int s = 1; s <= 6; ++s) {
    nlohmann::json r = {{"step", s},
                        {"reward_mean", 0.1 * s},
                        {"reward/accuracy", 0.1 * s},
                        {"reward/format", 0.8},
                        {"accuracy", 0.1 * s},
                        {"pass@1", 0.1 * s},
                        {"pass@8", 0.15 * s},
                        {"response_length_mean", 20 + s},
                        {"response_length_max", 40 + s},
                        {"truncation_ratio", 0.05},
                        {"entropy", 1.5 - 0.1 * s},
                        {"groups_sampled", 4},
                        {"groups_kept", 3},
                        {"advantage_mean", 0.0},
                        {"advantage_std", 1.0},
                        {"advantage_min", -1.2},
                        {"advantage_max", 1.4},
                        {"clip_frac_low", 0.01},
                        {"clip_frac_high", 0.02},
                        {"ratio_mean", 1.0},
                        {"ratio_max", 1.3},
                        {"logp_diff_max", 1e-6},
                        {"grad_norm", 0.4},
                        {"lr", 1e-5},
                        {"gen_tokens_per_s", 250.0},
                        {"time_generate_s", 1.0},
                        {"time_reward_s", 0.1},
                        {"time_train_s", 0.6},
                        {"memory_generate_mb", 300.0},
                        {"memory_train_mb", 450.0}};
    if (with_kl) r["kl"] = 0.001 * s;
    text += r.dump() + "\n";
    if (s % 3 == 0) {
      text +=
          nlohmann::json{{"step", s}, {"eval_loss", 1.5}, {"eval_accuracy", 0.1 * s}}.dump() + "\n";
    }
  }
  return text;
}

TEST_F(PlotMetrics, GrpoRunDrawsEveryGrpoPlot) {
  const Result r = plot(grpo_metrics(true));
  ASSERT_EQ(r.code, 0) << r.err;
  const std::set<std::string> expected = {
      "reward.png",    "accuracy.png",  "response_length.png", "kl.png",
      "clip_frac.png", "entropy.png",   "time_split.png",      "memory.png",
      "lr.png",        "grad_norm.png", "throughput.png",      "loss.png" /* eval_loss */};
  EXPECT_EQ(pngs(), expected) << r.out;
  // stdout lists exactly the files written.
  std::istringstream lines(r.out);
  size_t n = 0;
  for (std::string line; std::getline(lines, line); ++n) {
    EXPECT_TRUE(expected.count(fs::path(line).filename().string())) << line;
  }
  EXPECT_EQ(n, expected.size()) << r.out;
}

TEST_F(PlotMetrics, AbsentKeysSkipTheirPlots) {
  // beta 0 (no kl), no eval records: no KL plot, no loss plot (GRPO records have no loss).
  std::string text;
  std::istringstream in(grpo_metrics(false));
  for (std::string line; std::getline(in, line);) {
    if (line.find("eval_loss") == std::string::npos) text += line + "\n";
  }
  const Result r = plot(text);
  ASSERT_EQ(r.code, 0) << r.err;
  const auto names = pngs();
  EXPECT_EQ(names.count("kl.png"), 0u);
  EXPECT_EQ(names.count("loss.png"), 0u);
  EXPECT_EQ(names.count("reward.png"), 1u);
  EXPECT_EQ(names.count("time_split.png"), 1u);
}

TEST_F(PlotMetrics, PretrainRunDrawsNoGrpoPlot) {
  std::string text;
  for (int s = 1; s <= 4; ++s) {
    text += nlohmann::json{{"step", s},  {"loss", 5.0 - s},  {"main_loss", 4.9 - s},
                           {"lr", 1e-3}, {"grad_norm", 1.0}, {"tokens_per_s", 1000.0}}
                .dump() +
            "\n";
  }
  const Result r = plot(text);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(pngs(),
            (std::set<std::string>{"loss.png", "lr.png", "grad_norm.png", "throughput.png"}));
}

TEST_F(PlotMetrics, BadLineNamesFileAndLine) {
  const Result r = plot(grpo_metrics(true) + "{not json\n");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("metrics.jsonl:9: not JSON"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace moetron::testing
