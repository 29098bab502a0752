// Whole model: causality, segment masking, MTP indexing and concat order, losses, backward,
// token log-probs, bias update, HF name round trip and errors, parameter/FLOP accounting.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <set>
#include <unordered_map>

#include "moetron/config/loader.h"
#include "moetron/core/error.h"
#include "moetron/model/accounting.h"
#include "moetron/model/bias_update.h"
#include "moetron/model/hf_names.h"
#include "moetron/model/losses.h"
#include "moetron/model/model.h"
#include "tiny.h"

namespace moetron::model {
namespace {

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

DeepseekV3ForCausalLM make_model(const config::Config& cfg, uint64_t seed = 0) {
  torch::manual_seed(seed);
  return DeepseekV3ForCausalLM(cfg);
}

torch::Tensor random_ids(int64_t B, int64_t T, int64_t V, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randint(0, V, {B, T}, torch::kInt64);
}

TEST(Model, ParameterNamesMatchHf) {
  auto m = make_model(testing::tiny_config());
  std::set<std::string> names;
  for (const auto& p : m->named_parameters()) names.insert(p.key());
  for (const char* want : {"model.embed_tokens.weight",
                           "model.layers.0.self_attn.q_a_proj.weight",
                           "model.layers.0.self_attn.q_a_layernorm.weight",
                           "model.layers.0.self_attn.q_b_proj.weight",
                           "model.layers.0.self_attn.kv_a_proj_with_mqa.weight",
                           "model.layers.0.self_attn.kv_a_layernorm.weight",
                           "model.layers.0.self_attn.kv_b_proj.weight",
                           "model.layers.0.self_attn.o_proj.weight",
                           "model.layers.0.input_layernorm.weight",
                           "model.layers.0.post_attention_layernorm.weight",
                           "model.layers.0.mlp.gate_proj.weight",
                           "model.layers.0.mlp.up_proj.weight",
                           "model.layers.0.mlp.down_proj.weight",
                           "model.layers.1.mlp.gate.weight",
                           "model.layers.1.mlp.shared_experts.gate_proj.weight",
                           "model.layers.1.mlp.shared_experts.up_proj.weight",
                           "model.layers.1.mlp.shared_experts.down_proj.weight",
                           "model.layers.2.mlp.experts.gate_proj",
                           "model.layers.2.mlp.experts.up_proj",
                           "model.layers.2.mlp.experts.down_proj",
                           "model.norm.weight",
                           "lm_head.weight",
                           "mtp.0.enorm.weight",
                           "mtp.0.hnorm.weight",
                           "mtp.0.eh_proj.weight",
                           "mtp.0.shared_head.norm.weight",
                           "mtp.0.mlp.gate.weight",
                           "mtp.0.self_attn.kv_b_proj.weight"}) {
    EXPECT_TRUE(names.count(want)) << want;
  }
  EXPECT_FALSE(names.count("model.layers.1.mlp.gate.e_score_correction_bias"));  // a buffer
  bool found_bias = false;
  for (const auto& b : m->named_buffers()) {
    if (b.key() == "model.layers.1.mlp.gate.e_score_correction_bias") {
      found_bias = true;
      EXPECT_EQ(b.value().scalar_type(), torch::kFloat32);
      EXPECT_FALSE(b.value().requires_grad());
    }
  }
  EXPECT_TRUE(found_bias);
  EXPECT_EQ(m->moe_layer_names(),
            (std::vector<std::string>{"model.layers.1.mlp", "model.layers.2.mlp", "mtp.0.mlp"}));
}

TEST(Model, InitIsSeededNormalWithUnitNorms) {
  auto cfg = testing::tiny_config();
  auto a = make_model(cfg, 3), b = make_model(cfg, 3);
  auto pa = a->named_parameters(), pb = b->named_parameters();
  for (const auto& p : pa) EXPECT_TRUE(torch::equal(p.value(), pb[p.key()])) << p.key();
  EXPECT_TRUE(torch::equal(a->model->norm->weight, torch::ones({cfg.model.hidden_size})));
  auto w = a->model->layer(1)->moe->experts->up_proj;
  EXPECT_NEAR(w.std().item<double>(), cfg.model.initializer_range, 0.01);
  EXPECT_NEAR(w.mean().item<double>(), 0.0, 0.01);
}

TEST(Model, CausalOutputsIgnoreFutureTokens) {
  auto cfg = testing::tiny_config();
  auto m = make_model(cfg);
  m->eval();
  auto ids = random_ids(2, 10, cfg.model.vocab_size, 1);
  ForwardOptions opt;
  opt.return_logits = true;
  auto a = m->forward(ids, {}, {}, {}, opt).logits_BTV;
  auto ids2 = ids.clone();
  ids2.narrow(1, 6, 4).fill_(7);
  auto b = m->forward(ids2, {}, {}, {}, opt).logits_BTV;
  EXPECT_LT(max_abs_diff(a.narrow(1, 0, 6), b.narrow(1, 0, 6)), 1e-5);
  EXPECT_GT(max_abs_diff(a.narrow(1, 6, 4), b.narrow(1, 6, 4)), 1e-3);
}

TEST(Model, SegmentIdsIsolatePackedSamples) {
  auto cfg = testing::tiny_config();
  auto m = make_model(cfg);
  m->eval();
  auto ids = random_ids(1, 10, cfg.model.vocab_size, 2);
  auto seg = torch::tensor({{0, 0, 0, 0, 1, 1, 1, 1, 1, 1}}, torch::kInt64);
  ForwardOptions opt;
  opt.return_logits = true;
  auto ids2 = ids.clone();
  ids2.narrow(1, 0, 4).fill_(5);  // change segment 0 only
  auto a = m->forward(ids, {}, {}, seg, opt).logits_BTV;
  auto b = m->forward(ids2, {}, {}, seg, opt).logits_BTV;
  EXPECT_LT(max_abs_diff(a.narrow(1, 4, 6), b.narrow(1, 4, 6)), 1e-5);
  // Without the mask, segment 1 does see segment 0 (the test input is discriminating).
  auto c = m->forward(ids, {}, {}, {}, opt).logits_BTV;
  auto d = m->forward(ids2, {}, {}, {}, opt).logits_BTV;
  EXPECT_GT(max_abs_diff(c.narrow(1, 4, 6), d.narrow(1, 4, 6)), 1e-3);
  // Segment 1 with restarted positions equals running it alone.
  auto pos = torch::tensor({{0, 1, 2, 3, 0, 1, 2, 3, 4, 5}}, torch::kInt64);
  auto packed = m->forward(ids, {}, pos, seg, opt).logits_BTV;
  auto alone = m->forward(ids.narrow(1, 4, 6).contiguous(), {}, {}, {}, opt).logits_BTV;
  EXPECT_LT(max_abs_diff(packed.narrow(1, 4, 6), alone), 1e-5);
}

TEST(Model, MainAndMtpLossIndexing) {
  auto cfg = testing::tiny_config();
  auto m = make_model(cfg);
  m->eval();
  const int64_t T = 9, p = 6, y = 11;
  auto ids = random_ids(1, T, cfg.model.vocab_size, 3);
  // A single valid label at position p: the main loss reads logits[p-1], depth 1 reads
  // its logits at p-2 (which saw Emb(t_{p-1}) and h_{p-2}).
  auto labels = torch::full({1, T}, kIgnoreIndex, torch::kInt64);
  labels[0][p] = y;
  ForwardOptions opt;
  opt.return_logits = true;
  auto out = m->forward(ids, labels, {}, {}, opt);
  auto main_lp = torch::log_softmax(out.logits_BTV[0][p - 1], -1)[y];
  EXPECT_NEAR(out.main_loss.item<double>(), -main_lp.item<double>(), 1e-5);
  EXPECT_EQ(out.num_target_tokens.item<int64_t>(), 1);

  auto& mtp = *m->mtp_layer(0);
  auto emb = m->model->embed_tokens(ids);
  auto ang = m->rope_angles(default_position_ids(1, T - 1, torch::kCPU), torch::kFloat32);
  auto h1 = mtp.forward_mtp(out.hidden_BTD.narrow(1, 0, T - 1), emb.narrow(1, 1, T - 1), ang).h_BTD;
  auto logits1 = m->logits(mtp.shared_head->norm(h1));
  auto mtp_lp = torch::log_softmax(logits1[0][p - 2], -1)[y];
  ASSERT_EQ(out.mtp_losses.size(), 1u);
  EXPECT_NEAR(out.mtp_losses[0].item<double>(), -mtp_lp.item<double>(), 1e-5);
  EXPECT_NEAR(out.loss.item<double>(),
              out.main_loss.item<double>() + 0.3 * out.mtp_loss.item<double>(), 1e-6);

  // Full labels: depth-1 loss is the mean CE of logits1[i] vs t_{i+2}.
  auto full = m->forward(ids, ids);
  auto ce = torch::nn::functional::cross_entropy(logits1[0].narrow(0, 0, T - 2),
                                                 ids[0].narrow(0, 2, T - 2));
  EXPECT_NEAR(full.mtp_losses[0].item<double>(), ce.item<double>(), 1e-5);
}

TEST(Model, EhProjFirstColumnsSeeTheEmbedding) {
  auto cfg = testing::tiny_config();
  auto m = make_model(cfg);
  m->eval();
  auto& mtp = *m->mtp_layer(0);
  const int64_t D = cfg.model.hidden_size, T = 5;
  torch::manual_seed(4);
  auto emb = torch::randn({1, T, D}), h = torch::randn({1, T, D});
  auto ang = m->rope_angles(default_position_ids(1, T, torch::kCPU), torch::kFloat32);
  {
    torch::NoGradGuard g;
    mtp.eh_proj->weight.narrow(1, D, D).zero_();  // drop the hidden half
  }
  auto a = mtp.forward_mtp(h, emb, ang).h_BTD;
  auto b = mtp.forward_mtp(torch::randn({1, T, D}), emb, ang).h_BTD;
  auto c = mtp.forward_mtp(h, torch::randn({1, T, D}), ang).h_BTD;
  EXPECT_LT(max_abs_diff(a, b), 1e-6);  // the hidden state no longer matters
  EXPECT_GT(max_abs_diff(a, c), 1e-3);  // the embedding (columns 0..D-1) does
}

TEST(Model, BackwardGivesFiniteGradsToEveryParameter) {
  auto cfg = testing::tiny_config();
  auto m = make_model(cfg);
  m->train();
  auto ids = random_ids(2, 12, cfg.model.vocab_size, 5);
  auto out = m->forward(ids, ids);
  ASSERT_TRUE(out.loss.defined());
  EXPECT_TRUE(std::isfinite(out.loss.item<double>()));
  EXPECT_GT(out.balance_loss.item<double>(), 0.0);
  EXPECT_NEAR(out.loss.item<double>(),
              (out.main_loss + 0.3 * out.mtp_loss + out.balance_loss).item<double>(), 1e-6);
  // Roughly ln(V) at init.
  EXPECT_NEAR(out.main_loss.item<double>(), std::log(cfg.model.vocab_size), 1.0);
  out.loss.backward();
  int64_t n = 0;
  for (const auto& p : m->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_TRUE(torch::isfinite(p.value().grad()).all().item<bool>()) << p.key();
    EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0) << p.key();
    ++n;
  }
  EXPECT_GT(n, 50);
  for (const auto& b : m->named_buffers()) EXPECT_FALSE(b.value().grad().defined()) << b.key();
  // Counts: [3 MoE layers, 8 experts], each row sums to tokens·K (MTP sees T-1 tokens).
  ASSERT_EQ(out.expert_counts_ME.sizes(), (std::vector<int64_t>{3, 8}));
  EXPECT_EQ(out.expert_counts_ME[0].sum().item<int64_t>(), 2 * 12 * 2);
  EXPECT_EQ(out.expert_counts_ME[2].sum().item<int64_t>(), 2 * 11 * 2);
  EXPECT_GE((out.expert_counts_ME[0] > 0).sum().item<int64_t>(), 4);
}

TEST(Model, NoMtpNoLabelsAndAllIgnored) {
  auto cfg = testing::tiny_config(false, 0);
  auto m = make_model(cfg);
  auto ids = random_ids(1, 6, cfg.model.vocab_size, 6);
  auto out = m->forward(ids);
  EXPECT_FALSE(out.loss.defined());
  EXPECT_FALSE(out.logits_BTV.defined());
  EXPECT_EQ(out.expert_counts_ME.size(0), 2);
  auto ignored = m->forward(ids, torch::full({1, 6}, kIgnoreIndex, torch::kInt64));
  EXPECT_EQ(ignored.main_loss.item<double>(), 0.0);  // not HF's NaN
  EXPECT_EQ(ignored.loss.item<double>(), ignored.balance_loss.item<double>());
  EXPECT_EQ(ignored.num_target_tokens.item<int64_t>(), 0);
  // MTP disabled by option: zero MTP count rows, no MTP loss.
  auto m2 = make_model(testing::tiny_config());
  ForwardOptions opt;
  opt.compute_mtp = false;
  auto o2 = m2->forward(ids, ids, {}, {}, opt);
  EXPECT_TRUE(o2.mtp_losses.empty());
  EXPECT_EQ(o2.expert_counts_ME[2].sum().item<int64_t>(), 0);
}

TEST(Model, TokenLogprobsMatchFullLogSoftmaxForAnyChunk) {
  auto cfg = testing::tiny_config();
  auto m = make_model(cfg);
  m->eval();
  auto ids = random_ids(2, 9, cfg.model.vocab_size, 7);
  ForwardOptions opt;
  opt.return_logits = true;
  auto logits = m->forward(ids, {}, {}, {}, opt).logits_BTV;
  auto want = torch::log_softmax(logits.narrow(1, 0, 8), -1)
                  .gather(-1, ids.narrow(1, 1, 8).unsqueeze(-1))
                  .squeeze(-1);
  for (int64_t chunk : {1, 3, 8, 100}) {
    auto got = m->token_logprobs(ids, {}, {}, chunk);
    ASSERT_EQ(got.sizes(), (std::vector<int64_t>{2, 8}));
    EXPECT_LT(max_abs_diff(got, want), 1e-5) << "chunk " << chunk;
  }
}

TEST(BiasUpdate, MovesByExactlyGammaOrZero) {
  auto cfg = testing::tiny_config();
  auto m = make_model(cfg);
  const float gamma = 1e-3f;
  auto counts =
      torch::tensor({{3, 1, 2, 2, 0, 4, 2, 2}, {0, 0, 0, 0, 0, 0, 0, 0}, {1, 1, 1, 1, 1, 1, 1, 9}},
                    torch::kInt64);
  for (int step = 0; step < 2; ++step) {
    std::vector<torch::Tensor> before;
    for (auto& l : m->moe_layers()) before.push_back(l->gate->e_score_correction_bias.clone());
    update_expert_bias(m, counts, gamma);
    auto layers = m->moe_layers();
    // mean 2: overloaded experts go down, underloaded up, exactly-average ones stay.
    auto sign0 = torch::tensor({-1, 1, 0, 0, 1, -1, 0, 0}, torch::kFloat32);
    auto sign2 = torch::tensor({1, 1, 1, 1, 1, 1, 1, -1}, torch::kFloat32);
    EXPECT_TRUE(torch::equal(layers[0]->gate->e_score_correction_bias, before[0] + gamma * sign0));
    EXPECT_TRUE(torch::equal(layers[1]->gate->e_score_correction_bias, before[1]));
    EXPECT_TRUE(torch::equal(layers[2]->gate->e_score_correction_bias, before[2] + gamma * sign2));
  }
  EXPECT_THROW(update_expert_bias(m, counts.narrow(0, 0, 2), gamma), Error);
  auto v2 = testing::tiny_config();
  v2.moe.topk_method = config::TopkMethod::kGreedy;
  auto m2 = make_model(v2);
  EXPECT_NO_THROW(update_expert_bias(m2, counts, 0.0));
  EXPECT_THROW(update_expert_bias(m2, counts, gamma), Error);
}

TEST(BiasUpdate, BiasSteersRoutingInTheModel) {
  auto cfg = testing::tiny_config();
  auto m = make_model(cfg);
  m->eval();
  auto ids = random_ids(1, 16, cfg.model.vocab_size, 8);
  auto base = m->forward(ids).expert_counts_ME;
  {
    torch::NoGradGuard g;
    m->moe_layers()[0]->gate->e_score_correction_bias[6] = 5.0;
  }
  auto steered = m->forward(ids).expert_counts_ME;
  EXPECT_EQ(steered[0][6].item<int64_t>(), 16);
  EXPECT_LT(base[0][6].item<int64_t>(), 16);
}

// ---- HF names -----------------------------------------------------------------------------

TEST(HfNames, ExactNamesAndRoundTrip) {
  auto cfg = testing::tiny_config();
  auto a = make_model(cfg, 1);
  {
    torch::NoGradGuard g;
    for (auto& l : a->moe_layers()) l->gate->e_score_correction_bias.normal_();
  }
  auto tensors = to_hf_tensors(a);
  std::unordered_map<std::string, torch::Tensor> map;
  for (auto& [n, t] : tensors) map.emplace(n, t.clone());
  EXPECT_EQ(map.size(), tensors.size()) << "duplicate names";
  for (const char* want :
       {"model.layers.1.mlp.experts.0.gate_proj.weight",
        "model.layers.2.mlp.experts.7.down_proj.weight",
        "model.layers.1.mlp.gate.e_score_correction_bias", "model.layers.3.enorm.weight",
        "model.layers.3.hnorm.weight", "model.layers.3.eh_proj.weight",
        "model.layers.3.shared_head.norm.weight", "model.layers.3.shared_head.head.weight",
        "model.layers.3.embed_tokens.weight", "model.layers.3.mlp.experts.5.up_proj.weight",
        "model.layers.3.self_attn.q_a_proj.weight", "lm_head.weight", "model.norm.weight"}) {
    EXPECT_TRUE(map.count(want)) << want;
  }
  for (auto& [n, t] : map) {
    EXPECT_EQ(n.find("mtp."), std::string::npos) << n;
    EXPECT_EQ(n.find("mlp.experts.gate_proj"), std::string::npos) << n;
  }
  EXPECT_EQ(map.at("model.layers.2.mlp.experts.7.down_proj.weight").sizes(),
            (std::vector<int64_t>{32, 16}));
  EXPECT_EQ(map.at("model.layers.3.eh_proj.weight").sizes(), (std::vector<int64_t>{32, 64}));
  // 3 stacked tensors per MoE layer become 3·8 named ones.
  const int64_t stacked =
      static_cast<int64_t>(a->named_parameters().size() + a->named_buffers().size());
  EXPECT_EQ(static_cast<int64_t>(map.size()), stacked + 3 * 3 * (8 - 1) + 2);

  auto b = make_model(cfg, 2);
  load_hf_tensors(b, map);
  auto pa = a->named_parameters();
  for (const auto& p : b->named_parameters())
    EXPECT_TRUE(torch::equal(p.value(), pa[p.key()])) << p.key();
  auto ba = a->named_buffers();
  for (const auto& p : b->named_buffers())
    EXPECT_TRUE(torch::equal(p.value(), ba[p.key()])) << p.key();
  a->eval();
  b->eval();
  auto ids = random_ids(1, 7, cfg.model.vocab_size, 9);
  EXPECT_TRUE(torch::equal(a->forward(ids, ids).loss, b->forward(ids, ids).loss));

  // dtype cast on load.
  std::unordered_map<std::string, torch::Tensor> half;
  for (auto& [n, t] : map) half.emplace(n, t.to(torch::kBFloat16));
  load_hf_tensors(b, half);
  EXPECT_EQ(b->model->norm->weight.scalar_type(), torch::kFloat32);
  EXPECT_LT(max_abs_diff(b->lm_head->weight, a->lm_head->weight), 1e-2);
}

TEST(HfNames, LoadListsAllProblemsSorted) {
  auto cfg = testing::tiny_config();
  auto a = make_model(cfg, 1);
  std::unordered_map<std::string, torch::Tensor> map;
  for (auto& [n, t] : to_hf_tensors(a)) map.emplace(n, t.clone());
  map.erase("model.norm.weight");
  map.erase("model.layers.1.mlp.experts.3.up_proj.weight");
  map.emplace("model.layers.0.self_attn.rotary_emb.inv_freq", torch::zeros({2}));
  map.emplace("bogus.weight", torch::zeros({2}));
  map["model.layers.0.self_attn.o_proj.weight"] = torch::zeros({3, 3});
  map.emplace("model.layers.9.enorm.weight", torch::zeros({32}));  // extra MTP layer: skipped
  auto b = make_model(cfg, 2);
  auto before = b->model->embed_tokens->weight.clone();
  try {
    load_hf_tensors(b, map);
    FAIL() << "no throw";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    auto at = [&](const char* s) { return msg.find(s); };
    EXPECT_NE(at("missing (2)"), std::string::npos) << msg;
    EXPECT_LT(at("model.layers.1.mlp.experts.3.up_proj.weight"), at("model.norm.weight"));
    EXPECT_NE(at("unexpected (2)"), std::string::npos) << msg;
    EXPECT_LT(at("bogus.weight"), at("model.layers.0.self_attn.rotary_emb.inv_freq"));
    EXPECT_NE(at("model.layers.0.self_attn.o_proj.weight: expected [32, 32], got [3, 3]"),
              std::string::npos)
        << msg;
    EXPECT_EQ(at("model.layers.9"), std::string::npos);
  }
  EXPECT_TRUE(torch::equal(before, b->model->embed_tokens->weight));  // untouched on error
}

TEST(HfNames, TiedEmbeddingsOmitLmHead) {
  auto cfg = testing::tiny_config(true, 0);
  cfg.model.tie_word_embeddings = true;
  auto m = make_model(cfg);
  EXPECT_TRUE(m->lm_head.is_empty());
  for (auto& [n, t] : to_hf_tensors(m)) EXPECT_NE(n, "lm_head.weight");
  auto ids = random_ids(1, 5, cfg.model.vocab_size, 10);
  EXPECT_TRUE(std::isfinite(m->forward(ids, ids).loss.item<double>()));
}

// ---- accounting ----------------------------------------------------------------------------

TEST(Accounting, V3MatchesSpec) {
  auto p = count_params(testing::v3_config());
  EXPECT_EQ(p.total, 671026404352LL);
  EXPECT_EQ(p.active, 36625603584LL);
  EXPECT_EQ(p.active_with_embedding, 37552282624LL);
  EXPECT_EQ(p.embedding, 926679040LL);
  EXPECT_EQ(p.mtp_total, 11610067968LL);
  // HF "685B" = main + MTP + the two stored copies in layer 61.
  EXPECT_EQ(p.total + p.mtp_total + 2 * p.embedding, 684489830400LL);
}

TEST(Accounting, V2LiteAndOthersMatchSpec) {
  auto p = count_params(testing::v2_lite_config());
  EXPECT_EQ(p.total, 15706484224LL);
  EXPECT_EQ(p.active, 2451435008LL);
  EXPECT_EQ(p.active_with_embedding, 2661150208LL);
  EXPECT_EQ(p.mtp_total, 0);
  auto v2 = testing::v2_lite_config();  // DeepSeek-V2 236B
  v2.model.vocab_size = 102400;
  v2.model.hidden_size = 5120;
  v2.model.intermediate_size = 12288;
  v2.model.num_hidden_layers = 60;
  v2.model.num_attention_heads = 128;
  v2.mla.q_lora_rank = 1536;
  v2.moe.n_routed_experts = 160;
  v2.moe.moe_intermediate_size = 1536;
  v2.moe.n_group = 8;
  v2.moe.topk_group = 3;
  v2.moe.topk_method = config::TopkMethod::kGroupLimitedGreedy;
  auto p2 = count_params(v2);
  EXPECT_EQ(p2.total, 235741434880LL);
  EXPECT_EQ(p2.active, 20851512320LL);
}

TEST(Accounting, InstantiatedTinyModelMatchesFormula) {
  for (bool q_lora : {true, false}) {
    auto cfg = testing::tiny_config(q_lora, 2);
    auto m = make_model(cfg);
    auto p = count_params(cfg);
    EXPECT_EQ(count_module_params(*m), p.total + p.mtp_total);
    EXPECT_EQ(count_module_params(*m, "mtp."), p.mtp_total);
    EXPECT_EQ(count_module_params(*m, "model.embed_tokens."), p.embedding);
  }
}

TEST(Accounting, FlopsFormulaAndSummary) {
  auto cfg = testing::tiny_config();
  auto p = count_params(cfg);
  auto f = forward_flops_per_token(cfg, 100);
  EXPECT_DOUBLE_EQ(f.matmul, 2.0 * p.active_matmul);
  EXPECT_DOUBLE_EQ(f.attention, 3.0 * 4 * (12 + 8) * 101);
  EXPECT_DOUBLE_EQ(f.with_mtp, f.total + f.mtp);
  // Active matmul params = active params minus the norm weights on the token path.
  const int64_t norms = 3 * (2 * 32 + 16 + 16) + 32;
  EXPECT_EQ(p.active_matmul, p.active - norms);
  auto v3 = forward_flops_per_token(testing::v3_config(), 4096);
  EXPECT_GT(v3.total / 1e9, 70.0);
  EXPECT_LT(v3.total / 1e9, 90.0);
  auto line = summary_line(testing::v3_config());
  EXPECT_NE(line.find("671.03B"), std::string::npos) << line;
  EXPECT_NE(line.find("36.63B"), std::string::npos) << line;
}

// configs/moe-1b.yaml, the single-H200 MFU target: ~1B parameters in total.
TEST(Accounting, Moe1bPresetIsAboutOneBillion) {
  const auto cfg = config::load_file(std::string(MOETRON_SOURCE_DIR) + "/configs/moe-1b.yaml");
  const auto p = count_params(cfg);
  EXPECT_GE(p.total, 900000000LL) << summary_line(cfg);
  EXPECT_LE(p.total, 1300000000LL) << summary_line(cfg);
  EXPECT_LE(p.total + p.mtp_total, 1300000000LL) << summary_line(cfg);
  EXPECT_GT(p.mtp_total, 0);
  EXPECT_EQ(*cfg.moe.n_routed_experts, 64);
  EXPECT_EQ(cfg.moe.n_shared_experts, 1);
  EXPECT_EQ(cfg.moe.num_experts_per_tok, 6);
  EXPECT_EQ(cfg.data.seq_len, 4096);
  validate_model_config(cfg);
}

TEST(Config, InvalidSettingsNameTheKey) {
  auto cfg = testing::tiny_config();
  cfg.moe.n_group = 3;
  try {
    validate_model_config(cfg);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_NE(std::string(e.what()).find("moe.n_group"), std::string::npos);
  }
  cfg = testing::tiny_config();
  cfg.moe.num_experts_per_tok = 5;  // > 2 kept groups x 2 experts
  EXPECT_THROW(DeepseekV3ForCausalLM{cfg}, Error);
  cfg = testing::tiny_config();
  cfg.mla.qk_rope_head_dim = 5;
  EXPECT_THROW(validate_model_config(cfg), Error);
  cfg = testing::tiny_config();
  cfg.kernels.gate = "triton";
  EXPECT_THROW(DeepseekV3ForCausalLM{cfg}, Error);
}

}  // namespace
}  // namespace moetron::model

