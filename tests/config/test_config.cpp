// Library-level config tests: presets carry the published model values, validate() on configs
// built in code, dump round-trips, number formatting, suggestions, and docs/config.md freshness.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "config/field.h"
#include "config/suggest.h"
#include "moetron/config/loader.h"
#include "moetron/core/error.h"

namespace moetron::config {
namespace {

const std::string kConfigs = MOETRON_SOURCE_DIR "/configs/";

std::string config_error(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error thrown";
  return "";
}

TEST(Config, DefaultsAreValid) {
  EXPECT_NO_THROW(validate(Config{}));
}

TEST(Config, EveryPresetLoadsValidatesAndRoundTrips) {
  int n = 0;
  for (const auto& entry : std::filesystem::directory_iterator(kConfigs)) {
    if (entry.path().extension() != ".yaml") continue;
    ++n;
    SCOPED_TRACE(entry.path().string());
    const Config c = load_file(entry.path().string());
    const std::string once = dump(c);
    const std::string twice = dump(load_string(once, "dumped"));
    EXPECT_EQ(once, twice);
  }
  EXPECT_GE(n, 5);
}

TEST(Config, DeepSeekV3PresetMatchesSpec) {
  const Config c = load_file(kConfigs + "deepseek-v3-671b.yaml");
  EXPECT_EQ(c.model.vocab_size, 129280);
  EXPECT_EQ(c.model.hidden_size, 7168);
  EXPECT_EQ(c.model.intermediate_size, 18432);
  EXPECT_EQ(c.model.num_hidden_layers, 61);
  EXPECT_EQ(c.model.num_attention_heads, 128);
  EXPECT_EQ(c.model.max_position_embeddings, 163840);
  ASSERT_TRUE(c.model.rope_scaling.has_value());
  EXPECT_EQ(c.model.rope_scaling->factor, 40.0);
  EXPECT_EQ(c.model.rope_scaling->original_max_position_embeddings, 4096);
  EXPECT_EQ(c.model.rope_scaling->mscale_all_dim, 1.0);
  EXPECT_EQ(c.mla.q_lora_rank, std::optional<int64_t>(1536));
  EXPECT_EQ(c.mla.kv_lora_rank, 512);
  EXPECT_EQ(c.moe.n_routed_experts, std::optional<int64_t>(256));
  EXPECT_EQ(c.moe.num_experts_per_tok, 8);
  EXPECT_EQ(c.moe.n_group, 8);
  EXPECT_EQ(c.moe.topk_group, 4);
  EXPECT_EQ(c.moe.routed_scaling_factor, 2.5);
  EXPECT_EQ(c.moe.first_k_dense_replace, 3);
  EXPECT_EQ(c.moe.scoring_func, ScoringFunc::kSigmoid);
  EXPECT_EQ(c.moe.topk_method, TopkMethod::kNoauxTc);
  EXPECT_EQ(c.mtp.num_nextn_predict_layers, 1);
}

TEST(Config, DeepSeekV2LitePresetMatchesSpec) {
  const Config c = load_file(kConfigs + "deepseek-v2-lite.yaml");
  EXPECT_EQ(c.model.vocab_size, 102400);
  EXPECT_EQ(c.model.hidden_size, 2048);
  EXPECT_EQ(c.model.intermediate_size, 10944);
  EXPECT_EQ(c.model.num_hidden_layers, 27);
  EXPECT_EQ(c.model.num_attention_heads, 16);
  EXPECT_EQ(c.model.bos_token_id, 100000);
  EXPECT_EQ(c.model.eos_token_id, 100001);
  ASSERT_TRUE(c.model.rope_scaling.has_value());
  EXPECT_EQ(c.model.rope_scaling->mscale, 0.707);
  EXPECT_EQ(c.model.rope_scaling->mscale_all_dim, 0.707);
  EXPECT_FALSE(c.mla.q_lora_rank.has_value());
  EXPECT_EQ(c.moe.n_routed_experts, std::optional<int64_t>(64));
  EXPECT_EQ(c.moe.n_shared_experts, 2);
  EXPECT_EQ(c.moe.num_experts_per_tok, 6);
  EXPECT_EQ(c.moe.moe_intermediate_size, 1408);
  EXPECT_EQ(c.moe.n_group, 1);
  EXPECT_EQ(c.moe.topk_group, 1);
  EXPECT_FALSE(c.moe.norm_topk_prob);
  EXPECT_EQ(c.moe.routed_scaling_factor, 1.0);
  EXPECT_EQ(c.moe.scoring_func, ScoringFunc::kSoftmax);
  EXPECT_EQ(c.moe.topk_method, TopkMethod::kGreedy);
  EXPECT_EQ(c.mtp.num_nextn_predict_layers, 0);
}

// SPEC 7.1 parameter count (MTP module counted as one more MoE layer plus eh_proj and norms).
double total_params(const Config& c) {
  const double d = c.model.hidden_size, nh = c.model.num_attention_heads;
  const double nope = c.mla.qk_nope_head_dim, rope = c.mla.qk_rope_head_dim;
  const double v = c.mla.v_head_dim, kv = c.mla.kv_lora_rank;
  const double q = c.mla.q_lora_rank ? d * *c.mla.q_lora_rank + *c.mla.q_lora_rank +
                                           *c.mla.q_lora_rank * nh * (nope + rope)
                                     : d * nh * (nope + rope);
  const double attn = q + d * (kv + rope) + kv + kv * nh * (nope + v) + nh * v * d;
  const double expert = 3 * d * c.moe.moe_intermediate_size;
  const double e = *c.moe.n_routed_experts;
  const double moe = (e + c.moe.n_shared_experts) * expert + e * d;
  const double layers = c.model.num_hidden_layers, dense = c.moe.first_k_dense_replace;
  double total = 2 * c.model.vocab_size * d + d + layers * (attn + 2 * d) +
                 dense * 3 * d * c.model.intermediate_size + (layers - dense) * moe;
  total += c.mtp.num_nextn_predict_layers * (attn + 2 * d + moe + 2 * d * d + 3 * d);
  return total;
}

TEST(Config, PresetSizes) {
  const double m100 = total_params(load_file(kConfigs + "moe-100m.yaml"));
  EXPECT_GT(m100, 80e6);
  EXPECT_LT(m100, 125e6);
  const double tiny = total_params(load_file(kConfigs + "tiny.yaml"));
  EXPECT_LT(tiny, 1e6);
  // The formula reproduces SPEC 7.1's V3 main-model total when MTP is left out.
  Config v3 = load_file(kConfigs + "deepseek-v3-671b.yaml");
  v3.mtp.num_nextn_predict_layers = 0;
  EXPECT_EQ(total_params(v3), 671026404352.0);
}

TEST(Config, PrecedenceAndOverridesInLibrary) {
  const Config c = load_string("optim:\n  lr: 0.01\n  min_lr: 0.001\n", "inline",
                               {"optim.lr=0.05", "--optim.warmup_steps=0"});
  EXPECT_EQ(c.optim.lr, 0.05);
  EXPECT_EQ(c.optim.min_lr, 0.001);
  EXPECT_EQ(c.optim.warmup_steps, 0);
  EXPECT_EQ(c.optim.beta2, 0.95);  // default untouched
}

TEST(Config, ValidateChecksFieldRangesOfConfigsBuiltInCode) {
  Config c;
  c.moe.n_group = 0;
  EXPECT_EQ(config_error([&] { validate(c); }), "moe.n_group: expected an integer >= 1, got 0");
  c = Config{};
  c.rl.rewards = {{"", 1.0}};
  EXPECT_NE(config_error([&] { validate(c); }).find("rl.rewards[0].name is empty"),
            std::string::npos);
  c = Config{};
  c.train.device = "tpu";
  EXPECT_EQ(config_error([&] { validate(c); }),
            "train.device: expected one of auto|cpu|cuda, got 'tpu'; did you mean 'cpu'?");
  c = Config{};
  c.rl.rewards = {{"accuracy", 1.0}, {"accuracy", 0.5}};
  EXPECT_EQ(config_error([&] { validate(c); }),
            "rl.rewards[1].name repeats rl.rewards[0].name ('accuracy')");
  c = Config{};
  c.data.task_terms = 3;  // default ops "+-*": a chain with '*' has no left-to-right meaning
  EXPECT_EQ(config_error([&] { validate(c); }),
            "data.task_terms: 3 operands make left-to-right chains, which need data.task_ops "
            "without '*', got \"+-*\"");
  c.data.task_ops = "+-";
  EXPECT_NO_THROW(validate(c));
}

TEST(Config, NumbersFormatShortestAndRoundTrip) {
  using detail::format_double;
  EXPECT_EQ(format_double(0.1), "0.1");
  EXPECT_EQ(format_double(10000.0), "10000.0");
  EXPECT_EQ(format_double(1e-6), "1e-06");
  EXPECT_EQ(format_double(2.2e-4), "0.00022");
  EXPECT_EQ(format_double(2.5), "2.5");
  for (double v : {1.0 / 3.0, 0.707, 1e300, -2.446, 6.02214076e23, 1e-12, 0.0}) {
    const std::string text = format_double(v);
    double back = 0;
    ASSERT_TRUE(detail::parse_double(text, &back)) << text;
    EXPECT_EQ(back, v) << text;
  }
}

TEST(Config, StringsQuoteOnlyWhenNeeded) {
  using detail::format_string;
  EXPECT_EQ(format_string("runs/exp-1"), "runs/exp-1");
  EXPECT_EQ(format_string(""), "\"\"");
  EXPECT_EQ(format_string("null"), "\"null\"");
  EXPECT_EQ(format_string("12"), "\"12\"");
  EXPECT_EQ(format_string("a \"b\"\n"), "\"a \\\"b\\\"\\n\"");
  // Awkward strings survive dump -> load.
  Config c;
  c.log.name = "it's: \"odd\" # not a comment";
  c.sft.think_open = "null";
  const Config back = load_string(dump(c), "dumped");
  EXPECT_EQ(back.log.name, c.log.name);
  EXPECT_EQ(back.sft.think_open, "null");
}

TEST(Config, ScalarParsingIsStrict) {
  int64_t i = 0;
  double d = 0;
  bool b = false;
  EXPECT_TRUE(detail::parse_int("-12", &i));
  EXPECT_EQ(i, -12);
  EXPECT_FALSE(detail::parse_int("1.0", &i));
  EXPECT_FALSE(detail::parse_int("1e3", &i));
  EXPECT_FALSE(detail::parse_int("99999999999999999999", &i));
  EXPECT_TRUE(detail::parse_double("3e-4", &d));
  EXPECT_FALSE(detail::parse_double("0x10", &d));
  EXPECT_FALSE(detail::parse_double("nan", &d));
  EXPECT_FALSE(detail::parse_double("1e999", &d));
  EXPECT_TRUE(detail::parse_bool("True", &b));
  EXPECT_FALSE(detail::parse_bool("yes", &b));
}

TEST(Config, SuggestionsByEditDistance) {
  EXPECT_EQ(detail::edit_distance("n_grop", "n_group"), 1u);
  EXPECT_EQ(detail::edit_distance("n_gorup", "n_group"), 1u);  // transposition
  EXPECT_EQ(detail::nearest("topk_grup", {"n_group", "topk_group", "topk_method"}), "topk_group");
  EXPECT_EQ(detail::nearest("completely_different", {"n_group", "topk_group"}), "");
}

TEST(Config, ReferenceDocIsCurrent) {
  std::ifstream in(MOETRON_SOURCE_DIR "/docs/config.md", std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  EXPECT_EQ(text.str(), reference_markdown())
      << "docs/config.md is stale; regenerate it: build/bin/moetron config --reference > "
         "docs/config.md";
}

TEST(Config, ReferenceAndDumpCoverTheSameKeys) {
  // Every key line in a dump of a config with all optional groups set appears in the reference.
  Config c;
  c.model.rope_scaling.emplace();
  const std::string ref = reference_markdown();
  std::istringstream lines(dump(c));
  std::vector<std::string> path;
  int checked = 0;
  for (std::string line; std::getline(lines, line);) {
    const size_t indent = line.find_first_not_of(' ');
    if (line.compare(indent, 2, "- ") == 0) continue;  // list items are documented as key[]
    const std::string key = line.substr(indent, line.find(':') - indent);
    path.resize(indent / 2);
    path.push_back(key);
    if (line.back() == ':') continue;
    std::string full;
    for (const std::string& p : path) full += (full.empty() ? "" : ".") + p;
    if (full.find("rewards.") != std::string::npos) continue;
    EXPECT_NE(ref.find("| `" + full + "` |"), std::string::npos) << full;
    ++checked;
  }
  EXPECT_GT(checked, 100);
}

}  // namespace
}  // namespace moetron::config
