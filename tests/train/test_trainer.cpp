// The pretrain/SFT trainer in process: bit-exact resume (pretrain and SFT, grad accumulation,
// mid-epoch and across an epoch boundary), the NaN/Inf guard, SLM token selection, run-directory
// ownership, init_from, evaluation, and the content of metrics.jsonl.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>

#include "moetron/ckpt/train_checkpoint.h"
#include "moetron/data/loader.h"
#include "moetron/data/tokenizer.h"
#include "moetron/model/model.h"
#include "moetron/optim/schedule.h"
#include "moetron/train/batch_tensors.h"
#include "moetron/train/evaluate.h"
#include "moetron/train/pipeline.h"
#include "moetron/train/trainer.h"
#include "train_test_util.h"

namespace moetron::train {
namespace {

using namespace moetron::train::testing;

class TrainerTest : public ScratchTest {};

// Exact resume. Stopping a run in process at step k is only possible through the signal flag,
// which a thread would set at a racy step, and a run with train.steps = k would follow another
// cosine schedule. So the straight run (train.steps = N) saves every k steps; its step-k
// checkpoint (and a `latest` naming it) is copied into a fresh run directory, which is trained
// to N with the identical config (only log.name differs) via ckpt.resume: auto. The resumed
// run's step-N checkpoint (model and AdamW state), loader state and its metrics for steps
// k+1..N must equal the straight run's bit for bit. Periodic eval runs in both, so it must not
// disturb anything either. The test's process-level twin (real SIGTERM, same run directory) is
// in test_trainer_cli.cpp.
void expect_exact_resume(const std::string& dir, const std::vector<std::string>& extra, int64_t k,
                         int64_t n) {
  std::vector<std::string> common = extra;
  for (auto s :
       {str_cat("train.steps=", n), str_cat("ckpt.save_every=", k), std::string("ckpt.keep_last=0"),
        std::string("train.grad_accum_steps=2"), std::string("train.eval_every=2")}) {
    common.push_back(s);
  }
  const auto straight_cfg = tiny_config(dir, "straight", common);
  const auto resumed_cfg = tiny_config(dir, "resumed", common);

  const TrainResult straight = train(straight_cfg);
  ASSERT_EQ(straight.steps, n);
  const std::string straight_k = str_cat(dir, "/straight/checkpoints/step-", k);
  const std::string straight_n = str_cat(dir, "/straight/checkpoints/step-", n);
  ASSERT_TRUE(fs::exists(straight_k + "/manifest.json"));
  ASSERT_EQ(straight.checkpoint, straight_n);

  // The resume point is inside the first epoch and the data wraps into a second epoch before
  // step N, so both the mid-epoch position and the reshuffle at the boundary are restored.
  const auto at_k = loader_state(straight_k);
  const auto at_n = loader_state(straight_n);
  EXPECT_EQ(at_k.at("epoch").get<int64_t>(), 0) << at_k.dump();
  EXPECT_GT(at_k.at("cursor").get<int64_t>(), 0) << at_k.dump();
  EXPECT_GE(at_n.at("epoch").get<int64_t>(), 1) << at_n.dump();

  const std::string resumed_ckpts = dir + "/resumed/checkpoints";
  fs::create_directories(resumed_ckpts);
  fs::copy(straight_k, str_cat(resumed_ckpts, "/step-", k), fs::copy_options::recursive);
  write_file_atomic(resumed_ckpts + "/latest", str_cat("step-", k, "\n"));

  const TrainResult resumed = train(resumed_cfg);
  ASSERT_EQ(resumed.steps, n);
  ASSERT_EQ(resumed.checkpoint, str_cat(resumed_ckpts, "/step-", n));
  expect_same_checkpoint(straight_n, resumed.checkpoint);
  EXPECT_EQ(loader_state(resumed.checkpoint), at_n);
  EXPECT_EQ(trainer_state(resumed.checkpoint).at("extra"), trainer_state(straight_n).at("extra"));
  EXPECT_EQ(resumed.last_loss, straight.last_loss);
  EXPECT_EQ(resumed.eval.loss, straight.eval.loss);
  EXPECT_EQ(resumed.eval.correct, straight.eval.correct);

  // Metrics: the resumed run wrote exactly steps k+1..N, equal to the straight run's.
  const auto a = step_records(dir + "/straight/metrics.jsonl");
  const auto b = step_records(dir + "/resumed/metrics.jsonl");
  ASSERT_EQ(static_cast<int64_t>(a.size()), n);
  ASSERT_EQ(static_cast<int64_t>(b.size()), n - k);
  for (int64_t i = 0; i < n - k; ++i) {
    EXPECT_EQ(without_timing(b[i]), without_timing(a[k + i])) << "step " << k + i + 1;
  }
  const auto ea = eval_records(dir + "/straight/metrics.jsonl");
  const auto eb = eval_records(dir + "/resumed/metrics.jsonl");
  ASSERT_FALSE(eb.empty());
  ASSERT_GE(ea.size(), eb.size());
  for (size_t i = 0; i < eb.size(); ++i) EXPECT_EQ(eb[i], ea[ea.size() - eb.size() + i]);
}

TEST_F(TrainerTest, PretrainResumeIsBitExact) {
  // 6 arithmetic documents are fewer tokens than 8 steps of 2 x 4 x 64: the epoch ends
  // after step 3 and before step 8 (asserted through the loader state above).
  expect_exact_resume(dir_, {"train.stage=pretrain", "data.task_size=6"}, 3, 8);
}

TEST_F(TrainerTest, SftResumeIsBitExact) {
  expect_exact_resume(dir_, {"train.stage=sft", "data.task_size=40"}, 3, 8);
}

// Rerunning a finished run (resume: auto) trains nothing, logs nothing new, reports the
// checkpoint it stands on and evaluates it; a shorter train.steps than the checkpoint's step
// does the same instead of training past the end.
TEST_F(TrainerTest, RerunOfAFinishedRunOnlyEvaluates) {
  const auto cfg = tiny_config(dir_, "done", {"train.steps=3"});
  const TrainResult first = train(cfg);
  ASSERT_EQ(first.checkpoint, checkpoint("done", 3));
  const std::string metrics_before = read_text_file(run_path("done") + "/metrics.jsonl");

  const TrainResult again = train(cfg);
  EXPECT_EQ(again.steps, 3);
  EXPECT_EQ(again.checkpoint, first.checkpoint);
  EXPECT_EQ(again.eval.loss, first.eval.loss);
  EXPECT_EQ(again.eval.total, first.eval.total);
  EXPECT_EQ(read_text_file(run_path("done") + "/metrics.jsonl"), metrics_before);

  const TrainResult shorter =
      train(tiny_config(dir_, "shorter", {"train.steps=2"}), TrainOptions{first.checkpoint});
  EXPECT_EQ(shorter.steps, 3);
  EXPECT_EQ(shorter.checkpoint, first.checkpoint);
  EXPECT_EQ(shorter.eval.loss, first.eval.loss);
}

// NaN/Inf guard with a real trigger: lr = 1e30 (constant, no warmup) throws the weights to
// ~1e30 in one step, after which the forward pass overflows.
TEST_F(TrainerTest, NanGuardStopsAfterConsecutiveBadSteps) {
  const std::vector<std::string> blowup = {
      "optim.lr=1e30",  "optim.min_lr=1e30", "optim.schedule=constant", "optim.warmup_steps=0",
      "train.steps=10", "ckpt.save_every=1", "ckpt.keep_last=0"};
  auto stop = blowup;
  stop.push_back("train.max_bad_steps=3");
  const auto cfg = tiny_config(dir_, "stop", stop);
  std::string message;
  try {
    train(cfg);
    FAIL() << "a run whose loss becomes non-finite finished";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kRuntime);
    message = e.what();
  }
  const auto recs = step_records(dir_ + "/stop/metrics.jsonl");
  int64_t first_bad = -1;
  for (const auto& r : recs) {
    if (r.at("skipped").get<bool>()) {
      first_bad = r.at("step").get<int64_t>();
      break;
    }
  }
  ASSERT_GT(first_bad, 1) << "the first step should be finite; records: " << recs.size();
  // Steps first_bad and first_bad+1 were logged as skipped; the third bad one stopped the run.
  ASSERT_EQ(static_cast<int64_t>(recs.size()), first_bad + 1);
  EXPECT_TRUE(recs.back().at("skipped").get<bool>());
  EXPECT_NE(message.find("3 consecutive steps"), std::string::npos) << message;
  EXPECT_NE(message.find(str_cat("last at step ", first_bad + 2, ")")), std::string::npos)
      << message;
  EXPECT_NE(message.find("train.max_bad_steps"), std::string::npos) << message;

