// Rejection sampling (train/distill.h, `moetron distill`): the filter funnel on hand-made
// candidates; on a model with a known output distribution (distill_test_util.h) with the real
// accuracy verifier: only verified samples are kept, every filter counts, the cap and dedupe
// hold, the output is SFT data `moetron train` reads, a seed reproduces a run; through the
// binary: the output file and summary line, and a bad input line that leaves no file.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <set>

#include "distill_test_util.h"
#include "moetron/ckpt/train_checkpoint.h"
#include "moetron/data/chat_template.h"
#include "moetron/data/dataset.h"
#include "moetron/optim/optimizer.h"
#include "moetron/rewards/reward.h"
#include "moetron/train/distill.h"
#include "moetron/train/trainer.h"
#include "support/cli_runner.h"
#include "train_test_util.h"

namespace moetron::train {
namespace {

using namespace moetron::train::testing;

// ---- the filter funnel on hand-made candidates

DistillCandidate cand(const std::string& response, int64_t tokens, bool verified,
                      bool stopped = true, bool format_ok = true) {
  DistillCandidate c;
  c.response = response;
  c.num_tokens = tokens;
  c.verified = verified;
  c.stopped = stopped;
  c.format_ok = format_ok;
  return c;
}

int64_t rejected(const DistillCounts& c) {
  return c.unverified + c.truncated + c.too_short + c.too_long + c.bad_format + c.duplicate +
         c.over_keep;
}

TEST(DistillSelect, FunnelOrderAndCounts) {
  const std::vector<DistillCandidate> cands = {
      cand("a", 5, false),              // 0 unverified
      cand("b", 50, true, false),       // 1 truncated (also too long: first filter wins)
      cand("c", 1, true),               // 2 too short
      cand("d", 30, true),              // 3 too long
      cand("e", 6, true, true, false),  // 4 bad format
      cand("f", 9, true),               // 5 passes
      cand("g", 4, true),               // 6 passes (shortest)
      cand("g", 4, true),               // 7 duplicate of 6
      cand("h", 7, true),               // 8 passes
  };
  DistillOptions o;
  o.min_tokens = 2;
  o.max_tokens = 20;
  o.require_format = true;
  o.keep_per_prompt = 2;
  DistillCounts c;
  const auto kept = select_candidates(cands, o, c);
  EXPECT_EQ(kept, (std::vector<size_t>{6, 8}));  // shortest first: 4, 7 tokens; 9 over the cap
  EXPECT_EQ(c.samples, 9);
  EXPECT_EQ(c.verified, 8);
  EXPECT_EQ(c.unverified, 1);
  EXPECT_EQ(c.truncated, 1);
  EXPECT_EQ(c.too_short, 1);
  EXPECT_EQ(c.too_long, 1);
  EXPECT_EQ(c.bad_format, 1);
  EXPECT_EQ(c.duplicate, 1);
  EXPECT_EQ(c.over_keep, 1);
  EXPECT_EQ(c.kept, 2);
  EXPECT_EQ(c.kept + rejected(c), c.samples);

  // Sampling order instead; format not required; no cap; counts accumulate.
  o.prefer = DistillPrefer::kFirst;
  o.require_format = false;
  o.keep_per_prompt = 0;
  DistillCounts c2;
  EXPECT_EQ(select_candidates(cands, o, c2), (std::vector<size_t>{4, 5, 6, 8}));
  EXPECT_EQ(c2.duplicate, 1);
  EXPECT_EQ(c2.over_keep, 0);
  o.keep_per_prompt = 1;
  EXPECT_EQ(select_candidates(cands, o, c2), (std::vector<size_t>{4}));
  EXPECT_EQ(c2.samples, 18);
  EXPECT_EQ(c2.kept, 5);
  EXPECT_EQ(c2.over_keep, 3);
  EXPECT_EQ(c2.kept + rejected(c2), c2.samples);
}

TEST(DistillSelect, OptionErrorsNameTheOption) {
  auto message = [](DistillOptions o) {
    try {
      validate_distill_options(o);
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kUsage);
      return std::string(e.what());
    }
    return std::string("<no error>");
  };
  DistillOptions o;
  o.samples_per_prompt = 0;
  EXPECT_NE(message(o).find("-k"), std::string::npos);
  o = {};
  o.batch_prompts = 0;
  EXPECT_NE(message(o).find("--batch-prompts"), std::string::npos);
  o = {};
  o.min_tokens = 10;
  o.max_tokens = 5;
  EXPECT_NE(message(o).find("--max-tokens (5) must be >= --min-tokens (10)"), std::string::npos);
  o = {};
  o.keep_per_prompt = -1;
  EXPECT_NE(message(o).find("--keep-per-prompt"), std::string::npos);
  EXPECT_EQ(parse_distill_prefer("first"), DistillPrefer::kFirst);
  EXPECT_THROW(parse_distill_prefer("longest"), Error);
}

// ---- on the coin model ('4' or eos, 1/2 each)

class DistillTest : public ScratchTest {
 protected:
  void SetUp() override {
    ScratchTest::SetUp();
    cfg_ = tiny_config(dir_, "distill");
    tokenizer_ = data::load_tokenizer(cfg_.data.tokenizer);
    model_ = coin_model(cfg_, *tokenizer_);
    rewards::register_verifier("test_always", [](const rewards::RewardContext&) {
      struct Always : rewards::Verifier {
        std::string n = "test_always";
        const std::string& name() const override { return n; }
        double score(const rewards::Sample&) const override { return 1.0; }
      };
      return std::make_unique<Always>();
    });
  }

