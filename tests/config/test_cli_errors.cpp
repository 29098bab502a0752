// Bad configs and bad command lines through the real `moetron config` binary: each must exit 2
// with one "moetron: error: ..." line naming the file:line:column, key path, expected and got.
#include <gtest/gtest.h>

#include <map>

#include "support/cli_runner.h"

namespace moetron::testing {
namespace {

struct BadCase {
  const char* name;
  std::map<std::string, std::string> files;  // relative path -> content
  std::vector<std::string> args;             // after "config"; "bad.yaml" unless given
  std::vector<std::string> expect;           // substrings of the error line
};

std::ostream& operator<<(std::ostream& os, const BadCase& c) {
  return os << c.name;
}

const std::string kValidMoe = "moe:\n  n_routed_experts: 8\n  n_group: 2\n  topk_group: 1\n";

const std::vector<BadCase>& bad_cases() {
  static const std::vector<BadCase> cases = {
      {"unknown_key",
       {{"bad.yaml", "moe:\n  foo_bar_baz: 1\n"}},
       {},
       {"bad.yaml:2:3: unknown key 'moe.foo_bar_baz'"}},
      {"typo_with_suggestion",
       {{"bad.yaml", "moe:\n  n_group: 4\n  n_grop: 4\n"}},
       {},
       {"bad.yaml:3:3: unknown key 'moe.n_grop'; did you mean 'moe.n_group'?"}},
      {"unknown_section",
       {{"bad.yaml", "mdoel:\n  vocab_size: 10\n"}},
       {},
       {"bad.yaml:1:1: unknown key 'mdoel'; did you mean 'model'?"}},
      {"key_in_wrong_section",
       {{"bad.yaml", "model:\n  kv_lora_rank: 64\n"}},
       {},
       {"bad.yaml:2:3: unknown key 'model.kv_lora_rank'; did you mean 'mla.kv_lora_rank'?"}},
      {"string_for_int",
       {{"bad.yaml", "model:\n  hidden_size: big\n"}},
       {},
       {"bad.yaml:2:16: model.hidden_size: expected an integer >= 1, got 'big'"}},
      {"float_for_int",
       {{"bad.yaml", "moe:\n  n_group: 1.5\n"}},
       {},
       {"bad.yaml:2:12: moe.n_group: expected an integer >= 1, got '1.5'"}},
      {"map_for_scalar",
       {{"bad.yaml", "optim:\n  lr: {a: 1}\n"}},
       {},
       {"bad.yaml:2:7: optim.lr: expected a number > 0, got a map"}},
      {"list_for_scalar",
       {{"bad.yaml", "train:\n  steps: [1, 2]\n"}},
       {},
       {"bad.yaml:2:10: train.steps: expected an integer >= 1, got a list"}},
      {"bool_as_int",
       {{"bad.yaml", "train:\n  steps: true\n"}},
       {},
       {"bad.yaml:2:10: train.steps: expected an integer >= 1, got 'true'"}},
      {"int_as_bool",
       {{"bad.yaml", "data:\n  pack: 1\n"}},
       {},
       {"bad.yaml:2:9: data.pack: expected true or false, got '1'"}},
      {"quoted_number_for_int",
       {{"bad.yaml", "model:\n  vocab_size: \"12\"\n"}},
       {},
       {"bad.yaml:2:15: model.vocab_size: expected an integer >= 1, got the quoted string '12'"}},
      {"int_out_of_range",
       {{"bad.yaml", "train:\n  steps: 0\n"}},
       {},
       {"bad.yaml:2:10: train.steps: expected an integer >= 1, got 0"}},
      {"float_out_of_range",
       {{"bad.yaml", "optim:\n  beta2: 1.0\n"}},
       {},
       {"bad.yaml:2:10: optim.beta2: expected a number in [0, 1), got 1.0"}},
      {"open_interval_lower_bound",
       {{"bad.yaml", "sft:\n  slm:\n    ratio: 0\n"}},
       {},
       {"bad.yaml:3:12: sft.slm.ratio: expected a number in (0, 1], got 0.0"}},
      {"bad_enum_choice",
       {{"bad.yaml", "moe:\n  scoring_func: sigmod\n"}},
       {},
       {"bad.yaml:2:17: moe.scoring_func: expected one of sigmoid|softmax, got 'sigmod'; "
        "did you mean 'sigmoid'?"}},
      {"bad_string_choice",
       {{"bad.yaml", "train:\n  dtype: fp16\n"}},
       {},
       {"bad.yaml:2:10: train.dtype: expected one of fp32|bf16, got 'fp16'"}},
      {"bad_kernel_choice",
       {{"bad.yaml", "kernels:\n  attention: cudaa\n"}},
       {},
       {"kernels.attention: expected one of reference|cuda, got 'cudaa'; did you mean 'cuda'?"}},
      {"yaml_syntax_flow",
       {{"bad.yaml", "moe:\n  n_group: [1, 2\n"}},
       {},
       {"bad.yaml:3:1: YAML syntax error: end of sequence flow not found"}},
      {"yaml_syntax_map",
       {{"bad.yaml", "model: {vocab_size: 1\n"}},
       {},
       {"bad.yaml:", "YAML syntax error"}},
      {"top_level_list",
       {{"bad.yaml", "- model\n- moe\n"}},
       {},
       {"bad.yaml:1:1: expected a map of sections at the top level, got a list"}},
      {"section_not_a_map",
       {{"bad.yaml", "moe: 3\n"}},
       {},
       {"bad.yaml:1:6: moe: expected a map of keys, got '3'"}},
      {"optional_group_scalar",
       {{"bad.yaml", "model:\n  rope_scaling: 2\n"}},
       {},
       {"bad.yaml:2:17: model.rope_scaling: expected a map of keys or null, got '2'"}},
      {"duplicate_key",
       {{"bad.yaml", "moe:\n  n_group: 2\n  n_group: 4\n"}},
       {},
       {"bad.yaml:3:3: duplicate key 'moe.n_group'"}},
      {"null_for_non_nullable_int",
       {{"bad.yaml", "mla:\n  kv_lora_rank: null\n"}},
       {},
       {"bad.yaml:2:3: mla.kv_lora_rank: expected an integer >= 1, got null"}},
      {"null_for_string",
       {{"bad.yaml", "data:\n  train_path:\n"}},
       {},
       {"bad.yaml:2:3: data.train_path: expected a string, got null"}},
      {"nullable_out_of_range",
       {{"bad.yaml", "mla:\n  q_lora_rank: 0\n"}},
       {},
       {"bad.yaml:2:16: mla.q_lora_rank: expected an integer >= 1 or null, got 0"}},
      {"list_item_unknown_key",
       {{"bad.yaml", "rl:\n  rewards:\n    - name: accuracy\n      wieght: 2\n"}},
       {},
       {"bad.yaml:4:7: unknown key 'rl.rewards[0].wieght'; did you mean 'rl.rewards[0].weight'?"}},
      {"list_item_bad_value",
       {{"bad.yaml", "rl:\n  rewards:\n    - name: accuracy\n      weight: heavy\n"}},
       {},
       {"bad.yaml:4:15: rl.rewards[0].weight: expected a number, got 'heavy'"}},
      {"list_for_map_list",
       {{"bad.yaml", "rl:\n  rewards: accuracy\n"}},
       {},
       {"bad.yaml:2:12: rl.rewards: expected a list, got 'accuracy'"}},
      {"missing_file", {}, {"nope.yaml"}, {"cannot read config file 'nope.yaml': no such file"}},
      {"missing_base",
       {{"bad.yaml", "base: missing.yaml\n"}},
       {},
       {"bad.yaml:1:7: base file 'missing.yaml' not found (chain: bad.yaml -> missing.yaml)"}},
      {"base_cycle",
       {{"a.yaml", "base: b.yaml\n"}, {"b.yaml", "base: c.yaml\n"}, {"c.yaml", "base: a.yaml\n"}},
       {"a.yaml"},
       {"c.yaml:1:7: base cycle: a.yaml -> b.yaml -> c.yaml -> a.yaml"}},
      {"base_self_cycle",
       {{"bad.yaml", "base: ./bad.yaml\n"}},
       {},
       {"bad.yaml:1:7: base cycle: bad.yaml -> bad.yaml"}},
      {"base_not_a_string",
       {{"bad.yaml", "base: [a.yaml]\n"}},
       {},
       {"bad.yaml:1:7: base: expected a file name, got a list"}},
      {"error_inside_base_names_base_file",
       {{"bad.yaml", "base: sub/parent.yaml\n"}, {"sub/parent.yaml", "moe:\n  topk_grup: 1\n"}},
       {},
       {"sub/parent.yaml:2:3: unknown key 'moe.topk_grup'; did you mean 'moe.topk_group'?"}},
      {"override_without_equals",
       {{"ok.yaml", ""}},
       {"ok.yaml", "foo"},
       {"command line override 'foo': expected key=value"}},
      {"override_empty_key",
       {{"ok.yaml", ""}},
       {"ok.yaml", "=3"},
       {"command line override '=3': '' is not a key"}},
      {"override_empty_component",
       {{"ok.yaml", ""}},
       {"ok.yaml", "moe..n_group=3"},
       {"command line override 'moe..n_group=3': 'moe..n_group' is not a key"}},
      {"override_unknown_key",
       {{"ok.yaml", ""}},
       {"ok.yaml", "moe.n_grop=4"},
       {"command line override 'moe.n_grop=4': unknown key 'moe.n_grop'; did you mean "
        "'moe.n_group'?"}},
      {"override_wrong_type",
       {{"ok.yaml", ""}},
       {"ok.yaml", "--train.steps=ten"},
       {"command line override 'train.steps=ten': train.steps: expected an integer >= 1, got "
        "'ten'"}},
      {"override_bad_yaml",
       {{"ok.yaml", ""}},
       {"ok.yaml", "rl.rewards=[{name: accuracy"},
       {"command line override 'rl.rewards=[{name: accuracy': value '[{name: accuracy' is not "
        "valid YAML"}},
      {"override_null_non_nullable",
       {{"ok.yaml", ""}},
       {"ok.yaml", "moe.n_group=null"},
       {"command line override 'moe.n_group=null': moe.n_group: expected an integer >= 1, got "
        "null"}},
      {"cross_experts_divisible_by_groups",
       {{"bad.yaml", "moe:\n  n_routed_experts: 63\n  n_group: 4\n  topk_group: 2\n"}},
       {},
       {"bad.yaml: moe.n_routed_experts (63) must be divisible by moe.n_group (4)"}},
      {"cross_topk_group_le_n_group",
       {{"bad.yaml", "moe:\n  n_group: 4\n  topk_group: 5\n"}},
       {},
       {"bad.yaml: moe.topk_group (5) must be <= moe.n_group (4)"}},
      {"cross_experts_per_tok_reachable",
       {{"bad.yaml",
         "moe:\n  n_routed_experts: 8\n  n_group: 4\n  topk_group: 1\n  num_experts_per_tok: 3\n"}},
       {},
       {"moe.num_experts_per_tok (3) must be <= moe.topk_group (1) * moe.n_routed_experts / "
        "moe.n_group (8 / 4) = 2 for moe.topk_method noaux_tc"}},
      {"cross_experts_per_tok_le_experts",
       {{"bad.yaml",
         "moe:\n  n_routed_experts: 8\n  n_group: 1\n  topk_group: 1\n"
         "  topk_method: greedy\n  num_experts_per_tok: 9\n"}},
       {},
       {"moe.num_experts_per_tok (9) must be <= moe.n_routed_experts (8)"}},
      {"cross_first_k_dense",
       {{"bad.yaml", "moe:\n  first_k_dense_replace: 70\n"}},
       {},
       {"moe.first_k_dense_replace (70) must be <= model.num_hidden_layers (61)"}},
      {"cross_rope_dim_odd",
       {{"bad.yaml", "mla:\n  qk_rope_head_dim: 7\n"}},
       {},
       {"mla.qk_rope_head_dim (7) must be even"}},
      {"cross_yarn_betas",
       {{"bad.yaml", "model:\n  rope_scaling:\n    beta_fast: 1\n    beta_slow: 2\n"}},
       {},
       {"model.rope_scaling.beta_fast (1.0) must be greater than model.rope_scaling.beta_slow "
        "(2.0)"}},
      {"yarn_factor_below_one",
       {{"bad.yaml", "model:\n  rope_scaling:\n    factor: 0.5\n"}},
       {},
       {"bad.yaml:3:13: model.rope_scaling.factor: expected a number >= 1, got 0.5"}},
      {"cross_min_lr",
       {{"bad.yaml", "optim:\n  lr: 0.001\n  min_lr: 0.01\n"}},
       {},
       {"optim.min_lr (0.01) must be <= optim.lr (0.001)"}},
      {"cross_warmup",
       {{"bad.yaml", "train:\n  steps: 100\noptim:\n  warmup_steps: 200\n"}},
       {},
       {"optim.warmup_steps (200) must be <= train.steps (100)"}},
      {"cross_rl_mini_batch",
       {{"bad.yaml", "rl:\n  mini_batch_size: 48\n"}},
       {},
       {"rl.mini_batch_size (48) must divide rl.prompts_per_step * rl.num_generations (8 * 8 = "
        "64)"}},
      {"cross_rl_micro_batch",
       {{"bad.yaml", "rl:\n  micro_batch_size: 24\n"}},
       {},
       {"rl.micro_batch_size (24) must divide rl.mini_batch_size (64)"}},
      {"cross_slm_needs_reference",
       {{"bad.yaml", "sft:\n  slm:\n    ratio: 0.6\n"}},
       {},
       {"sft.slm.ratio (0.6) < 1 selects tokens against a reference model: set "
        "sft.slm.reference"}},
      {"cross_ep_divides_experts",
       {{"bad.yaml", "dist:\n  ep: 3\n"}},
       {},
       {"moe.n_routed_experts (256) must be divisible by dist.ep (3)"}},
      {"cross_grpo_needs_rewards",
       {{"bad.yaml", "train:\n  stage: grpo\nrl:\n  rewards: []\n"}},
       {},
       {"rl.rewards is empty but train.stage is grpo"}},
      {"cross_override_breaks_file",
       {{"ok.yaml", kValidMoe}},
       {"ok.yaml", "moe.n_group=3"},
       {"ok.yaml (with 1 command line override): moe.n_routed_experts (8) must be divisible by "
        "moe.n_group (3)"}},
      {"no_config_argument", {}, {}, {"config: CONFIG is required"}},
      {"unknown_option", {{"ok.yaml", ""}}, {"ok.yaml", "--bogus"}, {"--bogus"}},
  };
  return cases;
}

class BadInput : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadInput, ExitsTwoWithOneClearLine) {
  const BadCase& c = GetParam();
  const std::string dir = scratch_dir();
  for (const auto& [path, text] : c.files) write_text(dir + "/" + path, text);
  std::vector<std::string> args = {"config"};
  if (c.args.empty() && c.files.count("bad.yaml")) args.push_back("bad.yaml");
  args.insert(args.end(), c.args.begin(), c.args.end());
  const CliResult r = run_moetron(args, dir);
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err.rfind("moetron: error: ", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  for (const std::string& want : c.expect) {
    EXPECT_NE(r.err.find(want), std::string::npos) << "want: " << want << "\ngot:  " << r.err;
  }
}

INSTANTIATE_TEST_SUITE_P(Cli, BadInput, ::testing::ValuesIn(bad_cases()),
                         [](const ::testing::TestParamInfo<BadCase>& info) {
                           return std::string(info.param.name);
                         });

TEST(CliErrors, UnknownCommandIsUsageError) {
  const CliResult r = run_moetron({"frobnicate"}, scratch_dir());
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("moetron: error: "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("unknown command 'frobnicate' (commands: run, train, "), std::string::npos)
      << r.err;
}

TEST(CliErrors, NoCommandIsUsageError) {
  const CliResult r = run_moetron({}, scratch_dir());
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("moetron: error: A subcommand is required"), std::string::npos) << r.err;
}

TEST(CliErrors, ReferenceTakesNoConfig) {
  const std::string dir = scratch_dir();
  write_text(dir + "/ok.yaml", "");
  const CliResult r = run_moetron({"config", "--reference", "ok.yaml"}, dir);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("config --reference takes no CONFIG"), std::string::npos) << r.err;
}

TEST(CliErrors, UnwritableOutputIsRuntimeFailure) {
  const std::string dir = scratch_dir();
  write_text(dir + "/ok.yaml", "");
  const CliResult r = run_moetron({"config", "ok.yaml", "-o", dir + "/no/such/dir/out.yaml"}, dir);
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("moetron: error: cannot write '"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace moetron::testing
