// HF checkpoint directories: config.json round trips (V3 and V2-Lite), refusals of fields that
// change the math, FP8 block dequantisation against a direct loop on non-multiple-of-128
// shapes, sharded write/read, index errors, and the no-clobber / overwrite rules.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "moetron/ckpt/hf_checkpoint.h"
#include "moetron/core/error.h"
#include "moetron/core/files.h"
#include "support/venv_python.h"

namespace moetron::ckpt {
namespace {

namespace fs = std::filesystem;

const char* kV3Json = R"({
  "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config"},
  "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 3,
  "hidden_act": "silu", "hidden_size": 7168, "initializer_range": 0.02,
  "intermediate_size": 18432, "kv_lora_rank": 512, "max_position_embeddings": 163840,
  "model_type": "deepseek_v3", "moe_intermediate_size": 2048, "moe_layer_freq": 1,
  "n_group": 8, "n_routed_experts": 256, "n_shared_experts": 1, "norm_topk_prob": true,
  "num_attention_heads": 128, "num_experts_per_tok": 8, "num_hidden_layers": 61,
  "num_key_value_heads": 128, "num_nextn_predict_layers": 1, "pretraining_tp": 1,
  "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
  "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                          "weight_block_size": [128, 128]},
  "rms_norm_eps": 1e-06,
  "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                   "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096, "type": "yarn"},
  "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "seq_aux": true,
  "tie_word_embeddings": false, "topk_group": 4, "topk_method": "noaux_tc",
  "torch_dtype": "bfloat16", "transformers_version": "4.33.1", "use_cache": true,
  "v_head_dim": 128, "vocab_size": 129280
})";

const char* kV2LiteJson = R"({
  "architectures": ["DeepseekV2ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "aux_loss_alpha": 0.001, "bos_token_id": 100000, "eos_token_id": 100001,
  "first_k_dense_replace": 1, "hidden_act": "silu", "hidden_size": 2048,
  "initializer_range": 0.02, "intermediate_size": 10944, "kv_lora_rank": 512,
  "max_position_embeddings": 163840, "model_type": "deepseek_v2", "moe_intermediate_size": 1408,
  "moe_layer_freq": 1, "n_group": 1, "n_routed_experts": 64, "n_shared_experts": 2,
  "norm_topk_prob": false, "num_attention_heads": 16, "num_experts_per_tok": 6,
  "num_hidden_layers": 27, "num_key_value_heads": 16, "pretraining_tp": 1, "q_lora_rank": null,
  "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06,
  "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707,
                   "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096,
                   "type": "yarn"},
  "rope_theta": 10000, "routed_scaling_factor": 1.0, "scoring_func": "softmax", "seq_aux": true,
  "tie_word_embeddings": false, "topk_group": 1, "topk_method": "greedy",
  "torch_dtype": "bfloat16", "transformers_version": "4.33.1", "use_cache": true,
  "v_head_dim": 128, "vocab_size": 102400
})";