  // With room to continue, the run finishes and logs every non-finite step as skipped; a
  // skipped step changes neither the model nor the optimizer state.
  auto go_on = blowup;
  go_on.push_back("train.max_bad_steps=100");
  go_on.push_back("train.steps=6");
  const auto cfg2 = tiny_config(dir_, "go_on", go_on);
  const TrainResult r = train(cfg2);
  EXPECT_EQ(r.steps, 6);
  const auto recs2 = step_records(dir_ + "/go_on/metrics.jsonl");
  ASSERT_EQ(recs2.size(), 6u);
  int64_t first_bad2 = -1;
  for (const auto& rec : recs2) {
    const bool skipped = rec.at("skipped").get<bool>();
    if (skipped && first_bad2 < 0) first_bad2 = rec.at("step").get<int64_t>();
    // Once the weights are huge every later step is bad too.
    EXPECT_EQ(skipped, first_bad2 > 0) << rec.dump();
    if (!skipped) {
      EXPECT_TRUE(std::isfinite(rec.at("loss").get<double>())) << rec.dump();
    }
  }
  ASSERT_GT(first_bad2, 1);
  ASSERT_LT(first_bad2, 6);
  for (int64_t s = first_bad2; s <= 6; ++s) {
    expect_same_checkpoint(checkpoint("go_on", first_bad2 - 1), checkpoint("go_on", s));
  }
}

// The exact fraction the floor rule gives on the trainer's own micro-batches: per micro-batch
// max(1, floor(ratio * targets)) of its target tokens, summed over the step.
std::vector<double> expected_slm_fractions(const config::Config& cfg, double ratio) {
  auto tokenizer = data::load_tokenizer(cfg.data.tokenizer);
  data::BatchLoader loader(cfg.data, cfg.train.stage, *tokenizer, cfg.train.micro_batch_size,
                           cfg.data.seq_len, cfg.data.shuffle_seed, data::Split::kTrain,
                           chat_options(cfg));
  std::vector<double> out;
  for (int64_t s = 0; s < cfg.train.steps; ++s) {
    int64_t kept = 0, targets = 0;
    for (int64_t m = 0; m < cfg.train.grad_accum_steps; ++m) {
      const int64_t n = loader.next().num_target_tokens;
      targets += n;
      if (n > 0) kept += std::max<int64_t>(1, static_cast<int64_t>(std::floor(ratio * n)));
    }
    out.push_back(static_cast<double>(kept) / static_cast<double>(targets));
  }
  return out;
}

TEST_F(TrainerTest, SlmKeepsTheRatioOfTokensAgainstAReference) {
  train(tiny_config(dir_, "ref", {"train.stage=sft", "train.steps=2"}));
  const auto cfg = tiny_config(
      dir_, "slm",
      {"train.stage=sft", "train.steps=3", "train.grad_accum_steps=2", "sft.slm.ratio=0.5",
       "sft.slm.reference=" + run_path("ref"), "train.init_from=" + run_path("ref")});
  const TrainResult r = train(cfg);
  EXPECT_EQ(r.steps, 3);
  const auto recs = step_records(dir_ + "/slm/metrics.jsonl");
  const auto expected = expected_slm_fractions(cfg, 0.5);
  ASSERT_EQ(recs.size(), expected.size());
  for (size_t i = 0; i < recs.size(); ++i) {
    ASSERT_TRUE(recs[i].contains("slm_kept_fraction")) << recs[i].dump();
    const double got = recs[i].at("slm_kept_fraction").get<double>();
    EXPECT_DOUBLE_EQ(got, expected[i]) << "step " << i + 1;
    EXPECT_GT(got, 0.45);
    EXPECT_LE(got, 0.5);
    EXPECT_TRUE(std::isfinite(recs[i].at("loss").get<double>()));
    EXPECT_FALSE(recs[i].at("skipped").get<bool>());
  }
  // Plain SFT logs no SLM fraction.
  for (const auto& rec : step_records(dir_ + "/ref/metrics.jsonl")) {
    EXPECT_FALSE(rec.contains("slm_kept_fraction"));
  }
}

TEST_F(TrainerTest, SlmWithoutReferenceIsAConfigError) {
  try {
    train(tiny_config(dir_, "noref", {"train.stage=sft", "sft.slm.ratio=0.5"}));
    FAIL() << "SLM without a reference model was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_NE(std::string(e.what()).find("sft.slm.reference"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(run_path("noref")));
}

TEST_F(TrainerTest, RunDirectoryOfAnotherConfigIsRefusedUntouched) {
  train(tiny_config(dir_, "own", {"train.steps=2", "ckpt.save_every=1", "ckpt.keep_last=0"}));
  const auto before = snapshot_tree(run_path("own"));
  ASSERT_TRUE(before.count("checkpoints/step-1/model.safetensors"));
  ASSERT_TRUE(before.count("metrics.jsonl"));
  try {
    train(tiny_config(dir_, "own",
                      {"train.steps=2", "ckpt.save_every=1", "ckpt.keep_last=0", "optim.lr=2e-3",
                       "ckpt.resume=none"}));
    FAIL() << "a run with another config took over the run directory";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_NE(std::string(e.what()).find(run_path("own")), std::string::npos) << e.what();
  }
  EXPECT_EQ(snapshot_tree(run_path("own")), before);
}

// init_from, checked on the first step: its logged main loss is the loss of the first SFT
// micro-batch under the pretrain checkpoint's weights (computed here independently), and a
// run without init_from logs another one.
TEST_F(TrainerTest, InitFromLoadsThePretrainWeights) {
  train(tiny_config(dir_, "pre", {"train.steps=3"}));
  const std::vector<std::string> sft = {"train.stage=sft", "train.steps=1", "optim.warmup_steps=0"};
  auto with_init = sft;
  with_init.push_back("train.init_from=" + run_path("pre"));
  const auto cfg = tiny_config(dir_, "sft", with_init);
  train(cfg);
  train(tiny_config(dir_, "scratch", sft));
  const double got = step_records(dir_ + "/sft/metrics.jsonl").at(0).at("main_loss").get<double>();
  const double scratch =
      step_records(dir_ + "/scratch/metrics.jsonl").at(0).at("main_loss").get<double>();

  torch::manual_seed(cfg.train.seed + 1);  // any seed: every weight is overwritten
  model::DeepseekV3ForCausalLM model(cfg);
  load_model_weights(run_path("pre"), model);
  model->train();
  auto tokenizer = data::load_tokenizer(cfg.data.tokenizer);
  data::BatchLoader loader(cfg.data, cfg.train.stage, *tokenizer, cfg.train.micro_batch_size,
                           cfg.data.seq_len, cfg.data.shuffle_seed, data::Split::kTrain,
                           chat_options(cfg));
  auto b = to_tensors(loader.next(), torch::kCPU);
  double expected = 0;
  {
    torch::NoGradGuard no_grad;
    expected = model->forward(b.input_ids, b.labels, b.position_ids, b.segment_ids)
                   .main_loss.item<double>();
  }
  EXPECT_DOUBLE_EQ(got, expected);
  EXPECT_GT(std::abs(scratch - expected), 1e-3) << "the check cannot tell init_from apart";
}

TEST_F(TrainerTest, InitFromAnotherModelListsTheNames) {
  train(tiny_config(dir_, "pre", {"train.steps=2"}));
  const auto cfg = tiny_config(dir_, "sft2",
                               {"train.stage=sft", "train.steps=1", "optim.warmup_steps=0",
                                "model.num_hidden_layers=2", "train.init_from=" + run_path("pre")});
  std::string message;
  try {
    train(cfg);
    FAIL() << "weights of a 3-layer model loaded into a 2-layer one";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    message = e.what();
  }
  // The expected lists, from the checkpoint's and the model's own names.
  const auto saved =
      ckpt::load_safetensors(resolve_checkpoint(run_path("pre")) + "/model.safetensors");
  model::DeepseekV3ForCausalLM model(cfg);
  std::map<std::string, torch::Tensor> own;
  for (auto& p : model->named_parameters()) own[p.key()] = p.value();
  for (auto& b : model->named_buffers()) own[b.key()] = b.value();
  int64_t unexpected = 0, missing = 0;
  for (const auto& [name, t] : saved) {
    if (own.count(name)) continue;
    ++unexpected;
    EXPECT_NE(message.find(" " + name), std::string::npos) << name;
  }
  for (const auto& [name, t] : own) {
    if (saved.count(name)) continue;
    ++missing;
    EXPECT_NE(message.find(" " + name), std::string::npos) << name;
  }
  ASSERT_GT(unexpected + missing, 0);
  if (unexpected > 0) {
    EXPECT_NE(message.find(str_cat("in the checkpoint but not in the model (", unexpected, ")")),
              std::string::npos)
        << message.substr(0, 300);
  }
  if (missing > 0) {
    EXPECT_NE(message.find(str_cat("missing in the checkpoint (", missing, ")")), std::string::npos)
        << message.substr(0, 300);
  }
}

TEST_F(TrainerTest, EvaluateMatchesTheTrainersFinalEval) {
  const auto cfg = tiny_config(dir_, "ev", {"train.steps=2", "train.eval_batches=2"});
  const TrainResult r = train(cfg);

  torch::manual_seed(cfg.train.seed);
  model::DeepseekV3ForCausalLM model(cfg);
  load_model_weights(run_path("ev"), model);
  model->train();
  auto tokenizer = data::load_tokenizer(cfg.data.tokenizer);
  const EvalResult e = evaluate(model, cfg, *tokenizer);
  EXPECT_TRUE(model->is_training()) << "evaluate must restore training mode";
  EXPECT_EQ(e.total, cfg.train.eval_batches * cfg.train.micro_batch_size);
  EXPECT_GT(e.loss_tokens, 0);
  EXPECT_TRUE(std::isfinite(e.loss));
  EXPECT_GT(e.loss, 0);
  EXPECT_LE(e.correct, e.total);
  EXPECT_DOUBLE_EQ(e.accuracy, static_cast<double>(e.correct) / static_cast<double>(e.total));

  // The trainer's final eval was of the weights it saved.
  EXPECT_EQ(e.loss, r.eval.loss);
  EXPECT_EQ(e.loss_tokens, r.eval.loss_tokens);
  EXPECT_EQ(e.correct, r.eval.correct);
  const auto evals = eval_records(dir_ + "/ev/metrics.jsonl");
  ASSERT_EQ(evals.size(), 1u);
  EXPECT_EQ(evals[0].at("step").get<int64_t>(), 2);
  EXPECT_EQ(evals[0].at("eval_loss").get<double>(), e.loss);
  EXPECT_EQ(evals[0].at("eval_total").get<int64_t>(), e.total);
}

// train.eval_samples: pass@1 over k samples per prompt, reproducible (fixed seed), recorded and
// tabled; with top-k 1 every sample is the argmax, so it equals greedy accuracy.
TEST_F(TrainerTest, EvaluateSampledPassAtOne) {
  auto cfg = tiny_config(dir_, "ev_sampled",
                         {"train.steps=2", "train.eval_batches=1", "train.eval_samples=3"});
  const TrainResult r = train(cfg);
  EXPECT_EQ(r.eval.samples, 3);
  const auto evals = eval_records(dir_ + "/ev_sampled/metrics.jsonl");
  ASSERT_EQ(evals.size(), 1u);
  EXPECT_EQ(evals[0].at("eval_samples").get<int64_t>(), 3);
  EXPECT_EQ(evals[0].at("eval_pass@1").get<double>(), r.eval.sampled_pass1);

  torch::manual_seed(cfg.train.seed);
  model::DeepseekV3ForCausalLM model(cfg);
  load_model_weights(run_path("ev_sampled"), model);
  auto tokenizer = data::load_tokenizer(cfg.data.tokenizer);
  const EvalResult a = evaluate(model, cfg, *tokenizer), b = evaluate(model, cfg, *tokenizer);
  EXPECT_EQ(a.sampled_pass1, b.sampled_pass1);
  EXPECT_EQ(a.sampled_pass1, r.eval.sampled_pass1);
  EXPECT_GE(a.sampled_pass1, 0.0);
  EXPECT_LE(a.sampled_pass1, 1.0);

  cfg.rl.top_k = 1;
  const EvalResult argmax = evaluate(model, cfg, *tokenizer);
  EXPECT_EQ(argmax.sampled_pass1, argmax.accuracy);

  StageResult stage{"sft", r};
  const auto table = format_stage_table({stage});
  EXPECT_NE(table.find("pass@1 (3 samples)"), std::string::npos) << table;
  cfg.train.eval_samples = 0;
  EXPECT_EQ(evaluate(model, cfg, *tokenizer).samples, 0);
}

// metrics.jsonl: one record per step with the documented keys, the scheduled lr, one
// expert-load entry per MoE layer (main + MTP), and bias norms that move only when the
// aux-loss-free update is on.
void check_metrics(const config::Config& cfg, const std::string& path, bool bias_moves) {
  const auto recs = step_records(path);
  ASSERT_EQ(static_cast<int64_t>(recs.size()), cfg.train.steps);
  const size_t moe_layers =
      static_cast<size_t>(cfg.model.num_hidden_layers - cfg.moe.first_k_dense_replace +
                          cfg.mtp.num_nextn_predict_layers);
  const int64_t tokens_per_step =
      cfg.train.grad_accum_steps * cfg.train.micro_batch_size * cfg.data.seq_len;
  for (int64_t i = 0; i < cfg.train.steps; ++i) {
    const auto& r = recs[static_cast<size_t>(i)];
    SCOPED_TRACE(r.dump());
    for (const char* key :
         {"step", "loss", "main_loss", "mtp_loss", "balance_loss", "grad_norm", "lr", "tokens",
          "tokens_seen", "tokens_per_s", "step_time_s", "skipped", "expert_load", "bias_norm"}) {
      EXPECT_TRUE(r.contains(key)) << key;
    }
    EXPECT_EQ(r.at("step").get<int64_t>(), i + 1);
    EXPECT_TRUE(std::isfinite(r.at("loss").get<double>()));
    EXPECT_GT(r.at("grad_norm").get<double>(), 0);
    EXPECT_GT(r.at("tokens_per_s").get<double>(), 0);
    EXPECT_EQ(r.at("lr").get<double>(), optim::lr_at(cfg.optim, i, cfg.train.steps));
    EXPECT_EQ(r.at("tokens").get<int64_t>(), tokens_per_step);
    EXPECT_EQ(r.at("tokens_seen").get<int64_t>(), (i + 1) * tokens_per_step);
    EXPECT_FALSE(r.at("skipped").get<bool>());
    ASSERT_EQ(r.at("expert_load").size(), moe_layers);
    for (const auto& l : r.at("expert_load")) {
      EXPECT_GE(l.at("max_over_mean").get<double>(), 1.0);
      EXPECT_GE(l.at("cv").get<double>(), 0.0);
    }
    ASSERT_EQ(r.at("bias_norm").size(), moe_layers);
    for (const auto& b : r.at("bias_norm")) {
      if (bias_moves) {
        EXPECT_GT(b.get<double>(), 0);
      } else {
        EXPECT_EQ(b.get<double>(), 0);
      }
    }
  }
  if (bias_moves) {
    EXPECT_NE(recs.front().at("bias_norm"), recs.back().at("bias_norm"));
  }
  // Eval records at every eval_every steps (and the last).
  const auto evals = eval_records(path);
  ASSERT_EQ(static_cast<int64_t>(evals.size()), cfg.train.steps / cfg.train.eval_every);
  for (size_t i = 0; i < evals.size(); ++i) {
    EXPECT_EQ(evals[i].at("step").get<int64_t>(),
              static_cast<int64_t>(i + 1) * cfg.train.eval_every);
    EXPECT_GT(evals[i].at("eval_tokens").get<int64_t>(), 0);
    EXPECT_EQ(evals[i].at("eval_total").get<int64_t>(),
              cfg.train.eval_batches * cfg.train.micro_batch_size);
  }
}

TEST_F(TrainerTest, MetricsRecordsAreComplete) {
  const std::vector<std::string> common = {"train.steps=4", "train.eval_every=2",
                                           "train.grad_accum_steps=2"};
  auto moving = common;
  moving.push_back("moe.bias_update_speed=0.01");
  const auto cfg = tiny_config(dir_, "bias", moving);
  train(cfg);
  check_metrics(cfg, dir_ + "/bias/metrics.jsonl", true);
  auto fixed = common;
  fixed.push_back("moe.bias_update_speed=0");
  const auto cfg0 = tiny_config(dir_, "nobias", fixed);
  train(cfg0);
  check_metrics(cfg0, dir_ + "/nobias/metrics.jsonl", false);
}

}  // namespace
}  // namespace moetron::train
