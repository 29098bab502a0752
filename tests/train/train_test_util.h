// Shared helpers of the trainer tests: a per-test scratch directory (removed with remove_tree,
// never std::filesystem::remove_all, which LibTorch's wheel breaks), configs/tiny.yaml shrunk to
// run in well under a second per step on one CPU thread, metrics.jsonl parsing and
// checkpoint-tensor comparison.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "moetron/ckpt/safetensors.h"
#include "moetron/config/loader.h"
#include "moetron/core/error.h"
#include "moetron/core/files.h"
#include "support/tiny_train.h"

namespace moetron::train::testing {

namespace fs = std::filesystem;

using moetron::testing::kTinyYaml;

// Overrides that make configs/tiny.yaml fast (support/tiny_train.h, shared with the launcher
// tests).
inline std::vector<std::string> fast_overrides(const std::string& run_dir,
                                               const std::string& name) {
  return moetron::testing::fast_train_overrides(run_dir, name);
}

// configs/tiny.yaml + fast_overrides + `extra` (applied last, so they win).
inline config::Config tiny_config(const std::string& run_dir, const std::string& name,
                                  const std::vector<std::string>& extra = {}) {
  auto overrides = fast_overrides(run_dir, name);
  overrides.insert(overrides.end(), extra.begin(), extra.end());
  return config::load_file(kTinyYaml, overrides);
}

// A fresh directory per test (test name + pid), removed in TearDown.
class ScratchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Tiny models: one intra-op thread is faster on shared CI cores and fixes the reduction
    // order, so runs compared bit for bit do the same arithmetic.
    torch::set_num_threads(1);
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = (fs::temp_directory_path() /
            str_cat("moetron_train_", ::getpid(), "_", info->test_suite_name(), "_", info->name()))
               .string();
    remove_tree(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { remove_tree(dir_); }

  std::string run_path(const std::string& name) const { return dir_ + "/" + name; }
  std::string checkpoint(const std::string& name, int64_t step) const {
    return str_cat(dir_, "/", name, "/checkpoints/step-", step);
  }

  std::string dir_;
};

inline std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::vector<nlohmann::json> rows;
  std::istringstream in(read_text_file(path));
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) rows.push_back(nlohmann::json::parse(line));
  }
  return rows;
}

// The per-step records of a metrics file (eval records carry "eval_loss" instead of "loss").
inline std::vector<nlohmann::json> step_records(const std::string& metrics_path) {
  std::vector<nlohmann::json> out;
  for (auto& r : read_jsonl(metrics_path)) {
    if (r.contains("loss") || r.contains("reward_mean")) out.push_back(r);
  }
  return out;
}
inline std::vector<nlohmann::json> eval_records(const std::string& metrics_path) {
  std::vector<nlohmann::json> out;
  for (auto& r : read_jsonl(metrics_path)) {
    if (r.contains("eval_loss")) out.push_back(r);
  }
  return out;
}

// A record without its wall-clock fields, for bit-exact comparison between runs.
inline nlohmann::json without_timing(nlohmann::json r) {
  for (const char* k : {"tokens_per_s", "step_time_s", "mfu", "gen_tokens_per_s", "time_generate_s",
                        "time_reward_s", "time_train_s", "memory_generate_mb", "memory_train_mb"}) {
    r.erase(k);
  }
  return r;
}

// Every tensor of two safetensors files (same names, torch::equal).
inline void expect_same_tensors(const std::string& a_path, const std::string& b_path) {
  const auto a = ckpt::load_safetensors(a_path);
  const auto b = ckpt::load_safetensors(b_path);
  ASSERT_FALSE(a.empty()) << a_path;
  ASSERT_EQ(a.size(), b.size()) << a_path << " vs " << b_path;
  for (const auto& [name, ta] : a) {
    auto it = b.find(name);
    ASSERT_NE(it, b.end()) << name << " missing in " << b_path;
    EXPECT_TRUE(torch::equal(ta, it->second)) << name << ": " << a_path << " vs " << b_path;
  }
}

// A checkpoint's model and optimizer tensors equal another's.
inline void expect_same_checkpoint(const std::string& a, const std::string& b) {
  expect_same_tensors(a + "/model.safetensors", b + "/model.safetensors");
  expect_same_tensors(a + "/optimizer.safetensors", b + "/optimizer.safetensors");
}

inline nlohmann::json trainer_state(const std::string& checkpoint_dir) {
  return nlohmann::json::parse(read_text_file(checkpoint_dir + "/trainer_state.json"));
}
inline nlohmann::json loader_state(const std::string& checkpoint_dir) {
  return nlohmann::json::parse(trainer_state(checkpoint_dir).at("loader_state").get<std::string>());
}

// path (relative to root) -> contents, for "nothing was touched" checks.
inline std::map<std::string, std::string> snapshot_tree(const std::string& root) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    const std::string rel = fs::relative(e.path(), root).string();
    out[rel] = e.is_regular_file() ? read_text_file(e.path().string()) : std::string("<dir>");
  }
  return out;
}

}  // namespace moetron::train::testing