void expect_same(const HfModelConfig& a, const HfModelConfig& b) {
  const auto &m = a.model, &n = b.model;
  EXPECT_EQ(m.vocab_size, n.vocab_size);
  EXPECT_EQ(m.hidden_size, n.hidden_size);
  EXPECT_EQ(m.intermediate_size, n.intermediate_size);
  EXPECT_EQ(m.num_hidden_layers, n.num_hidden_layers);
  EXPECT_EQ(m.num_attention_heads, n.num_attention_heads);
  EXPECT_EQ(m.max_position_embeddings, n.max_position_embeddings);
  EXPECT_EQ(m.rms_norm_eps, n.rms_norm_eps);
  EXPECT_EQ(m.rope_theta, n.rope_theta);
  ASSERT_EQ(m.rope_scaling.has_value(), n.rope_scaling.has_value());
  if (m.rope_scaling) {
    const auto &r = *m.rope_scaling, &s = *n.rope_scaling;
    EXPECT_EQ(r.type, s.type);
    EXPECT_EQ(r.factor, s.factor);
    EXPECT_EQ(r.original_max_position_embeddings, s.original_max_position_embeddings);
    EXPECT_EQ(r.beta_fast, s.beta_fast);
    EXPECT_EQ(r.beta_slow, s.beta_slow);
    EXPECT_EQ(r.mscale, s.mscale);
    EXPECT_EQ(r.mscale_all_dim, s.mscale_all_dim);
  }
  EXPECT_EQ(m.tie_word_embeddings, n.tie_word_embeddings);
  EXPECT_EQ(m.initializer_range, n.initializer_range);
  EXPECT_EQ(m.bos_token_id, n.bos_token_id);
  EXPECT_EQ(m.eos_token_id, n.eos_token_id);
  EXPECT_EQ(a.mla.q_lora_rank, b.mla.q_lora_rank);
  EXPECT_EQ(a.mla.kv_lora_rank, b.mla.kv_lora_rank);
  EXPECT_EQ(a.mla.qk_nope_head_dim, b.mla.qk_nope_head_dim);
  EXPECT_EQ(a.mla.qk_rope_head_dim, b.mla.qk_rope_head_dim);
  EXPECT_EQ(a.mla.v_head_dim, b.mla.v_head_dim);
  const auto &e = a.moe, &f = b.moe;
  EXPECT_EQ(e.n_routed_experts, f.n_routed_experts);
  EXPECT_EQ(e.n_shared_experts, f.n_shared_experts);
  EXPECT_EQ(e.num_experts_per_tok, f.num_experts_per_tok);
  EXPECT_EQ(e.moe_intermediate_size, f.moe_intermediate_size);
  EXPECT_EQ(e.n_group, f.n_group);
  EXPECT_EQ(e.topk_group, f.topk_group);
  EXPECT_EQ(e.norm_topk_prob, f.norm_topk_prob);
  EXPECT_EQ(e.routed_scaling_factor, f.routed_scaling_factor);
  EXPECT_EQ(e.first_k_dense_replace, f.first_k_dense_replace);
  EXPECT_EQ(e.moe_layer_freq, f.moe_layer_freq);
  EXPECT_EQ(e.scoring_func, f.scoring_func);
  EXPECT_EQ(e.topk_method, f.topk_method);
  EXPECT_EQ(e.aux_loss_alpha, f.aux_loss_alpha);
  EXPECT_EQ(a.mtp.num_nextn_predict_layers, b.mtp.num_nextn_predict_layers);
}

TEST(HfConfig, V3FieldsAndRoundTrip) {
  const auto info = parse_hf_config(kV3Json, "v3/config.json");
  const auto& c = info.config;
  EXPECT_EQ(info.model_type, "deepseek_v3");
  EXPECT_TRUE(info.fp8);
  EXPECT_EQ(c.model.vocab_size, 129280);
  EXPECT_EQ(c.model.max_position_embeddings, 163840);
  EXPECT_EQ(c.model.initializer_range, 0.02);
  EXPECT_EQ(c.mla.q_lora_rank, 1536);
  EXPECT_EQ(c.moe.n_routed_experts, 256);
  EXPECT_EQ(c.moe.routed_scaling_factor, 2.5);
  EXPECT_EQ(c.moe.aux_loss_alpha, 1e-4);  // absent from V3's config: the paper's value stays
  EXPECT_EQ(c.moe.scoring_func, config::ScoringFunc::kSigmoid);
  EXPECT_EQ(c.moe.topk_method, config::TopkMethod::kNoauxTc);
  EXPECT_EQ(c.mtp.num_nextn_predict_layers, 1);
  ASSERT_TRUE(c.model.rope_scaling.has_value());
  EXPECT_EQ(c.model.rope_scaling->factor, 40.0);

  const std::string written = hf_config_json(c, torch::kBFloat16);
  for (const char* want : {"\"model_type\": \"deepseek_v3\"", "\"DeepseekV3ForCausalLM\"",
                           "\"num_key_value_heads\": 128", "\"head_dim\": 64",
                           "\"rope_interleave\": true", "\"torch_dtype\": \"bfloat16\""}) {
    EXPECT_NE(written.find(want), std::string::npos) << want << "\n" << written;
  }
  const auto again = parse_hf_config(written, "written");
  expect_same(c, again.config);
  EXPECT_FALSE(again.fp8);  // we write dequantised weights
  EXPECT_EQ(hf_config_json(again.config, torch::kBFloat16), written);  // fixed point
}

