// The GRPO stage (SPEC 5.6): each step samples G completions for each of rl.prompts_per_step
// prompts, scores them with the configured verifiers, turns rewards into group-relative
// advantages, and runs rl.ppo_epochs passes of clipped-ratio updates over the rollouts in
// mini-batches (one optimizer step each) of micro-batches (gradient accumulation).
//
// Batch hierarchy: prompts_per_step x num_generations completions per step
//   -> mini_batch_size completions per optimizer update
//   -> micro_batch_size completions per forward/backward.
// config::validate checks that each level divides the one above it.
#include <torch/torch.h>

#include <unistd.h>
#include <algorithm>
#include <cmath>
#include <fstream>
#include <numeric>

#include "moetron/ckpt/train_checkpoint.h"
#include "moetron/config/loader.h"
#include "moetron/core/error.h"
#include "moetron/core/logging.h"
#include "moetron/core/timer.h"
#include "moetron/data/chat_template.h"
#include "moetron/data/dataset.h"
#include "moetron/data/loader.h"
#include "moetron/data/tasks.h"
#include "moetron/dist/env.h"
#include "moetron/optim/optimizer.h"
#include "moetron/optim/schedule.h"
#include "moetron/rewards/reward.h"
#include "moetron/rl/generate.h"
#include "moetron/rl/grpo.h"
#include "moetron/train/autocast.h"
#include "moetron/train/batch_tensors.h"
#include "moetron/train/metrics.h"
#include "moetron/train/rollout.h"
#include "session.h"

#if __has_include(<c10/cuda/CUDACachingAllocator.h>)
#include <c10/cuda/CUDACachingAllocator.h>
#define MOETRON_CUDA_MEMORY_STATS 1
#endif

namespace moetron::train {
namespace {

// Positions per chunk of the vocabulary projection in token_logprobs (x the micro-batch rows).
constexpr int64_t kLogprobChunk = 256;

// The RL prompts: data.train_path (JSONL {"prompt","answer","task"}) or the built-in task's.
std::vector<data::RlPrompt> load_rl_prompts(const config::Config& cfg) {
  if (!cfg.data.train_path.empty()) {
    auto prompts = data::read_rl_prompts(cfg.data.train_path, cfg.data.skip_bad_lines);
    for (auto& p : prompts) {
      if (p.task.empty()) p.task = cfg.data.task;
    }
    return prompts;
  }
  auto task = data::generate_task_data(cfg.data.task, data::task_options(cfg));
  std::vector<data::RlPrompt> prompts;
  for (size_t i = 0; i < task.rl.size(); ++i) {
    prompts.push_back(
        data::parse_rl_record(task.rl[i], str_cat("<built-in ", cfg.data.task, " rl>:", i + 1)));
  }
  return prompts;
}

// Prompts in the data loader's seeded per-epoch order (data::shuffled_order); {epoch, cursor}
// is the resumable state.
class PromptStream {
 public:
  PromptStream(int64_t n, int64_t seed)
      : n_(n), seed_(seed), order_(data::shuffled_order(n, seed, 0)) {}
  int64_t next() {
    if (cursor_ == n_) {
      ++epoch_;
      cursor_ = 0;
      order_ = data::shuffled_order(n_, seed_, epoch_);
    }
    return order_[cursor_++];
  }
  nlohmann::json state() const { return {{"epoch", epoch_}, {"cursor", cursor_}}; }
  void restore(const nlohmann::json& s) {
    epoch_ = s.at("epoch").get<int64_t>();
    order_ = data::shuffled_order(n_, seed_, epoch_);
    cursor_ = std::clamp<int64_t>(s.at("cursor").get<int64_t>(), 0, n_);
  }