namespace moetron::model {
namespace {

TEST(ChunkedLoss, ValuesAndGradsMatchFullLogits) {
  torch::manual_seed(20);
  const int64_t N = 13, D = 8, V = 29;
  auto h = torch::randn({N, D}).requires_grad_(true);
  auto w = torch::randn({V, D}).requires_grad_(true);
  auto t = torch::randint(0, V, {N}, torch::kInt64);
  t[3] = kIgnoreIndex;
  t[7] = kIgnoreIndex;
  auto weights = torch::linspace(0.5, 2.0, N);
  // Reference: full logits.
  auto logp = torch::log_softmax(h.mm(w.t()), 1).gather(1, t.clamp_min(0).unsqueeze(1)).squeeze(1);
  auto want = logp.masked_fill(t == kIgnoreIndex, 0.0);
  (want * weights).sum().backward();
  auto gh = h.grad().clone(), gw = w.grad().clone();
  for (int64_t chunk : {1, 4, 13, 100}) {
    h.mutable_grad().zero_();
    w.mutable_grad().zero_();
    auto got = chunked_token_logprobs(h, w, t, chunk);
    EXPECT_LT(max_abs_diff(got, want), 1e-5) << chunk;
    (got * weights).sum().backward();
    EXPECT_LT(max_abs_diff(h.grad(), gh), 1e-5) << chunk;
    EXPECT_LT(max_abs_diff(w.grad(), gw), 1e-5) << chunk;
    EXPECT_EQ(got[3].item<double>(), 0.0);
  }
  auto ce = chunked_cross_entropy(h, w, t, 5);
  auto ref = cross_entropy(h.mm(w.t()), t);
  EXPECT_NEAR(ce.item<double>(), ref.item<double>(), 1e-6);

  // With a temperature: the log-probs of softmax(logits / T) and their gradients.
  const double T = 0.7;
  h.mutable_grad().zero_();
  w.mutable_grad().zero_();
  auto logp_t =
      torch::log_softmax(h.mm(w.t()) / T, 1).gather(1, t.clamp_min(0).unsqueeze(1)).squeeze(1);
  auto want_t = logp_t.masked_fill(t == kIgnoreIndex, 0.0);
  (want_t * weights).sum().backward();
  auto gh_t = h.grad().clone(), gw_t = w.grad().clone();
  h.mutable_grad().zero_();
  w.mutable_grad().zero_();
  auto got_t = chunked_token_logprobs(h, w, t, 4, T);
  EXPECT_LT(max_abs_diff(got_t, want_t), 1e-5);
  (got_t * weights).sum().backward();
  EXPECT_LT(max_abs_diff(h.grad(), gh_t), 1e-5);
  EXPECT_LT(max_abs_diff(w.grad(), gw_t), 1e-5);
  EXPECT_GT(max_abs_diff(got_t, want), 1e-3) << "temperature had no effect";
}

// Above 64 MiB of logits the backward recomputes each chunk's logits instead of keeping the
// softmax (the small case above keeps it): same values and gradients as full logits (computed in
// fp64: dh sums 16400 fp32 terms, whose rounding depends on the GEMM's summation order).
TEST(ChunkedLoss, RecomputingBackwardForLargeLogits) {
  torch::manual_seed(22);
  const int64_t N = 1030, D = 4, V = 16400;  // 1030 x 16400 fp32 logits = 67.6 MB
  auto h = torch::randn({N, D}).requires_grad_(true);
  auto w = torch::randn({V, D}).requires_grad_(true);
  auto t = torch::randint(0, V, {N}, torch::kInt64);
  t[5] = kIgnoreIndex;
  auto weights = torch::linspace(0.5, 2.0, N);
  auto h64 = h.detach().to(torch::kFloat64).requires_grad_(true);
  auto w64 = w.detach().to(torch::kFloat64).requires_grad_(true);
  auto logp =
      torch::log_softmax(h64.mm(w64.t()), 1).gather(1, t.clamp_min(0).unsqueeze(1)).squeeze(1);
  auto want = logp.masked_fill(t == kIgnoreIndex, 0.0);
  (want * weights.to(torch::kFloat64)).sum().backward();
  auto gh = h64.grad(), gw = w64.grad();
  for (int64_t chunk : {512, 4096}) {
    h.mutable_grad().reset();
    w.mutable_grad().reset();
    auto got = chunked_token_logprobs(h, w, t, chunk);
    EXPECT_LT(max_abs_diff(got, want), 1e-4) << chunk;
    (got * weights).sum().backward();
    // dh's 16400-term fp32 sums: ~2e-4 from fp64 through MKL, ~1e-4 through oneDNN.
    EXPECT_LT(max_abs_diff(h.grad(), gh), 4e-4) << chunk;
    EXPECT_LT(max_abs_diff(w.grad(), gw), 1e-4) << chunk;
  }
}

TEST(ChunkedLoss, ModelLossAndGradsIndependentOfLogitsPath) {
  auto cfg = testing::tiny_config();
  auto m = make_model(cfg);
  m->eval();  // no balance loss: compare the LM parts only
  auto ids = random_ids(2, 10, cfg.model.vocab_size, 21);
  auto run = [&](bool with_logits, int64_t chunk) {
    m->zero_grad();
    ForwardOptions opt;
    opt.return_logits = with_logits;
    opt.loss_chunk_rows = chunk;
    auto out = m->forward(ids, ids, {}, {}, opt);
    out.loss.backward();
    return std::make_pair(out.loss.item<double>(), m->lm_head->weight.grad().clone());
  };
  auto [l_full, g_full] = run(true, 4096);
  auto [l_chunk, g_chunk] = run(false, 3);
  EXPECT_NEAR(l_full, l_chunk, 1e-6);
  EXPECT_LT(max_abs_diff(g_full, g_chunk), 1e-6);
  // token_logprobs is differentiable too.
  m->zero_grad();
  m->token_logprobs(ids, {}, {}, 2).sum().backward();
  EXPECT_GT(m->model->embed_tokens->weight.grad().abs().sum().item<double>(), 0.0);
}

}  // namespace
}  // namespace moetron::model