TEST(HfConfig, V2LiteFieldsAndRoundTrip) {
  const auto info = parse_hf_config(kV2LiteJson, "v2lite/config.json");
  const auto& c = info.config;
  EXPECT_EQ(info.model_type, "deepseek_v2");
  EXPECT_FALSE(c.mla.q_lora_rank.has_value());
  EXPECT_EQ(c.moe.scoring_func, config::ScoringFunc::kSoftmax);
  EXPECT_EQ(c.moe.topk_method, config::TopkMethod::kGreedy);
  EXPECT_FALSE(c.moe.norm_topk_prob);
  EXPECT_EQ(c.moe.aux_loss_alpha, 0.001);
  EXPECT_EQ(c.model.rope_scaling->mscale_all_dim, 0.707);
  EXPECT_EQ(c.model.bos_token_id, 100000);
  EXPECT_EQ(c.mtp.num_nextn_predict_layers, 0);
  const std::string written = hf_config_json(c, torch::kFloat32);
  EXPECT_NE(written.find("\"q_lora_rank\": null"), std::string::npos);
  EXPECT_NE(written.find("\"torch_dtype\": \"float32\""), std::string::npos);
  // HF's V3 model cannot compute softmax/greedy routing, so it is labelled deepseek_v2.
  EXPECT_NE(written.find("\"model_type\": \"deepseek_v2\""), std::string::npos);
  expect_same(c, parse_hf_config(written, "written").config);
}

TEST(HfConfig, AlternativeSpellings) {
  std::string j = kV2LiteJson;
  // rope_type instead of type; transformers v5's rope_parameters; q_lora_rank 0; eos list.
  auto with = [&](const std::string& from, const std::string& to) {
    std::string s = j;
    const auto pos = s.find(from);
    EXPECT_NE(pos, std::string::npos) << from;
    return s.replace(pos, from.size(), to);
  };
  EXPECT_TRUE(parse_hf_config(with("\"type\": \"yarn\"", "\"rope_type\": \"yarn\""), "x")
                  .config.model.rope_scaling.has_value());
  EXPECT_FALSE(parse_hf_config(with("\"q_lora_rank\": null", "\"q_lora_rank\": 0"), "x")
                   .config.mla.q_lora_rank.has_value());
  EXPECT_EQ(parse_hf_config(with("\"use_cache\": true", "\"dtype\": \"float32\""), "x").torch_dtype,
            "bfloat16");
  EXPECT_EQ(parse_hf_config(with("\"eos_token_id\": 100001", "\"eos_token_id\": [7, 8]"), "x")
                .config.model.eos_token_id,
            7);
  std::string v5 = with("\"rope_theta\": 10000,", "");
  v5 = v5.replace(v5.find("\"rope_scaling\""), 14, "\"rope_parameters\"");
  v5 = v5.replace(v5.find("\"type\": \"yarn\""), 14,
                  "\"rope_type\": \"yarn\", \"rope_theta\": 50000");
  const auto c5 = parse_hf_config(v5, "v5");
  EXPECT_EQ(c5.config.model.rope_theta, 50000.0);
  EXPECT_EQ(c5.config.model.rope_scaling->mscale, 0.707);
}