 private:
  int64_t n_, seed_;
  int64_t epoch_ = 0, cursor_ = 0;
  std::vector<int64_t> order_;
};

// One completion of the rollout batch.
struct Sample {
  std::vector<int64_t> ids;  // prompt + completion
  int64_t prompt_len = 0;
  rl::Completion completion;
  rewards::Score score;
  double advantage = 0;
  bool in_loss = true;               // false: masked out (overlong filtering)
  torch::Tensor old_logp, ref_logp;  // fp32 [completion length], on the device
  int64_t completion_len() const { return static_cast<int64_t>(completion.ids.size()); }
  bool truncated() const { return !completion.stopped; }  // hit max_new_tokens
};

// One micro-batch as tensors: right-padded ids and, over the shifted positions [B, L-1], the
// completion tokens, the loss mask (completion tokens of samples in the loss), the sampler's
// log-probs and the stored old / reference log-probs.
struct MicroBatch {
  torch::Tensor ids_BL, completion_BT, mask_BT, sampler_BT, old_BT, ref_BT, adv_B;
};

MicroBatch make_micro_batch(const std::vector<Sample>& samples, const std::vector<int64_t>& rows,
                            const torch::Device& device, bool with_old, bool with_ref) {
  const int64_t B = static_cast<int64_t>(rows.size());
  int64_t L = 0;
  for (int64_t r : rows) L = std::max<int64_t>(L, static_cast<int64_t>(samples[r].ids.size()));
  auto ids = torch::zeros({B, L}, torch::kLong);
  auto completion = torch::zeros({B, L - 1}, torch::kBool);
  auto sampler = torch::zeros({B, L - 1}, torch::kFloat32);
  auto adv = torch::zeros({B}, torch::kFloat32);
  for (int64_t b = 0; b < B; ++b) {
    const auto& s = samples[rows[b]];
    ids[b]
        .narrow(0, 0, static_cast<int64_t>(s.ids.size()))
        .copy_(torch::tensor(s.ids, torch::kLong));
    // Completion token k sits at position prompt_len + k; its log-prob at index that - 1.
    completion[b].narrow(0, s.prompt_len - 1, s.completion_len()).fill_(true);
    sampler[b]
        .narrow(0, s.prompt_len - 1, s.completion_len())
        .copy_(torch::tensor(s.completion.logprobs, torch::kFloat32));
    adv[b] = s.advantage;
  }
  MicroBatch m;
  m.ids_BL = ids.to(device);
  m.completion_BT = completion.to(device);
  auto in_loss = torch::zeros({B, 1}, torch::kBool);
  for (int64_t b = 0; b < B; ++b) in_loss[b] = samples[rows[b]].in_loss;
  m.mask_BT = (completion & in_loss).to(torch::kFloat32).to(device);
  m.sampler_BT = sampler.to(device);
  m.adv_B = adv.to(device);
  auto place = [&](torch::Tensor Sample::*field) {
    auto out = torch::zeros({B, L - 1}, torch::TensorOptions().device(device));
    for (int64_t b = 0; b < B; ++b) {
      const auto& s = samples[rows[b]];
      out[b].narrow(0, s.prompt_len - 1, s.completion_len()).copy_(s.*field);
    }
    return out;
  };
  if (with_old) m.old_BT = place(&Sample::old_logp);
  if (with_ref) m.ref_BT = place(&Sample::ref_logp);
  return m;
}

// Per-token log-probs of the completions (no gradient), stored into each sample's `field`.
void store_logprobs(model::DeepseekV3ForCausalLM& model, std::vector<Sample>& samples,
                    int64_t micro, const config::Config& cfg, const torch::Device& device,
                    torch::Tensor Sample::*field) {
  torch::NoGradGuard no_grad;
  for (int64_t s = 0; s < static_cast<int64_t>(samples.size()); s += micro) {
    std::vector<int64_t> rows;
    for (int64_t r = s; r < std::min<int64_t>(s + micro, samples.size()); ++r) rows.push_back(r);
    auto mb = make_micro_batch(samples, rows, device, false, false);
    torch::Tensor lp;
    {
      AutocastGuard autocast(device, cfg.train.dtype);
      lp = model->token_logprobs(mb.ids_BL, {}, {}, kLogprobChunk, cfg.rl.temperature);
    }
    for (size_t b = 0; b < rows.size(); ++b) {
      auto& smp = samples[rows[b]];
      smp.*field =
          lp[static_cast<int64_t>(b)].narrow(0, smp.prompt_len - 1, smp.completion_len()).clone();
    }
  }
}

// Resident memory of this process in MiB (CPU), or the CUDA allocator's peak since the last
// reset (CUDA); -1 when unknown.
class PhaseMemory {
 public:
  explicit PhaseMemory(const torch::Device& device) : device_(device) {}
  void begin() {
#ifdef MOETRON_CUDA_MEMORY_STATS
    if (device_.is_cuda())
      c10::cuda::CUDACachingAllocator::resetPeakStats(device_.index() < 0 ? 0 : device_.index());
#endif
  }
  double end_mb() const {
#ifdef MOETRON_CUDA_MEMORY_STATS
    if (device_.is_cuda()) {
      auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(
          device_.index() < 0 ? 0 : device_.index());
      const auto& peak =
          stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)];
      return static_cast<double>(peak.peak) / (1 << 20);
    }
#endif
    std::ifstream statm("/proc/self/statm");
    long pages = 0, resident = 0;
    if (!(statm >> pages >> resident)) return -1;
    return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / (1 << 20);
  }

