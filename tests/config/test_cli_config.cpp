// Good paths of the `moetron` binary: help and version, base chains, precedence, overrides in
// both spellings, nullable fields, list overrides, and dump round-trips of every preset.
#include <gtest/gtest.h>

#include <filesystem>

#include "support/cli_runner.h"

namespace moetron::testing {
namespace {

namespace fs = std::filesystem;

// The value line "  key: value" of `key` under `section` in a dump.
std::string dumped(const std::string& dump, const std::string& section, const std::string& key) {
  const size_t s = dump.find("\n" + section + ":\n");
  const size_t at = (s == std::string::npos && dump.rfind(section + ":\n", 0) == 0) ? 0 : s;
  if (at == std::string::npos) return "<no section " + section + ">";
  const std::string needle = "\n  " + key + ": ";
  const size_t k = dump.find(needle, at);
  if (k == std::string::npos) return "<no key " + key + ">";
  const size_t begin = k + needle.size();
  return dump.substr(begin, dump.find('\n', begin) - begin);
}

TEST(Cli, HelpListsWorkingCommands) {
  const CliResult r = run_moetron({"--help"}, scratch_dir());
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("Usage: moetron"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("config"), std::string::npos) << r.out;
  for (const char* command : {"config", "run", "train", "eval", "generate", "reward", "data",
                              "tokenize", "score", "convert", "bench", "distill", "launch"}) {
    EXPECT_NE(r.out.find(std::string("\n  ") + command + " "), std::string::npos) << command;
  }
}

TEST(Cli, CommandHelpAndVersion) {
  const std::string dir = scratch_dir();
  const CliResult help = run_moetron({"config", "--help"}, dir);
  EXPECT_EQ(help.code, 0);
  EXPECT_NE(help.out.find("--reference"), std::string::npos) << help.out;
  EXPECT_NE(help.out.find("overrides"), std::string::npos) << help.out;
  const CliResult version = run_moetron({"--version"}, dir);
  EXPECT_EQ(version.code, 0);
  EXPECT_EQ(version.out.rfind("moetron 0.", 0), 0u) << version.out;
}

TEST(Cli, ThreeLevelBaseChainAndPrecedence) {
  const std::string dir = scratch_dir();
  // Bases resolve relative to the including file, not the working directory.
  write_text(dir + "/sub/root.yaml",
             "model:\n  vocab_size: 1000\n  hidden_size: 99\n  num_hidden_layers: 9\n"
             "moe:\n  n_routed_experts: 16\n  n_group: 2\n  topk_group: 1\n");
  write_text(dir + "/sub/mid.yaml", "base: root.yaml\nmodel:\n  vocab_size: 2000\n");
  write_text(dir + "/top.yaml",
             "base: sub/mid.yaml\nmodel:\n  hidden_size: 128\n  intermediate_size: 77\n");
  fs::create_directories(dir + "/elsewhere");
  const CliResult r =
      run_moetron({"config", "../top.yaml", "model.intermediate_size=55"}, dir + "/elsewhere");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(dumped(r.out, "model", "num_hidden_layers"), "9");   // root only
  EXPECT_EQ(dumped(r.out, "model", "vocab_size"), "2000");       // mid over root
  EXPECT_EQ(dumped(r.out, "model", "hidden_size"), "128");       // file over root
  EXPECT_EQ(dumped(r.out, "model", "intermediate_size"), "55");  // CLI over file
  EXPECT_EQ(dumped(r.out, "moe", "n_routed_experts"), "16");     // merged per key
  EXPECT_EQ(dumped(r.out, "moe", "num_experts_per_tok"), "8");   // default kept
  EXPECT_EQ(dumped(r.out, "model", "max_position_embeddings"), "4096");
}

TEST(Cli, DashDashOverridesAndLaterOverridesWin) {
  const std::string dir = scratch_dir();
  write_text(dir + "/c.yaml", "optim:\n  lr: 0.01\n");
  const CliResult r = run_moetron(
      {"config", "c.yaml", "--optim.lr=0.02", "optim.min_lr=1e-5", "optim.lr=0.03"}, dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(dumped(r.out, "optim", "lr"), "0.03");
  EXPECT_EQ(dumped(r.out, "optim", "min_lr"), "1e-05");
}

TEST(Cli, NullableFields) {
  const std::string dir = scratch_dir();
  write_text(dir + "/c.yaml",
             "mla:\n  q_lora_rank: ~\nmodel:\n  rope_scaling:\n    factor: 8\n"
             "moe:\n  n_routed_experts: null\n  n_group: 3\n  topk_group: 1\n");
  const CliResult r = run_moetron({"config", "c.yaml"}, dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(dumped(r.out, "mla", "q_lora_rank"), "null");
  EXPECT_EQ(dumped(r.out, "moe", "n_routed_experts"), "null");  // dense: routing not checked
  EXPECT_NE(r.out.find("  rope_scaling:\n    type: yarn\n    factor: 8.0\n"), std::string::npos)
      << r.out;
  const CliResult back = run_moetron({"config", "c.yaml", "mla.q_lora_rank=64",
                                      "model.rope_scaling=null", "moe.n_routed_experts=24"},
                                     dir);
  ASSERT_EQ(back.code, 0) << back.err;
  EXPECT_EQ(dumped(back.out, "mla", "q_lora_rank"), "64");
  EXPECT_EQ(dumped(back.out, "model", "rope_scaling"), "null");
  EXPECT_EQ(dumped(back.out, "moe", "n_routed_experts"), "24");
}

TEST(Cli, ListOverrideReplacesTheList) {
  const std::string dir = scratch_dir();
  write_text(dir + "/c.yaml", "");
  const CliResult r = run_moetron(
      {"config", "c.yaml", "rl.rewards=[{name: countdown, weight: 2.5}, {name: format}]"}, dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("  rewards:\n    - name: countdown\n      weight: 2.5\n"
                       "    - name: format\n      weight: 1.0\nckpt:"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(r.out.find("accuracy"), std::string::npos);
}

TEST(Cli, EmptyOverrideValueIsEmptyString) {
  const std::string dir = scratch_dir();
  write_text(dir + "/c.yaml", "data:\n  eval_path: x.jsonl\n");
  const CliResult r = run_moetron({"config", "c.yaml", "data.eval_path="}, dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(dumped(r.out, "data", "eval_path"), "\"\"");
}

// Every preset: loads, validates, and dump -> load -> dump is a fixed point.
TEST(Cli, EveryPresetRoundTrips) {
  const std::string dir = scratch_dir();
  int presets = 0;
  for (const auto& entry : fs::directory_iterator(MOETRON_SOURCE_DIR "/configs")) {
    if (entry.path().extension() != ".yaml") continue;
    ++presets;
    SCOPED_TRACE(entry.path().string());
    const CliResult first = run_moetron({"config", entry.path().string()}, dir);
    ASSERT_EQ(first.code, 0) << first.err;
    write_text(dir + "/dumped.yaml", first.out);
    const CliResult second = run_moetron({"config", "dumped.yaml"}, dir);
    ASSERT_EQ(second.code, 0) << second.err;
    EXPECT_EQ(first.out, second.out);
  }
  EXPECT_GE(presets, 5);
}

TEST(Cli, QuickstartInheritsTiny) {
  const CliResult r = run_moetron({"config", "configs/quickstart.yaml"}, MOETRON_SOURCE_DIR);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(dumped(r.out, "log", "name"), "quickstart");
  EXPECT_EQ(dumped(r.out, "model", "hidden_size"), "128");           // quickstart's own
  EXPECT_EQ(dumped(r.out, "model", "vocab_size"), "320");            // from tiny.yaml
  EXPECT_EQ(dumped(r.out, "mtp", "num_nextn_predict_layers"), "1");  // from tiny.yaml
}

TEST(Cli, OutputFileAndReference) {
  const std::string dir = scratch_dir();
  write_text(dir + "/c.yaml", "log:\n  name: written\n");
  const CliResult r = run_moetron({"config", "c.yaml", "--output", "out.yaml"}, dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(dumped(read_text(dir + "/out.yaml"), "log", "name"), "written");
  const CliResult ref = run_moetron({"config", "--reference"}, dir);
  ASSERT_EQ(ref.code, 0) << ref.err;
  EXPECT_EQ(ref.out, read_text(MOETRON_SOURCE_DIR "/docs/config.md"))
      << "docs/config.md is stale; regenerate: moetron config --reference > docs/config.md";
}

}  // namespace
}  // namespace moetron::testing