TEST(HfConfig, RefusesFieldsThatChangeTheMath) {
  const std::string base = kV3Json;
  auto expect_refused = [&](const std::string& from, const std::string& to,
                            const std::string& fragment) {
    std::string s = base;
    const auto pos = s.find(from);
    ASSERT_NE(pos, std::string::npos) << from;
    s.replace(pos, from.size(), to);
    try {
      parse_hf_config(s, "bad/config.json");
      ADD_FAILURE() << "accepted: " << to;
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_EQ(e.kind(), ErrorKind::kConfig);
      EXPECT_NE(msg.find("bad/config.json"), std::string::npos) << msg;
      EXPECT_NE(msg.find(fragment), std::string::npos) << "'" << fragment << "' not in: " << msg;
    }
  };
  expect_refused("\"use_cache\": true", "\"rope_interleave\": false", "rope_interleave");
  expect_refused("\"sigmoid\"", "\"sqrtsoftplus\"",
                 "scoring_func: expected 'sigmoid' or 'softmax'");
  expect_refused("\"noaux_tc\"", "\"topk\"", "topk_method");
  expect_refused("\"deepseek_v3\"", "\"llama\"", "model_type");
  expect_refused("\"num_key_value_heads\": 128", "\"num_key_value_heads\": 8",
                 "num_key_value_heads");
  expect_refused("\"use_cache\": true", "\"head_dim\": 128", "head_dim: HF sizes RoPE");
  expect_refused("\"silu\"", "\"gelu\"", "hidden_act");
  expect_refused("\"mscale\": 1.0,", "", "rope_scaling.mscale: missing");
  expect_refused("\"type\": \"yarn\"", "\"type\": \"linear\"", "'linear' is not supported");
  expect_refused("\"beta_slow\": 1,", "\"beta_slow\": 1, \"attention_factor\": 2,",
                 "rope_scaling.attention_factor");
  expect_refused("[128, 128]", "[64, 64]", "weight_block_size");
  expect_refused("\"use_cache\": true", "\"use_cache\": true, \"sliding_window\": 4096",
                 "sliding_window: unknown");
  expect_refused("\"hidden_size\": 7168,", "", "hidden_size: missing");
  expect_refused("\"vocab_size\": 129280", "\"vocab_size\": 1.5",
                 "vocab_size: expected an integer");
  expect_refused("\"use_cache\": true", "\"qk_head_dim\": 128", "qk_head_dim: expected");
  expect_refused("\"seq_aux\": true", "\"seq_aux\": false", "seq_aux");
  expect_refused("\"n_group\": 8,", "\"n_group\": 8, \"n_group\": 4,", "duplicate key 'n_group'");
}

// ---- tensors -----------------------------------------------------------------------------

class HfDir : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("moetron_hf_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    remove_tree(root_.string());
    fs::create_directories(root_);
  }
  void TearDown() override { remove_tree(root_.string()); }
  std::string path(const std::string& name) const { return (root_ / name).string(); }
  static HfModelConfig tiny_config() {
    auto c = parse_hf_config(kV3Json, "v3").config;
    c.model.vocab_size = 32;
    c.model.hidden_size = 8;
    c.model.num_hidden_layers = 2;
    return c;
  }
  fs::path root_;
};

// Direct per-element computation of SPEC 1.10: element (i, j) times scale[i/128][j/128].
torch::Tensor direct_dequant(const torch::Tensor& w8, const torch::Tensor& s) {
  const auto w = w8.to(torch::kFloat32);
  auto out = torch::empty_like(w);
  auto wa = w.accessor<float, 2>();
  auto sa = s.accessor<float, 2>();
  auto oa = out.accessor<float, 2>();
  for (int64_t i = 0; i < w.size(0); ++i)
    for (int64_t j = 0; j < w.size(1); ++j) oa[i][j] = wa[i][j] * sa[i / 128][j / 128];
  return out;
}