 private:
  torch::Device device_;
};

}  // namespace

TrainResult train_grpo(const config::Config& cfg_in, const TrainOptions& options) {
  Stopwatch wall;
  // Everything the config alone decides is checked before the run directory is touched.
  const auto& rl_cfg = cfg_in.rl;
  const auto adv_std = rl::parse_advantage_std(rl_cfg.advantage_std);
  rl::PolicyLossOptions loss_opts;
  loss_opts.epsilon_low = rl_cfg.epsilon_low;
  loss_opts.epsilon_high = rl_cfg.epsilon_high;
  loss_opts.beta = rl_cfg.beta;
  loss_opts.aggregation = rl::parse_loss_aggregation(rl_cfg.loss_agg);
  const rewards::RewardFunction reward_fn(rl_cfg.rewards, rewards::context_from_config(cfg_in));
  const auto reward_names = reward_fn.names();
  const auto acc_it = std::find(reward_names.begin(), reward_names.end(), "accuracy");
  const int64_t acc_index =
      acc_it == reward_names.end() ? -1 : static_cast<int64_t>(acc_it - reward_names.begin());
  MOETRON_CHECK_CONFIG(rl_cfg.beta == 0 || !cfg_in.train.init_from.empty(),
                       "rl.beta > 0 needs a reference policy: set train.init_from to the "
                       "checkpoint GRPO starts from (or rl.beta: 0)");
  config::validate(cfg_in);

  // Data parallelism: each rank samples and trains on its share of the step's prompts (whole
  // groups, so group statistics stay local); expert parallelism would need every rank to decode
  // in lockstep, which the generation engine does not do yet.
  const int64_t world = dist::read_dist_env().world_size;
  MOETRON_CHECK_CONFIG(cfg_in.dist.ep == 1,
                       "train.stage: grpo supports data parallelism only (dist.ep: 1); got "
                       "dist.ep=",
                       cfg_in.dist.ep);
  MOETRON_CHECK_CONFIG(rl_cfg.prompts_per_step % world == 0 && rl_cfg.mini_batch_size % world == 0,
                       "rl.prompts_per_step (", rl_cfg.prompts_per_step,
                       ") and rl.mini_batch_size (", rl_cfg.mini_batch_size,
                       ") must be divisible by the number of ranks (", world, ")");

  Session session = open_session(cfg_in, options);
  const int64_t rank = session.rank();
  const config::Config& cfg = session.cfg;
  const torch::Device device = session.device;
  auto& model = session.model;
  auto& optimizer = session.optimizer;
  auto& tokenizer = *session.tokenizer;

  model::DeepseekV3ForCausalLM reference{nullptr};
  if (rl_cfg.beta > 0) reference = frozen_model(cfg, cfg.train.init_from, device);

  const auto prompts = load_rl_prompts(cfg);
  MOETRON_CHECK_CONFIG(!prompts.empty(), "no RL prompts (data.train_path '", cfg.data.train_path,
                       "')");
  PromptStream stream(static_cast<int64_t>(prompts.size()), cfg.data.shuffle_seed);
  data::ChatTemplate chat(tokenizer, chat_options(cfg));
  auto sampling = sampling_options(cfg, tokenizer);

  const int64_t G = rl_cfg.num_generations;
  const int64_t P_global = rl_cfg.prompts_per_step;
  const int64_t P = P_global / world;  // this rank's prompts per step
  const int64_t updates_per_step =
      rl_cfg.ppo_epochs * std::max<int64_t>(1, P_global * G / rl_cfg.mini_batch_size);
  const int64_t total_updates = cfg.train.steps * updates_per_step;

  int64_t step = 0, updates = 0;
  if (session.resume_from) {
    auto state = load_checkpoint(session, *session.resume_from);
    step = state.step;
    stream.restore(nlohmann::json::parse(state.loader_state));
    updates = state.extra.value("optimizer_steps", int64_t{0});
    log::info("resumed from ", *session.resume_from, " at step ", step);
  }
  MetricsLog metrics(session.main_rank() ? session.run.metrics_path : std::string(), step);
  TrainResult result;
  result.run_dir = session.run.root;
  if (session.resume_from) result.checkpoint = *session.resume_from;
  auto save = [&](int64_t at_step) {
    result.checkpoint =
        save_checkpoint(session, at_step, stream.state().dump(),
                        {{"optimizer_steps", updates}, {"last_reward", result.last_loss}});
  };

  PhaseMemory memory(device);
  const int64_t start_step = step;
  int64_t gen_tokens_run = 0;
  double gen_seconds_run = 0;
  Stopwatch run_clock;
  while (step < cfg.train.steps) {
    stop_if_interrupted(session, step, [&] {
      save(step);
      return result.checkpoint;
    });
    Stopwatch step_clock;
    // ---- rollouts: sample, score, keep groups (dynamic sampling drops equal-reward groups)
    memory.begin();
    std::vector<Sample> samples;  // kept groups, G consecutive samples each
    std::vector<double> all_rewards, all_lengths;
    std::vector<std::vector<double>> all_components(reward_names.size());
    double entropy_tokens = 0, n_truncated = 0, pass1 = 0, passG = 0;
    int64_t groups_sampled = 0, gen_tokens = 0, rounds = 0;
    double gen_s = 0, reward_s = 0;
    while (true) {
      const bool open = static_cast<int64_t>(samples.size()) < P * G &&
                        rounds < rl_cfg.max_sampling_rounds &&
                        (rl_cfg.dynamic_sampling || rounds == 0);
      const int64_t need = open ? P - static_cast<int64_t>(samples.size()) / G : 0;
      // Every rank draws the same prompts from the shared stream (world x the largest need) and
      // takes its own slice, so the stream stays identical on all ranks.
      const int64_t need_max = session.dp->max(need, "sampling round");
      if (need_max == 0) break;
      std::vector<int64_t> picked;
      std::vector<std::string> texts;
      for (int64_t i = 0; i < world * need_max; ++i) {
        const int64_t index = stream.next();
        if (i >= rank * need_max && i < rank * need_max + need) {
          picked.push_back(index);
          texts.push_back(prompts[index].prompt);
        }
      }
      // Seeded per (seed, step, round): a resumed run samples what the uninterrupted one did.
      sampling.seed = static_cast<uint64_t>(cfg.train.seed) * 1000003u +
                      static_cast<uint64_t>(step) * 64u + static_cast<uint64_t>(rounds) +
                      (static_cast<uint64_t>(rank) << 40);
      ++rounds;
      if (need == 0) continue;
      Stopwatch gen_clock;
      auto sampled = sample_groups(model, chat, texts, G, sampling);
      gen_s += gen_clock.seconds();
      Stopwatch reward_clock;
      for (int64_t gi = 0; gi < need; ++gi) {
        const auto& prompt = prompts[picked[gi]];
        std::vector<Sample> group(G);
        std::vector<double> group_rewards;
        int64_t correct = 0;
        for (int64_t g = 0; g < G; ++g) {
          auto& s = group[g];
          s.completion = std::move(sampled[gi].completions[g]);
          s.prompt_len = static_cast<int64_t>(sampled[gi].prompt_ids.size());
          s.ids = sampled[gi].prompt_ids;
          s.ids.insert(s.ids.end(), s.completion.ids.begin(), s.completion.ids.end());
          auto rs = reward_sample(prompt, completion_text(tokenizer, s.completion));
          rs.num_tokens = s.completion_len();
          rs.truncated = s.truncated();
          s.score = reward_fn.score(rs);
          s.in_loss = !(rl_cfg.overlong_filter && s.truncated());
          group_rewards.push_back(s.score.total);
          all_rewards.push_back(s.score.total);
          for (size_t c = 0; c < reward_names.size(); ++c) {
            all_components[c].push_back(s.score.components[c].second);
          }
          if (acc_index >= 0 && s.score.components[acc_index].second > 0.5) ++correct;
          all_lengths.push_back(static_cast<double>(s.completion_len()));
          n_truncated += s.truncated() ? 1 : 0;
          gen_tokens += s.completion_len();
          for (float e : s.completion.entropies) entropy_tokens += e;
        }
        ++groups_sampled;
        pass1 += rl::pass_at_k(G, correct, 1);
        passG += rl::pass_at_k(G, correct, G);
        const bool flat = std::all_of(group_rewards.begin(), group_rewards.end(),
                                      [&](double r) { return r == group_rewards[0]; });
        if (rl_cfg.dynamic_sampling && flat) continue;
        auto adv = rl::group_advantages(group_rewards, G, adv_std, rl_cfg.advantage_eps);
        for (int64_t g = 0; g < G; ++g) {
          group[g].advantage = adv[g];
          samples.push_back(std::move(group[g]));
        }
      }
      reward_s += reward_clock.seconds();
    }
    const double gen_mb = memory.end_mb();
    gen_tokens_run += gen_tokens;
    gen_seconds_run += gen_s;
    const int64_t n_samples = static_cast<int64_t>(samples.size());
    if (rl_cfg.dynamic_sampling && n_samples < P * G) {
      log::warn("step ", step + 1, ": dynamic sampling kept ", n_samples / G, " of ", P,
                " groups after ", rounds, " rounds (rl.max_sampling_rounds); training on those");
    }
    // Every rank makes the same number of updates (a rank short of samples contributes zero
    // gradients); a mini-batch is rl.mini_batch_size samples over all ranks.
    const int64_t mini_local = rl_cfg.mini_batch_size / world;

    // ---- updates
    memory.begin();
    Stopwatch train_clock;
    const int64_t micro = rl_cfg.micro_batch_size;
    const int64_t mini = std::min<int64_t>(mini_local, std::max<int64_t>(n_samples, 1));
    const int64_t local_minis = n_samples == 0 ? 0 : (n_samples + mini - 1) / mini;
    const int64_t n_minis = session.dp->max(local_minis, "mini-batches");
    // With one update per rollout batch the policy still equals the sampler when the loss is
    // evaluated, so the old log-probs are that forward's own (detached) values; otherwise they
    // are computed once up front, before any update moves the policy.
    const bool stored_old = rl_cfg.ppo_epochs > 1 || n_minis > 1;
    if (stored_old) store_logprobs(model, samples, micro, cfg, device, &Sample::old_logp);
    if (rl_cfg.beta > 0) store_logprobs(reference, samples, micro, cfg, device, &Sample::ref_logp);
    // Step statistics stay on the device and are read once after the updates (no host sync per
    // micro-batch): loss-token sums, the largest ratio, and the largest |sampler - trainer|
    // log-prob gap of π_θold over the completion tokens (measured in the first pass, which
    // visits every completion once).
    auto stats_dev =
        torch::zeros({rl::kNumStats}, torch::TensorOptions(torch::kDouble).device(device));
    auto ratio_max_dev = torch::zeros({}, stats_dev.options());
    auto logp_diff_dev = torch::zeros({}, torch::TensorOptions().device(device));
    double grad_norm = 0, lr = 0;
    int64_t skipped_updates = 0;
    for (int64_t epoch = 0; epoch < rl_cfg.ppo_epochs && n_minis > 0; ++epoch) {
      // Mini-batches draw from a fresh seeded order each pass (distinct per step and epoch).
      const auto order =
          data::shuffled_order(n_samples, cfg.train.seed, step * rl_cfg.ppo_epochs + epoch);
      for (int64_t mb_index = 0; mb_index < n_minis; ++mb_index) {
        const int64_t m0 = std::min(mb_index * mini, n_samples);
        std::vector<int64_t> rows(order.begin() + m0,
                                  order.begin() + std::min<int64_t>(m0 + mini, n_samples));
        // Aggregation denominators over the whole mini-batch, on all ranks; each rank's loss is
        // scaled by the world size because the gradient reduction averages over ranks.
        rl::LossNormalizer norm;
        norm.max_length = rl_cfg.max_new_tokens;
        for (int64_t r : rows) {
          if (!samples[r].in_loss || samples[r].completion_len() == 0) continue;
          ++norm.num_sequences;
          norm.num_tokens += samples[r].completion_len();
        }
        const auto totals = session.dp->sum(
            {static_cast<double>(norm.num_sequences), static_cast<double>(norm.num_tokens)},
            "loss normaliser");
        norm.num_sequences = static_cast<int64_t>(totals[0]);
        norm.num_tokens = static_cast<int64_t>(totals[1]);
        lr = optim::lr_at(cfg.optim, updates, total_updates);
        optim::set_lr(*optimizer, lr);
        optimizer->zero_grad();
        for (size_t u0 = 0; u0 < rows.size(); u0 += static_cast<size_t>(micro)) {
          std::vector<int64_t> mrows(
              rows.begin() + static_cast<int64_t>(u0),
              rows.begin() +
                  static_cast<int64_t>(std::min(rows.size(), u0 + static_cast<size_t>(micro))));
          auto mb = make_micro_batch(samples, mrows, device, stored_old, rl_cfg.beta > 0);
          torch::Tensor logp;
          {
            AutocastGuard autocast(device, cfg.train.dtype);
            logp = model->token_logprobs(mb.ids_BL, {}, {}, kLogprobChunk, cfg.rl.temperature);
          }
          if (!stored_old) mb.old_BT = logp.detach();
          if (epoch == 0) {
            auto gap = (mb.old_BT - mb.sampler_BT).abs().masked_fill(~mb.completion_BT, 0).max();
            logp_diff_dev = torch::maximum(logp_diff_dev, gap);
          }
          auto out =
              rl::policy_loss(logp, mb.old_BT, mb.ref_BT, mb.adv_B, mb.mask_BT, loss_opts, norm);
          (out.loss * static_cast<double>(world)).backward();
          stats_dev += out.stats;
          ratio_max_dev = torch::maximum(ratio_max_dev, out.stats[rl::kStatRatioMax]);
        }
        session.dp->all_reduce_gradients();
        const auto clip = session.dp->clip_grad_norm(cfg.optim.grad_clip);
        grad_norm = clip.total_norm;
        if (clip.finite) {
          optimizer->step();
        } else {
          optimizer->zero_grad();
          ++skipped_updates;
          log::warn("step ", step + 1, ": non-finite gradient; update skipped");
        }
        ++updates;
      }
    }
    const double train_s = train_clock.seconds();
    const double train_mb = memory.end_mb();
    ++step;

    // ---- metrics, over all ranks: sums (and maxima) reduced once, then the usual ratios
    const auto stats_local = stats_dev.cpu();
    std::vector<double> sums = {0,
                                static_cast<double>(all_rewards.size()),
                                0,
                                n_truncated,
                                entropy_tokens,
                                static_cast<double>(gen_tokens),
                                static_cast<double>(groups_sampled),
                                pass1,
                                passG,
                                static_cast<double>(n_samples),
                                0,
                                0};
    enum {
      kReward,
      kRewards,
      kLength,
      kTruncated,
      kEntropy,
      kGenTokens,
      kGroups,
      kPass1,
      kPassG,
      kKept,
      kAdv,
      kAdvSq,
      kNumSums
    };
    for (double r : all_rewards) sums[kReward] += r;
    for (double l : all_lengths) sums[kLength] += l;
    double adv_max = -INFINITY, adv_min = INFINITY;
    for (const auto& smp : samples) {
      sums[kAdv] += smp.advantage;
      sums[kAdvSq] += smp.advantage * smp.advantage;
      adv_max = std::max(adv_max, smp.advantage);
      adv_min = std::min(adv_min, smp.advantage);
    }
    for (int64_t i = 0; i < rl::kNumStats; ++i) sums.push_back(stats_local[i].item<double>());
    for (const auto& comp : all_components) {
      sums.push_back(std::accumulate(comp.begin(), comp.end(), 0.0));
    }
    std::vector<double> maxima = {
        all_lengths.empty() ? 0.0 : *std::max_element(all_lengths.begin(), all_lengths.end()),
        adv_max,
        -adv_min,
        ratio_max_dev.item<double>(),
        logp_diff_dev.item<double>(),
        gen_s};
    sums = session.dp->sum(sums, "step metrics");
    maxima = session.dp->max(maxima, "step metrics");
    auto stat = [&](int64_t i) { return sums[kNumSums + i]; };
    auto component_mean = [&](size_t c) {
      return sums[kRewards] > 0 ? sums[kNumSums + rl::kNumStats + c] / sums[kRewards] : 0.0;
    };
    const double n_adv = sums[kKept];
    const double adv_mean = n_adv > 0 ? sums[kAdv] / n_adv : 0.0;
    const double adv_sd =
        n_adv > 1
            ? std::sqrt(std::max(0.0, (sums[kAdvSq] - n_adv * adv_mean * adv_mean) / (n_adv - 1)))
            : 0.0;
    const double ratio_max = maxima[3];
    const double logp_diff_max = maxima[4];
    const double tokens = std::max(1.0, stat(rl::kStatTokens));
    const double reward_mean = sums[kRewards] > 0 ? sums[kReward] / sums[kRewards] : 0.0;
    const double gen_tokens_all = sums[kGenTokens];
    const double gen_s_max = maxima[5];
    const double groups_all = sums[kGroups];
    result.last_loss = reward_mean;
    nlohmann::json rec{
        {"step", step},
        {"reward_mean", reward_mean},
        {"response_length_mean", sums[kRewards] > 0 ? sums[kLength] / sums[kRewards] : 0.0},
        {"response_length_max", maxima[0]},
        {"truncation_ratio", sums[kRewards] > 0 ? sums[kTruncated] / sums[kRewards] : 0.0},
        {"entropy", gen_tokens_all > 0 ? sums[kEntropy] / gen_tokens_all : 0.0},
        {"groups_sampled", static_cast<int64_t>(groups_all)},
        {"groups_kept", static_cast<int64_t>(sums[kKept]) / G},
        {"sampling_rounds", rounds},
        {"advantage_mean", adv_mean},
        {"advantage_std", adv_sd},
        {"advantage_min", n_adv > 0 ? -maxima[2] : 0.0},
        {"advantage_max", n_adv > 0 ? maxima[1] : 0.0},
        {"clip_frac_low", stat(rl::kStatClipLow) / tokens},
        {"clip_frac_high", stat(rl::kStatClipHigh) / tokens},
        {"ratio_mean", stat(rl::kStatRatioSum) / tokens},
        {"ratio_max", ratio_max},
        {"logp_diff_max", logp_diff_max},
        {"grad_norm", grad_norm},
        {"lr", lr},
        {"optimizer_steps", updates},
        {"skipped_updates", skipped_updates},
        {"gen_tokens", static_cast<int64_t>(gen_tokens_all)},
        {"gen_tokens_per_s", gen_s_max > 0 ? gen_tokens_all / gen_s_max : 0.0},
        {"time_generate_s", gen_s},
        {"time_reward_s", reward_s},
        {"time_train_s", train_s},
        {"step_time_s", step_clock.seconds()},
        {"memory_generate_mb", gen_mb},
        {"memory_train_mb", train_mb}};
    if (rl_cfg.beta > 0) rec["kl"] = stat(rl::kStatKl) / tokens;
    for (size_t c = 0; c < reward_names.size(); ++c) {
      rec["reward/" + reward_names[c]] = component_mean(c);
    }
    if (acc_index >= 0) {
      rec["accuracy"] = component_mean(static_cast<size_t>(acc_index));
      rec["pass@1"] = groups_all > 0 ? sums[kPass1] / groups_all : 0.0;
      rec[str_cat("pass@", G)] = groups_all > 0 ? sums[kPassG] / groups_all : 0.0;
    }
    metrics.write(rec);
    if (session.main_rank() &&
        (step == start_step + 1 || step % cfg.log.every == 0 || step == cfg.train.steps)) {
      const double elapsed = run_clock.seconds();
      log::info(
          "step ", step, "/", cfg.train.steps, " | reward ", reward_mean,
          acc_index >= 0 ? str_cat(" | acc ", rec["accuracy"].get<double>()) : "", " | len ",
          rec["response_length_mean"].get<double>(), " | gen ",
          static_cast<int64_t>(rec["gen_tokens_per_s"].get<double>()), " tok/s | gen ", gen_s,
          "s train ", train_s, "s | eta ",
          format_duration(elapsed / double(step - start_step) * double(cfg.train.steps - step)));
    }
    evaluate_and_save(step, cfg, model, tokenizer, metrics, result, save);
  }
  if (start_step >= cfg.train.steps) {
    log::info("already at step ", step, " of ", cfg.train.steps, "; evaluating only");
    result.eval = evaluate(model, cfg, tokenizer);
  }
  result.steps = step;
  result.seconds = wall.seconds();
  result.tokens_per_s =
      gen_seconds_run > 0 ? static_cast<double>(gen_tokens_run) / gen_seconds_run : 0;
  return result;
}

}  // namespace moetron::train
