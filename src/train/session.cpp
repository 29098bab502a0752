// Shared stage setup (see session.h).
#include "session.h"

#include <torch/cuda.h>

#include <filesystem>

#include "moetron/ckpt/train_checkpoint.h"
#include "moetron/config/loader.h"
#include "moetron/core/error.h"
#include "moetron/core/logging.h"
#include "moetron/core/signals.h"
#include "moetron/dist/ep_dispatcher.h"
#include "moetron/optim/optimizer.h"
#include "moetron/train/evaluate.h"

namespace fs = std::filesystem;

namespace moetron::train {

torch::Device resolve_device(const std::string& name) {
  if (name == "cpu") return torch::kCPU;
  if (name == "cuda") {
    MOETRON_CHECK_CONFIG(torch::cuda::is_available(),
                         "train.device is 'cuda' but no CUDA device is visible; use auto or cpu");
    return torch::kCUDA;
  }
  return torch::cuda::is_available() ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
}

LogFileGuard::LogFileGuard(const std::string& path) {
  log::add_file(path);
}
LogFileGuard::~LogFileGuard() {
  log::remove_files();
}

namespace {
const char* stage_name(config::Stage s) {
  switch (s) {
    case config::Stage::kPretrain:
      return "pretrain";
    case config::Stage::kSft:
      return "sft";
    case config::Stage::kGrpo:
      return "grpo";
  }
  return "?";
}
}  // namespace

Session open_session(const config::Config& cfg_in, const TrainOptions& options) {
  Session s;
  s.cfg = cfg_in;
  if (!options.resume.empty()) s.cfg.ckpt.resume = options.resume;
  const auto& cfg = s.cfg;
  config::validate(cfg);
  model::validate_model_config(cfg);
  log::set_level(log::parse_level(cfg.log.level));
  s.yaml = config::dump(cfg);
  s.device = resolve_device(cfg.train.device);
  s.comm = dist::init_from_env(cfg, s.device, &s.device);

  // Resume decision first: it decides whether a run directory with another config is ok.
  const std::string checkpoints =
      (fs::path(cfg.log.run_dir) / cfg.log.name / "checkpoints").string();
  if (cfg.ckpt.resume == "auto") {
    s.resume_from = ckpt::find_resume_checkpoint(checkpoints);
  } else if (cfg.ckpt.resume != "none") {
    s.resume_from = resolve_checkpoint(cfg.ckpt.resume);
  }
  // Rank 0 creates (or checks) the run directory first; the others then open what it wrote.
  // Only rank 0 writes the log file and the metrics.
  // Rank 0's error (e.g. a run directory holding another config) is every rank's error.
  dist::on_rank0(
      s.comm->world(),
      [&] {
        s.run = open_run_dir(cfg.log.run_dir, cfg.log.name, s.yaml, s.resume_from.has_value());
      },
      "run directory");
  if (!s.main_rank()) {
    s.run = open_run_dir(cfg.log.run_dir, cfg.log.name, s.yaml, /*resuming=*/true);
  }
  if (s.main_rank()) s.log_file = std::make_unique<LogFileGuard>(s.run.log_path);
  log::info(
      "run ", s.run.root, " | stage ", stage_name(cfg.train.stage), " | device ", s.device.str(),
      s.comm->distributed() ? str_cat(" | ", s.world(), " ranks (", s.comm->backend_name(), ", ep ",
                                      cfg.dist.ep, " x dp ", s.comm->mesh().dp(), ")")
                            : std::string());

  s.tokenizer = data::load_tokenizer(cfg.data.tokenizer);
  MOETRON_CHECK_CONFIG(s.tokenizer->vocab_size() <= cfg.model.vocab_size, "data.tokenizer '",
                       cfg.data.tokenizer, "' has ", s.tokenizer->vocab_size(),
                       " tokens but model.vocab_size is ", cfg.model.vocab_size);

  torch::manual_seed(cfg.train.seed);
  s.model = model::DeepseekV3ForCausalLM(cfg);
  s.model->to(s.device);
  if (!cfg.train.init_from.empty() && !s.resume_from) {
    load_model_weights(cfg.train.init_from, s.model);
  }
  s.model->train();
  // Every rank built the full model from the same seed; under expert parallelism each keeps its
  // experts before the optimizer sees the parameters.
  dist::shard_experts(s.model, *s.comm);
  s.optimizer = optim::make_adamw(*s.model, cfg.optim);
  for (auto& p : s.model->parameters()) {
    if (p.requires_grad()) s.params.push_back(p);
  }
  s.dp = std::make_unique<dist::DataParallel>(*s.comm, s.model);
  return s;
}

std::string save_checkpoint(Session& session, int64_t step, std::string loader_state,
                            nlohmann::json extra) {
  ckpt::TrainState state;
  state.step = step;
  state.loader_state = std::move(loader_state);
  state.extra = std::move(extra);
  state.config_yaml = session.yaml;
  ckpt::CheckpointRanks ranks;
  dist::Comm& comm = *session.comm;
  ranks.rank = comm.rank();
  ranks.world = comm.world_size();
  ranks.ep_rank = comm.mesh().ep_rank();
  ranks.ep = comm.mesh().ep;
  ranks.shard_writer = comm.mesh().dp_rank() == 0;
  ranks.barrier = [&comm](const std::string& what) { comm.world().barrier(what); };
  ranks.broadcast = [&comm](const std::string& value) {
    return dist::broadcast_string(comm.world(), value, "checkpoint");
  };
  auto path =
      ckpt::save_train_checkpoint(session.run.checkpoints, *session.model, *session.optimizer,
                                  state, session.cfg.ckpt.keep_last, &ranks);
  log::info("saved ", path);
  return path;
}

ckpt::TrainState load_checkpoint(Session& session, const std::string& path) {
  return ckpt::load_train_checkpoint(path, *session.model, *session.optimizer, session.rank());
}

void stop_if_interrupted(Session& session, int64_t step, const std::function<std::string()>& save) {
  bool requested = signals::interrupt_requested();
  if (session.comm->distributed()) {
    auto flag = torch::tensor({requested ? int64_t{1} : int64_t{0}}).to(session.comm->device());
    session.comm->world().all_reduce(flag, dist::ReduceOp::kMax, "interrupt check");
    requested = flag.cpu().item<int64_t>() > 0;
  }
  if (!requested) return;
  const std::string checkpoint = save();
  throw Error(ErrorKind::kInterrupted,
              str_cat(signals::interrupt_requested()
                          ? str_cat("interrupted by signal ", signals::interrupt_signal())
                          : std::string("interrupted (another rank received a signal)"),
                      " at step ", step, "; checkpoint ", checkpoint,
                      " (rerun the same command to resume)"));
}

void evaluate_and_save(int64_t step, const config::Config& cfg, model::DeepseekV3ForCausalLM& model,
                       const data::Tokenizer& tokenizer, MetricsLog& metrics, TrainResult& result,
                       const std::function<void(int64_t)>& save) {
  const bool last = step == cfg.train.steps;
  if ((cfg.train.eval_every > 0 && step % cfg.train.eval_every == 0) || last) {
    result.eval = evaluate(model, cfg, tokenizer);
    metrics.write(eval_record(step, result.eval));
    log::info("eval step ", step, ": loss ", result.eval.loss,
              result.eval.total > 0
                  ? str_cat(", accuracy ", result.eval.correct, "/", result.eval.total)
                  : std::string(),
              result.eval.samples > 0 ? str_cat(", pass@1 ", result.eval.sampled_pass1, " (",
                                                result.eval.samples, " samples per prompt)")
                                      : std::string());
  }
  if ((cfg.ckpt.save_every > 0 && step % cfg.ckpt.save_every == 0) || last) save(step);
}

model::DeepseekV3ForCausalLM frozen_model(const config::Config& cfg, const std::string& path,
                                          const torch::Device& device) {
  model::DeepseekV3ForCausalLM m(cfg);
  m->to(device);
  load_model_weights(path, m);
  m->eval();
  for (auto& p : m->parameters()) p.requires_grad_(false);
  return m;
}

}  // namespace moetron::train