TEST_F(HfDir, Fp8WeightsAreDequantisedOnImport) {
  torch::manual_seed(3);
  const auto w8 = (torch::randn({200, 300}) * 50).to(torch::kFloat8_e4m3fn);
  const auto scale = torch::rand({2, 3}) * 0.01 + 0.001;
  const auto w8b = (torch::randn({128, 257}) * 10).to(torch::kFloat8_e4m3fn);
  const auto scale_b = torch::rand({1, 3}) + 0.5;
  const auto norm = torch::randn({300}).to(torch::kBFloat16);
  fs::create_directories(path("fp8"));
  save_safetensors(path("fp8/model.safetensors"),
                   {{"model.layers.0.mlp.down_proj.weight", w8},
                    {"model.layers.0.mlp.down_proj.weight_scale_inv", scale},
                    {"model.layers.0.self_attn.o_proj.weight", w8b},
                    {"model.layers.0.self_attn.o_proj.weight_scale_inv", scale_b},
                    {"model.norm.weight", norm}});
  const auto want = direct_dequant(w8, scale);
  ASSERT_GT(want.abs().sum().item<float>(), 1.0f);  // non-trivial input
  ASSERT_NE(scale[0][0].item<float>(), scale[1][2].item<float>());

  const auto fp32 = load_hf_tensors(path("fp8"), {torch::kFloat32});
  ASSERT_EQ(fp32.size(), 3u);  // the scales are gone
  EXPECT_EQ(fp32.count("model.layers.0.mlp.down_proj.weight_scale_inv"), 0u);
  EXPECT_TRUE(torch::equal(fp32.at("model.layers.0.mlp.down_proj.weight"), want));
  EXPECT_TRUE(torch::equal(fp32.at("model.layers.0.self_attn.o_proj.weight"),
                           direct_dequant(w8b, scale_b)));
  EXPECT_TRUE(torch::equal(fp32.at("model.norm.weight"), norm));  // untouched

  const auto bf16 = load_hf_tensors(path("fp8"));  // default: bf16
  EXPECT_EQ(bf16.at("model.layers.0.mlp.down_proj.weight").scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(
      torch::equal(bf16.at("model.layers.0.mlp.down_proj.weight"), want.to(torch::kBFloat16)));
}

TEST_F(HfDir, Fp8PairingErrors) {
  auto expect_load_error = [&](const NamedTensors& t, const std::string& fragment) {
    remove_tree(path("d"));
    fs::create_directories(path("d"));
    save_safetensors(path("d/model.safetensors"), t);
    try {
      load_hf_tensors(path("d"));
      ADD_FAILURE() << fragment;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  };
  const auto w8 = torch::ones({200, 300}).to(torch::kFloat8_e4m3fn);
  expect_load_error({{"a.weight", w8}}, "no sibling weight_scale_inv");
  expect_load_error({{"a.weight_scale_inv", torch::ones({2, 3})}}, "has no weight 'a.weight'");
  expect_load_error(
      {{"a.weight", torch::ones({200, 300})}, {"a.weight_scale_inv", torch::ones({2, 3})}},
      "expected F8_E4M3");
  expect_load_error({{"a.weight", w8}, {"a.weight_scale_inv", torch::ones({2, 2})}},
                    "expected shape [2, 3] for weight [200, 300]");
}

TEST_F(HfDir, SingleFileAndShardedRoundTrip) {
  torch::manual_seed(1);
  const auto cfg = tiny_config();
  NamedTensors tensors;
  for (int l = 0; l < 4; ++l) {
    tensors.emplace_back("model.layers." + std::to_string(l) + ".mlp.up_proj.weight",
                         torch::randn({16, 8}));
  }
  tensors.emplace_back("model.layers.3.mlp.gate.e_score_correction_bias", torch::randn({4}));
  tensors.emplace_back("model.embed_tokens.weight", torch::randn({32, 8}));  // 512 B in bf16
  tensors.emplace_back("step", torch::tensor({42}, torch::kInt64));

  save_hf_checkpoint(path("one"), cfg, tensors, torch::kFloat32);
  EXPECT_TRUE(fs::exists(path("one/model.safetensors")));
  EXPECT_FALSE(fs::exists(path("one/model.safetensors.index.json")));
  const auto one = load_hf_checkpoint(path("one"));
  for (const auto& [name, t] : tensors) EXPECT_TRUE(torch::equal(one.tensors.at(name), t)) << name;
  expect_same(cfg, one.config.config);
  EXPECT_EQ(one.config.torch_dtype, "float32");

  // bf16 with 300-byte shards: each 256-byte up_proj alone, the 512-byte embedding alone.
  save_hf_checkpoint(path("sharded"), cfg, tensors, torch::kBFloat16, 300);
  const auto index = read_text_file(path("sharded/model.safetensors.index.json"));
  EXPECT_NE(index.find("\"total_size\": " + std::to_string(4 * 256 + 16 + 512 + 8)),
            std::string::npos)
      << index;
  EXPECT_TRUE(fs::exists(path("sharded/model-00001-of-00006.safetensors"))) << index;
  EXPECT_TRUE(fs::exists(path("sharded/model-00006-of-00006.safetensors")));
  EXPECT_FALSE(fs::exists(path("sharded/model.safetensors")));
  const auto back = load_hf_checkpoint(path("sharded"));
  ASSERT_EQ(back.tensors.size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    const auto& got = back.tensors.at(name);
    if (name == "step") {
      EXPECT_TRUE(torch::equal(got, t));
    } else if (name.find("e_score_correction_bias") != std::string::npos) {
      EXPECT_EQ(got.scalar_type(), torch::kFloat32);  // kept fp32 as in the releases
      EXPECT_TRUE(torch::equal(got, t));
    } else {
      EXPECT_TRUE(torch::equal(got, t.to(torch::kBFloat16))) << name;
    }
  }
  EXPECT_EQ(back.config.torch_dtype, "bfloat16");
  // Nothing left behind next to the targets.
  for (const auto& entry : fs::directory_iterator(root_)) {
    EXPECT_EQ(entry.path().filename().string().find(".tmp."), std::string::npos) << entry.path();
  }
}

TEST_F(HfDir, IndexErrors) {
  const NamedTensors tensors = {{"a", torch::ones({64})}, {"b", torch::ones({64})}};
  save_hf_checkpoint(path("s"), tiny_config(), tensors, torch::kFloat32, 256);
  const std::string index_path = path("s/model.safetensors.index.json");
  const std::string f1 = "model-00001-of-00002.safetensors",
                    f2 = "model-00002-of-00002.safetensors";
  auto expect_index_error = [&](const std::string& weight_map, const std::string& fragment) {
    write_file_atomic(
        index_path, "{\"metadata\": {\"total_size\": 512}, \"weight_map\": {" + weight_map + "}}");
    try {
      load_hf_tensors(path("s"));
      ADD_FAILURE() << fragment;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  };
  const std::string a = "\"a\": \"" + f1 + "\"", b = "\"b\": \"" + f2 + "\"";
  expect_index_error(a + ", " + b + ", " + a, "duplicate key 'a'");
  expect_index_error(a + ", " + b + ", \"c\": \"" + f2 + "\"", "puts 'c' in " + f2);
  // A shard holding a tensor the index does not list, or lists elsewhere.
  save_safetensors(path("s/x.safetensors"), tensors);
  expect_index_error("\"a\": \"x.safetensors\"", "holds tensor 'b' which weight_map does not list");
  expect_index_error("\"a\": \"x.safetensors\", " + b,
                     "holds tensor 'b' which weight_map puts in " + f2);
  fs::remove(path("s/x.safetensors"));
  expect_index_error(a + ", \"b\": \"" + f1 + "\"", "weight_map puts 'b' in " + f1);
  expect_index_error(a + ", \"b\": \"../x.safetensors\"", "expected a file name inside");
  expect_index_error(a + ", " + b + ", \"c\": \"model-00003.safetensors\"", "does not exist");
  write_file_atomic(index_path, "{\"weight_map\": {" + a + ", " + b + "}}");
  EXPECT_EQ(load_hf_tensors(path("s")).size(), 2u);
  fs::remove(index_path);
  try {
    load_hf_tensors(path("s"));
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no model.safetensors or"), std::string::npos);
  }
}

TEST_F(HfDir, NeverClobbersUnlessAsked) {
  const auto cfg = tiny_config();
  const NamedTensors v1 = {{"w", torch::ones({4})}}, v2 = {{"w", torch::zeros({4})}};
  fs::create_directories(path("out"));
  save_hf_checkpoint(path("out"), cfg, v1, torch::kFloat32);  // an empty directory is fine
  write_file_atomic(path("out/notes.txt"), "keep me");
  try {
    save_hf_checkpoint(path("out"), cfg, v2, torch::kFloat32);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not empty"), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_text_file(path("out/notes.txt")), "keep me");
  EXPECT_TRUE(torch::equal(load_hf_tensors(path("out")).at("w"), v1[0].second));

  save_hf_checkpoint(path("out/"), cfg, v2, torch::kFloat32, kDefaultMaxShardBytes, true);
  EXPECT_FALSE(fs::exists(path("out/notes.txt")));
  EXPECT_TRUE(torch::equal(load_hf_tensors(path("out")).at("w"), v2[0].second));
  EXPECT_EQ(std::distance(fs::directory_iterator(root_), fs::directory_iterator()), 1);

  write_file_atomic(path("file"), "x");
  EXPECT_THROW(save_hf_checkpoint(path("file"), cfg, v1, torch::kFloat32), Error);
  EXPECT_THROW(save_hf_checkpoint(path("f16"), cfg, v1, torch::kFloat16), Error);
  EXPECT_THROW(
      save_hf_checkpoint(path("dup"), cfg, {{"w", torch::ones({1})}, {"w", torch::ones({1})}}),
      Error);
  EXPECT_FALSE(fs::exists(path("dup")));
}

// Optional: HF transformers (when the torch venv has it) loads the config.json we write as a
// DeepseekV3Config with the values we meant, RoPE parameters included.
TEST_F(HfDir, TransformersLoadsWrittenConfig) {
  const std::string python = testing::venv_python();
  if (!testing::python_has(python, "transformers")) {
    GTEST_SKIP() << "transformers not importable from the venv";
  }
  auto cfg = parse_hf_config(kV3Json, "v3").config;
  cfg.model.rope_scaling->mscale = 0.707;  // a value distinguishable from the defaults
  save_hf_checkpoint(path("hf"), cfg, {{"model.norm.weight", torch::ones({4})}});
  write_file_atomic(path("check.py"), R"(import sys
from transformers import AutoConfig
c = AutoConfig.from_pretrained(sys.argv[1])
assert type(c).__name__ == "DeepseekV3Config", type(c)
assert c.model_type == "deepseek_v3"
assert c.num_attention_heads == 128 and c.num_key_value_heads == 128
assert c.head_dim == 64 and c.qk_rope_head_dim == 64 and c.qk_nope_head_dim == 128
assert c.v_head_dim == 128 and c.q_lora_rank == 1536 and c.kv_lora_rank == 512
assert c.rope_interleave is True
assert (c.n_routed_experts, c.n_shared_experts, c.num_experts_per_tok) == (256, 1, 8)
assert (c.n_group, c.topk_group, c.first_k_dense_replace) == (8, 4, 3)
assert c.routed_scaling_factor == 2.5 and c.norm_topk_prob is True
assert c.vocab_size == 129280 and c.hidden_size == 7168 and c.moe_intermediate_size == 2048
assert c.max_position_embeddings == 163840 and c.rms_norm_eps == 1e-6
rope = getattr(c, "rope_parameters", None) or {}
if not rope or "factor" not in rope:
    rope = dict(c.rope_scaling or {}, rope_theta=getattr(c, "rope_theta", None))
assert rope.get("rope_type", rope.get("type")) == "yarn", rope
assert rope["factor"] == 40 and rope["mscale"] == 0.707 and rope["mscale_all_dim"] == 1.0, rope
assert rope["original_max_position_embeddings"] == 4096 and rope["rope_theta"] == 10000, rope
c.save_pretrained(sys.argv[2])
)");
  const std::string cmd =
      python + " " + path("check.py") + " " + path("hf") + " " + path("resaved");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  // And what transformers writes back (its own spelling, e.g. v5's rope_parameters) reads as
  // the same model.
  const auto back = read_hf_config(path("resaved/config.json"));
  expect_same(cfg, back.config);
}

}  // namespace
}  // namespace moetron::ckpt