namespace moetron::model {
namespace {

TEST(Model, Bf16CastKeepsBiasFp32AndRuns) {
  auto cfg = testing::tiny_config();
  auto m = make_model(cfg);
  auto ids = random_ids(1, 8, cfg.model.vocab_size, 30);
  m->eval();
  ForwardOptions opt;
  opt.return_logits = true;
  auto ref = m->forward(ids, ids, {}, {}, opt);
  m->to(torch::kBFloat16);
  for (auto& l : m->moe_layers()) {
    EXPECT_EQ(l->gate->e_score_correction_bias.scalar_type(), torch::kFloat32);
    EXPECT_EQ(l->gate->weight.scalar_type(), torch::kBFloat16);
  }
  auto out = m->forward(ids, ids, {}, {}, opt);
  EXPECT_EQ(out.logits_BTV.scalar_type(), torch::kBFloat16);
  EXPECT_NEAR(out.main_loss.item<double>(), ref.main_loss.item<double>(), 0.05);
  EXPECT_LT(max_abs_diff(out.logits_BTV, ref.logits_BTV), 0.1);
}

}  // namespace
}  // namespace moetron::model

namespace moetron::model {
namespace {

TEST(KvCache, IncrementalDecodingEqualsFullForward) {
  auto cfg = testing::tiny_config();
  auto m = make_model(cfg);
  m->eval();
  torch::NoGradGuard no_grad;
  auto ids = random_ids(2, 9, cfg.model.vocab_size, 40);
  ForwardOptions opt;
  opt.return_logits = true;
  auto full = m->forward(ids, {}, {}, {}, opt).logits_BTV;
  auto cache = m->new_kv_cache(2, 12);
  auto prefill = m->forward_with_cache(ids.narrow(1, 0, 5), cache);
  EXPECT_EQ(cache.length, 5);
  EXPECT_LT(max_abs_diff(prefill, full.narrow(1, 0, 5)), 1e-5);
  for (int64_t t = 5; t < 9; ++t) {
    auto step = m->forward_with_cache(ids.narrow(1, t, 1), cache);
    EXPECT_LT(max_abs_diff(step, full.narrow(1, t, 1)), 1e-5) << "t=" << t;
  }
  EXPECT_THROW(m->forward_with_cache(ids.narrow(1, 0, 4), cache), Error);  // 13 > 12 slots
}

TEST(KvCache, LeftPaddingIsInvisible) {
  auto cfg = testing::tiny_config();
  auto m = make_model(cfg);
  m->eval();
  torch::NoGradGuard no_grad;
  auto ids = random_ids(1, 4, cfg.model.vocab_size, 41);
  ForwardOptions opt;
  opt.return_logits = true;
  auto alone = m->forward(ids, {}, {}, {}, opt).logits_BTV;
  // Row 0: two pad tokens then the 4 real ones (positions restart at 0); row 1: 6 real tokens.
  auto padded = torch::cat({torch::full({1, 2}, 3, torch::kInt64), ids}, 1);
  auto batch = torch::cat({padded, random_ids(1, 6, cfg.model.vocab_size, 42)}, 0);
  auto valid = torch::tensor({{0, 0, 1, 1, 1, 1}, {1, 1, 1, 1, 1, 1}}, torch::kBool);
  auto pos = torch::tensor({{0, 0, 0, 1, 2, 3}, {0, 1, 2, 3, 4, 5}}, torch::kInt64);
  auto cache = m->new_kv_cache(2, 8);
  auto out = m->forward_with_cache(batch, cache, pos, valid);
  EXPECT_LT(max_abs_diff(out[0].narrow(0, 2, 4), alone[0]), 1e-5);
  // One more step for row 0 equals the unpadded model on 5 tokens.
  auto next = random_ids(2, 1, cfg.model.vocab_size, 43);
  auto step = m->forward_with_cache(next, cache, torch::tensor({{4}, {6}}, torch::kInt64));
  auto five = torch::cat({ids, next.narrow(0, 0, 1)}, 1);
  auto ref = m->forward(five, {}, {}, {}, opt).logits_BTV;
  EXPECT_LT(max_abs_diff(step[0][0], ref[0][4]), 1e-5);
}

}  // namespace
}  // namespace moetron::model

