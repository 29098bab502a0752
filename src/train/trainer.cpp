// The pretraining / SFT loop: one optimizer step = grad_accum micro-batches; after the step the
// aux-loss-free bias update (SPEC 2.3); metrics, eval and checkpoints at step boundaries.
#include "moetron/train/trainer.h"

#include <torch/torch.h>

#include <cmath>
#include <optional>

#include "moetron/ckpt/train_checkpoint.h"
#include "moetron/config/loader.h"
#include "moetron/core/error.h"
#include "moetron/core/logging.h"
#include "moetron/core/run_dir.h"
#include "moetron/core/timer.h"
#include "moetron/data/loader.h"
#include "moetron/model/accounting.h"
#include "moetron/model/bias_update.h"
#include "moetron/model/model.h"
#include "moetron/optim/optimizer.h"
#include "moetron/optim/schedule.h"
#include "moetron/train/autocast.h"
#include "moetron/train/batch_tensors.h"
#include "moetron/train/metrics.h"
#include "session.h"

namespace moetron::train {
namespace {

// Rho-1 SLM (SPEC 6): keep the `ratio` fraction of the micro-batch's target tokens with the
// largest excess loss (current - reference); the others get no label. Returns the kept count.
int64_t select_tokens(model::DeepseekV3ForCausalLM& model, model::DeepseekV3ForCausalLM& ref,
                      BatchTensors& b, double ratio) {
  torch::NoGradGuard no_grad;
  auto cur = model->token_logprobs(b.input_ids, b.position_ids, b.segment_ids);
  auto base = ref->token_logprobs(b.input_ids, b.position_ids, b.segment_ids);
  auto targets = b.labels.narrow(1, 1, b.labels.size(1) - 1);
  auto valid = targets != data::kIgnoreLabel;
  const int64_t n_valid = valid.sum().item<int64_t>();
  if (n_valid == 0) return 0;
  const int64_t keep = std::max<int64_t>(1, static_cast<int64_t>(std::floor(ratio * n_valid)));
  auto excess = (base - cur).masked_fill(valid.logical_not(), -INFINITY).reshape(-1);
  auto top = std::get<1>(excess.topk(keep));
  auto selected = torch::zeros_like(excess, torch::kBool).index_fill(0, top, true);
  auto masked = targets.masked_fill(selected.view_as(targets).logical_not(), data::kIgnoreLabel);
  b.labels.narrow(1, 1, b.labels.size(1) - 1).copy_(masked);
  return keep;
}

}  // namespace

TrainResult train(const config::Config& cfg_in, const TrainOptions& options) {
  if (cfg_in.train.stage == config::Stage::kGrpo) return train_grpo(cfg_in, options);
  Stopwatch wall;
  Session session = open_session(cfg_in, options);
  const config::Config& cfg = session.cfg;
  const torch::Device device = session.device;
  const RunDir& run = session.run;
  const auto& resume_from = session.resume_from;
  auto& tokenizer = session.tokenizer;
  auto& model = session.model;
  auto& optimizer = session.optimizer;

  // SLM reference model (frozen).
  model::DeepseekV3ForCausalLM reference{nullptr};
  const bool slm = cfg.train.stage == config::Stage::kSft && cfg.sft.slm.ratio < 1.0;
  if (slm) reference = frozen_model(cfg, cfg.sft.slm.reference, device);

  // Data parallelism: every rank packs the same global micro-batch (world x micro_batch_size
  // rows) and trains on its own rows, so the loader state is the same on every rank and a run
  // at any world size sees the same data stream.
  const int64_t world = session.world(), rank = session.rank();
  const int64_t rows = cfg.train.micro_batch_size;
  data::BatchLoader loader(cfg.data, cfg.train.stage, *tokenizer, rows * world, cfg.data.seq_len,
                           cfg.data.shuffle_seed, data::Split::kTrain, chat_options(cfg));
  int64_t step = 0;
  int64_t bad_steps = 0;
  int64_t tokens_seen = 0;
  double resumed_loss = 0;
  if (resume_from) {
    auto state = load_checkpoint(session, *resume_from);
    step = state.step;
    loader.restore(state.loader_state);
    bad_steps = state.extra.value("bad_steps", int64_t{0});
    tokens_seen = state.extra.value("tokens_seen", int64_t{0});
    resumed_loss = state.extra.value("last_loss", 0.0);
    log::info("resumed from ", *resume_from, " at step ", step);
  }
  MetricsLog metrics(session.main_rank() ? run.metrics_path : std::string(), step);

  const auto flops = model::forward_flops_per_token(cfg, cfg.data.seq_len);
  const double peak = device_peak_flops(device);
  const bool bias_update = cfg.moe.bias_update_speed > 0 && cfg.moe.n_routed_experts &&
                           cfg.moe.topk_method == config::TopkMethod::kNoauxTc;
  TrainResult result;
  result.last_loss = resumed_loss;
  result.run_dir = run.root;
  if (resume_from) result.checkpoint = *resume_from;  // until a new one is written
  auto save = [&](int64_t at_step) {
    result.checkpoint = save_checkpoint(
        session, at_step, loader.state(),
        {{"bad_steps", bad_steps}, {"tokens_seen", tokens_seen}, {"last_loss", result.last_loss}});
  };

  const int64_t start_step = step;
  int64_t tokens_this_run = 0;
  Stopwatch train_clock;
  while (step < cfg.train.steps) {
    stop_if_interrupted(session, step, [&] {
      save(step);
      return result.checkpoint;
    });
    Stopwatch step_clock;
    const double lr = optim::lr_at(cfg.optim, step, cfg.train.steps);
    optim::set_lr(*optimizer, lr);
    optimizer->zero_grad();
    int64_t tokens = 0, kept = 0, targets = 0;
    torch::Tensor counts;
    // Loss parts summed on the device: one host sync per step instead of four per micro-batch.
    auto parts = torch::zeros({4}, torch::TensorOptions().dtype(torch::kDouble).device(device));
    const double inv = 1.0 / static_cast<double>(cfg.train.grad_accum_steps);
    for (int64_t micro = 0; micro < cfg.train.grad_accum_steps; ++micro) {
      auto batch = to_tensors(loader.next(), device, rank * rows, rows);
      targets += batch.tokens;
      if (slm) kept += select_tokens(model, reference, batch, cfg.sft.slm.ratio);
      model::ForwardOutput out;
      {
        AutocastGuard autocast(device, cfg.train.dtype);
        out = model->forward(batch.input_ids, batch.labels, batch.position_ids, batch.segment_ids);
      }
      (out.loss * inv).backward();
      auto zero = torch::zeros({}, parts.options());
      auto part = [&](const torch::Tensor& t) {
        return t.defined() ? t.detach().to(parts.options()) : zero;
      };
      parts += torch::stack({part(out.loss), part(out.main_loss), part(out.mtp_loss),
                             part(out.balance_loss)}) *
               inv;
      counts = counts.defined() ? counts + out.expert_counts_ME : out.expert_counts_ME;
      tokens += batch.input_ids.numel();
    }
    parts = parts.cpu();
    // The objective is the mean of the ranks' losses: gradients and reported losses alike.
    session.dp->all_reduce_gradients();
    const auto sums =
        session.dp->sum({parts[0].item<double>(), parts[1].item<double>(), parts[2].item<double>(),
                         parts[3].item<double>(), static_cast<double>(tokens)},
                        "loss");
    const double inv_world = 1.0 / static_cast<double>(world);
    const double loss = sums[0] * inv_world, main_loss = sums[1] * inv_world;
    const double mtp_loss = sums[2] * inv_world, balance = sums[3] * inv_world;
    tokens = static_cast<int64_t>(sums[4]);
    if (counts.defined()) counts = session.dp->global_counts(counts);
    const auto clip = session.dp->clip_grad_norm(cfg.optim.grad_clip);
    const bool finite = std::isfinite(loss) && clip.finite;
    if (finite) {
      optimizer->step();
      if (bias_update && counts.defined()) {
        model::update_expert_bias(model, counts, cfg.moe.bias_update_speed);
      }
      bad_steps = 0;
    } else {
      optimizer->zero_grad();
      ++bad_steps;
      log::warn("step ", step + 1, ": non-finite loss or gradient (loss ", loss, ", grad norm ",
                clip.total_norm, "); step skipped (", bad_steps, " in a row)");
      if (bad_steps >= cfg.train.max_bad_steps) {
        throw Error(str_cat(bad_steps,
                            " consecutive steps with a non-finite loss or gradient "
                            "(last at step ",
                            step + 1,
                            "); lower optim.lr, check the data, or raise "
                            "train.max_bad_steps"));
      }
    }
    ++step;
    tokens_seen += tokens;
    tokens_this_run += tokens;
    result.last_loss = loss;

    const double dt = step_clock.seconds();
    const double tps = static_cast<double>(tokens) / dt;
    nlohmann::json rec{{"step", step},
                       {"loss", loss},
                       {"main_loss", main_loss},
                       {"mtp_loss", mtp_loss},
                       {"balance_loss", balance},
                       {"grad_norm", clip.total_norm},
                       {"lr", lr},
                       {"tokens", tokens},
                       {"tokens_seen", tokens_seen},
                       {"tokens_per_s", tps},
                       {"step_time_s", dt},
                       {"skipped", !finite}};
    if (slm) rec["slm_kept_fraction"] = targets > 0 ? double(kept) / double(targets) : 0.0;
    if (peak > 0) rec["mfu"] = 3 * flops.with_mtp * tps / peak;
    if (counts.defined()) {
      nlohmann::json load = nlohmann::json::array();
      for (const auto& l : expert_load(counts)) {
        load.push_back({{"max_over_mean", l.max_over_mean}, {"cv", l.cv}});
      }
      rec["expert_load"] = load;
      nlohmann::json bias = nlohmann::json::array();
      for (auto& moe : model->moe_layers()) {
        const auto& b = moe->gate->e_score_correction_bias;
        if (b.defined()) bias.push_back(b.norm().item<double>());
      }
      rec["bias_norm"] = bias;
    }
    metrics.write(rec);
    const bool log_step =
        step == start_step + 1 || step % cfg.log.every == 0 || step == cfg.train.steps;
    if (log_step && session.main_rank()) {
      const double elapsed = train_clock.seconds();
      StepLine line{step,
                    cfg.train.steps,
                    loss,
                    clip.total_norm,
                    lr,
                    static_cast<double>(tokens_this_run) / elapsed,
                    peak > 0 ? 3 * flops.with_mtp * tps / peak : -1,
                    elapsed / double(step - start_step) * double(cfg.train.steps - step)};
      log::info(format_step_line(line));
    }
    evaluate_and_save(step, cfg, model, *tokenizer, metrics, result, save);
  }
  if (start_step >= cfg.train.steps) {
    log::info("already at step ", step, " of ", cfg.train.steps, "; evaluating only");
    result.eval = evaluate(model, cfg, *tokenizer);
  }
  result.steps = step;
  result.seconds = wall.seconds();
  result.tokens_per_s =
      tokens_this_run > 0 ? static_cast<double>(tokens_this_run) / train_clock.seconds() : 0;
  return result;
}

}  // namespace moetron::train