  // 6 prompts answered "4" (verified w.p. 1/4), 2 answered "44" (1/8).
  static std::vector<data::RlPrompt> prompts() {
    std::vector<data::RlPrompt> out;
    for (int i = 0; i < 8; ++i) {
      out.push_back(
          {str_cat("What is ", i, " + ", 4 - i % 4, "?"), i < 6 ? "4" : "44", "arithmetic", {}});
    }
    return out;
  }

  struct Run {
    DistillSummary summary;
    std::vector<DistillRecord> records;
    int64_t emits = 0;
  };
  Run run(const DistillOptions& o, const config::Config* cfg = nullptr) {
    Run r;
    r.summary = distill(model_, cfg ? *cfg : cfg_, *tokenizer_, prompts(), {}, o,
                        [&](const std::vector<DistillRecord>& recs) {
                          ++r.emits;
                          r.records.insert(r.records.end(), recs.begin(), recs.end());
                        });
    return r;
  }

  config::Config cfg_;
  std::unique_ptr<data::Tokenizer> tokenizer_;
  model::DeepseekV3ForCausalLM model_{nullptr};
};

TEST_F(DistillTest, KeepsOnlyVerifiedSamplesAsSftRecords) {
  DistillOptions o;
  o.samples_per_prompt = 8;
  o.batch_prompts = 3;  // 3 generate calls: 3 + 3 + 2 prompts
  o.keep_per_prompt = 0;
  o.seed = 1;
  const Run r = run(o);
  const auto& c = r.summary.counts;
  EXPECT_EQ(r.emits, 3);
  EXPECT_EQ(r.summary.prompts, 8);
  EXPECT_EQ(c.samples, 64);
  EXPECT_EQ(c.kept + rejected(c), c.samples);
  // 48 * 1/4 + 16 * 1/8 = 14 verified expected; every verified sample of a prompt is the same
  // text, so at most one survives dedupe.
  EXPECT_GT(c.verified, 4);
  EXPECT_LT(c.verified, 30);
  EXPECT_EQ(c.unverified, c.samples - c.verified);
  EXPECT_EQ(c.truncated + c.too_short + c.too_long + c.bad_format + c.over_keep, 0);
  EXPECT_EQ(c.duplicate, c.verified - c.kept);
  EXPECT_EQ(c.kept, r.summary.prompts_with_kept);
  EXPECT_EQ(static_cast<int64_t>(r.records.size()), c.kept);
  EXPECT_NEAR(r.summary.pass_at_1, static_cast<double>(c.verified) / 64.0, 1e-12);
  EXPECT_NEAR(r.summary.pass_at_k, static_cast<double>(c.kept) / 8.0, 1e-12);
  EXPECT_GT(r.summary.gen_tokens, 64);  // every completion has its eos, some a '4' too
  // The configured reward (accuracy 1.0 + format 0.1; format never holds here) is accuracy.
  ASSERT_EQ(r.summary.reward_components.size(), 2u);
  EXPECT_EQ(r.summary.reward_components[0].first, "accuracy");
  EXPECT_NEAR(r.summary.reward_components[0].second, r.summary.pass_at_1, 1e-12);
  EXPECT_EQ(r.summary.reward_components[1].second, 0.0);

  const auto all = prompts();
  std::set<std::string> seen_prompts;
  for (const auto& rec : r.records) {
    EXPECT_EQ(rec.response, rec.answer);  // the completion without its eos
    EXPECT_EQ(rec.num_tokens, static_cast<int64_t>(rec.answer.size()) + 1);
    EXPECT_DOUBLE_EQ(rec.reward, 1.0);
    EXPECT_TRUE(seen_prompts.insert(rec.prompt).second) << "one record per prompt";
    const auto sft = data::parse_sft_record(sft_line(rec), "line");
    ASSERT_EQ(sft.messages.size(), 2u);
    EXPECT_EQ(sft.messages[0].role, "user");
    EXPECT_EQ(sft.messages[0].content, rec.prompt);
    EXPECT_EQ(sft.messages[1].role, "assistant");
    EXPECT_EQ(sft.messages[1].content, rec.answer);
  }
  const auto j = r.summary.to_json();
  EXPECT_EQ(j.at("kept").get<int64_t>(), c.kept);
  EXPECT_EQ(j.at("rejected").at("duplicate").get<int64_t>(), c.duplicate);
  EXPECT_TRUE(j.contains("pass@8")) << j.dump();
  EXPECT_TRUE(j.contains("gen_tokens_per_s")) << j.dump();
}

TEST_F(DistillTest, FiltersCountTheirRejections) {
  DistillOptions o;
  o.samples_per_prompt = 8;
  o.seed = 2;
  o.max_tokens = 1;  // verified completions are "4"<eos> or "44"<eos>: all too long
  const Run too_long = run(o);
  EXPECT_GT(too_long.summary.counts.verified, 0);
  EXPECT_EQ(too_long.summary.counts.too_long, too_long.summary.counts.verified);
  EXPECT_EQ(too_long.summary.counts.kept, 0);
  EXPECT_TRUE(too_long.records.empty());

  o.max_tokens = 0;
  o.min_tokens = 3;  // "4"<eos> is too short; "44"<eos> (3 tokens) passes
  const Run too_short = run(o);
  const auto& c = too_short.summary.counts;
  EXPECT_GT(c.too_short, 0);
  for (const auto& rec : too_short.records) EXPECT_EQ(rec.answer, "44");
  EXPECT_EQ(c.kept + rejected(c), c.samples);
  // Same seed and batching, so the same samples: the verified count does not depend on filters.
  EXPECT_EQ(c.verified, too_long.summary.counts.verified);

  o.min_tokens = 0;
  o.require_format = true;  // no think block anywhere
  const Run format = run(o);
  EXPECT_EQ(format.summary.counts.bad_format, format.summary.counts.verified);
  EXPECT_EQ(format.summary.counts.kept, 0);
}

TEST_F(DistillTest, KeepPerPromptAndDedupeWithAnotherVerifier) {
  DistillOptions o;
  o.samples_per_prompt = 8;
  o.seed = 3;
  o.verifier = "test_always";  // not in rl.rewards: a standalone verifier from the registry
  o.keep_per_prompt = 2;
  const Run r = run(o);
  const auto& c = r.summary.counts;
  EXPECT_EQ(c.verified, 64);
  EXPECT_DOUBLE_EQ(r.summary.pass_at_1, 1.0);
  EXPECT_GT(c.duplicate, 0);  // "" (eos first) has probability 1/2
  EXPECT_GT(c.over_keep, 0);
  std::map<std::string, std::vector<std::string>> by_prompt;
  for (const auto& rec : r.records) by_prompt[rec.prompt].push_back(rec.response);
  EXPECT_EQ(by_prompt.size(), 8u);
  for (const auto& [prompt, responses] : by_prompt) {
    ASSERT_EQ(responses.size(), 2u) << prompt;
    EXPECT_NE(responses[0], responses[1]) << prompt;
    // Shortest first: the completions are 4...4, so shorter means fewer '4's.
    EXPECT_LT(responses[0].size(), responses[1].size()) << prompt;
  }
}

TEST_F(DistillTest, SeededRunsRepeatAndAccuracyWorksWithoutAConfiguredTerm) {
  DistillOptions o;
  o.samples_per_prompt = 4;
  o.batch_prompts = 8;
  o.keep_per_prompt = 0;
  o.verifier = "test_always";
  o.seed = 11;
  auto lines = [](const Run& r) {
    std::vector<std::string> out;
    for (const auto& rec : r.records) out.push_back(sft_line(rec));
    return out;
  };
  const Run a = run(o), b = run(o);
  EXPECT_EQ(lines(a), lines(b));
  o.seed = 12;
  EXPECT_NE(lines(run(o)), lines(a));

  // rl.rewards without accuracy: "verified" still means the accuracy verifier's 1.
  auto cfg = tiny_config(dir_, "distill", {"rl.rewards=[{name: format, weight: 1.0}]"});
  DistillOptions acc;
  acc.samples_per_prompt = 8;
  acc.seed = 1;
  acc.keep_per_prompt = 0;
  const Run with_acc = run(acc);
  const Run without = run(acc, &cfg);
  EXPECT_EQ(without.summary.counts.verified, with_acc.summary.counts.verified);
  EXPECT_EQ(lines(without).size(), lines(with_acc).size());
  ASSERT_EQ(without.summary.reward_components.size(), 1u);
  EXPECT_EQ(without.summary.reward_components[0].first, "format");
}

TEST_F(DistillTest, BadPromptsFailBeforeSampling) {
  auto bad = prompts();
  bad[5].task = "poetry";
  std::vector<std::string> where(bad.size());
  for (size_t i = 0; i < where.size(); ++i) where[i] = str_cat("p.jsonl:", i + 1);
  int64_t emits = 0;
  try {
    distill(model_, cfg_, *tokenizer_, bad, where, DistillOptions{}, [&](const auto&) { ++emits; });
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("p.jsonl:6: accuracy: unknown task \"poetry\""),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(emits, 0);
  DistillOptions o;
  o.verifier = "no_such_verifier";
  EXPECT_THROW(run(o), Error);
}

TEST_F(DistillTest, OutputTrainsWithSftAndBadInputLeavesNoFile) {
  // A training checkpoint of the coin model, then distill_file end to end.
  auto opt = optim::make_adamw(*model_, cfg_.optim);
  const std::string ckpt = ckpt::save_train_checkpoint(dir_ + "/coin", *model_, *opt, {}, 1);
  std::ofstream(dir_ + "/p.jsonl") << R"({"prompt": "2 + 2?", "answer": "4", "task": "arithmetic"})"
                                   << "\n\n"
                                   << R"({"prompt": "40 + 4?", "answer": "44", "task": ""})"
                                   << "\n";
  DistillOptions o;
  o.samples_per_prompt = 16;
  o.verifier = "test_always";
  o.keep_per_prompt = 3;
  const std::string out = dir_ + "/out/sft.jsonl";  // the directory is created
  const auto s = distill_file(cfg_, ckpt, dir_ + "/p.jsonl", out, o);
  EXPECT_EQ(s.prompts, 2);
  EXPECT_EQ(s.output, out);
  const auto recs = read_jsonl(out);
  ASSERT_EQ(static_cast<int64_t>(recs.size()), s.counts.kept);
  EXPECT_EQ(recs.size(), 6u);
  EXPECT_EQ(recs[3].at("task"), cfg_.data.task);  // empty task: data.task
  data::JsonlFile sft(out, data::RecordKind::kSft, false);
  EXPECT_EQ(sft.size(), 6);

  // `train.stage: sft` reads the file as it is.
  const auto r = train(tiny_config(
      dir_, "sft",
      {"train.stage=sft", "data.train_path=" + out, "train.steps=2", "train.micro_batch_size=2"}));
  EXPECT_EQ(r.steps, 2);

  // A bad line: the error names file:line, and neither the output nor a temporary is left.
  std::ofstream(dir_ + "/bad.jsonl") << R"({"prompt": "2 + 2?", "answer": "4", "task": "math"})"
                                     << "\n"
                                     << R"({"prompt": "x", "task": "math"})"
                                     << "\n";
  const std::string bad_out = dir_ + "/bad_out/sft.jsonl";
  try {
    distill_file(cfg_, ckpt, dir_ + "/bad.jsonl", bad_out, o);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.jsonl:2: missing string field \"answer\""),
              std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(dir_ + "/bad_out"));
}

// ---- through the binary

class DistillCliTest : public ScratchTest {
 protected:
  void SetUp() override {
    ScratchTest::SetUp();
    ::setenv("OMP_NUM_THREADS", "1", 1);  // the child does the same arithmetic as this process
  }
};

TEST_F(DistillCliTest, WritesSftFileAndSummaryAndBadLinesLeaveNoFile) {
  const auto cfg = tiny_config(dir_, "cli");
  auto tokenizer = data::load_tokenizer(cfg.data.tokenizer);
  auto model = coin_model(cfg, *tokenizer);
  auto opt = optim::make_adamw(*model, cfg.optim);
  const std::string ckpt = ckpt::save_train_checkpoint(dir_ + "/coin", *model, *opt, {}, 1);
  std::string prompts;
  for (int i = 0; i < 6; ++i) {
    prompts += str_cat(R"({"prompt": "What is )", i, R"( + )", 4 - i, R"(?", "answer": "4", )",
                       R"("task": "arithmetic"})", "\n");
  }
  moetron::testing::write_text(dir_ + "/p.jsonl", prompts);
  // args[5] is the input, args[7] the output.
  std::vector<std::string> args = {"distill", kTinyYaml, "--model", ckpt, "--input", "p.jsonl"};
  args.insert(args.end(), {"--output", "out/sft.jsonl", "-k", "8", "--batch-prompts", "4"});
  args.insert(args.end(), {"--keep-per-prompt", "1", "--seed", "5"});
  for (const auto& o : fast_overrides(dir_, "cli")) args.push_back(o);
  const auto r = moetron::testing::run_moetron(args, dir_);
  ASSERT_EQ(r.code, 0) << r.err;
  const auto summary = nlohmann::json::parse(r.out);  // exactly one JSON line
  const auto recs = read_jsonl(dir_ + "/out/sft.jsonl");
  EXPECT_EQ(summary.at("prompts").get<int64_t>(), 6);
  EXPECT_EQ(summary.at("samples").get<int64_t>(), 48);
  EXPECT_EQ(summary.at("kept").get<int64_t>(), static_cast<int64_t>(recs.size()));
  EXPECT_GT(summary.at("verified").get<int64_t>(), 0);
  EXPECT_EQ(summary.at("rejected").at("duplicate").get<int64_t>(),
            summary.at("verified").get<int64_t>() - summary.at("kept").get<int64_t>());
  EXPECT_TRUE(summary.contains("pass@8")) << r.out;
  for (const auto& rec : recs) {
    EXPECT_EQ(rec.at("response"), "4");
    data::parse_sft_record(rec.dump(), "out/sft.jsonl");
  }

  // The library with the same seed and batching writes the same records.
  DistillOptions o;
  o.samples_per_prompt = 8;
  o.batch_prompts = 4;
  o.seed = 5;
  std::vector<std::string> lines;
  distill(model, cfg, *tokenizer, data::read_rl_prompts(dir_ + "/p.jsonl", false), {}, o,
          [&](const std::vector<DistillRecord>& rs) {
            for (const auto& x : rs) lines.push_back(sft_line(x));
          });
  ASSERT_EQ(lines.size(), recs.size());
  for (size_t i = 0; i < lines.size(); ++i) EXPECT_EQ(nlohmann::json::parse(lines[i]), recs[i]);

  // A bad line: exit 2, file:line in the message, no output file, no temporary next to it.
  moetron::testing::write_text(dir_ + "/bad.jsonl", prompts + "{\"prompt\": \"x\"\n");
  args[5] = "bad.jsonl";
  args[7] = "bad_out/sft.jsonl";
  fs::create_directories(dir_ + "/bad_out");
  const auto bad = moetron::testing::run_moetron(args, dir_);
  EXPECT_EQ(bad.code, 2) << bad.err;
  EXPECT_NE(bad.err.find("bad.jsonl:7: invalid JSON"), std::string::npos) << bad.err;
  EXPECT_TRUE(fs::is_empty(dir_ + "/bad_out"));
  EXPECT_EQ(bad.out, "");
}

}  // namespace
}  // namespace moetron::train