namespace moetron::model {
namespace {

TEST(Model, ShortSequencesAndInt32Labels) {
  auto cfg = testing::tiny_config(true, 2);
  auto m = make_model(cfg);
  for (int64_t T : {1, 2, 3}) {
    auto ids = random_ids(2, T, cfg.model.vocab_size, 50 + T);
    auto out = m->forward(ids, ids.to(torch::kInt32));
    EXPECT_TRUE(std::isfinite(out.loss.item<double>())) << "T=" << T;
    ASSERT_EQ(out.mtp_losses.size(), 2u);
    EXPECT_EQ(m->token_logprobs(ids).size(1), T - 1);
    out.loss.backward();
  }
}

TEST(Model, MtpHiddenSourceSelectsPostOrPreNorm) {
  auto cfg = testing::tiny_config();
  auto post = make_model(cfg, 5);
  cfg.mtp.hidden_source = config::MtpHiddenSource::kPreNorm;
  auto pre = make_model(cfg, 5);
  post->eval();
  pre->eval();
  {
    torch::NoGradGuard g;  // make model.norm non-trivial so the two sources differ
    post->model->norm->weight.normal_(1.0, 0.5);
    pre->model->norm->weight.copy_(post->model->norm->weight);
  }
  auto ids = random_ids(1, 8, cfg.model.vocab_size, 60);
  auto a = post->forward(ids, ids), b = pre->forward(ids, ids);
  EXPECT_NEAR(a.main_loss.item<double>(), b.main_loss.item<double>(), 1e-7);
  EXPECT_GT(std::abs(a.mtp_losses[0].item<double>() - b.mtp_losses[0].item<double>()), 1e-5);
}

}  // namespace
}  // namespace moetron::model
