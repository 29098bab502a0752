// Held-out loss, greedy-decoding accuracy and sampled pass@1; loading weights from checkpoints of
// any kind.
#include "moetron/train/evaluate.h"

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <unordered_map>

#include "moetron/ckpt/hf_checkpoint.h"
#include "moetron/ckpt/train_checkpoint.h"
#include "moetron/core/error.h"
#include "moetron/core/logging.h"
#include "moetron/data/chat_template.h"
#include "moetron/data/dataset.h"
#include "moetron/data/loader.h"
#include "moetron/data/tasks.h"
#include "moetron/model/hf_names.h"
#include "moetron/rl/generate.h"
#include "moetron/train/autocast.h"
#include "moetron/train/batch_tensors.h"
#include "moetron/train/rollout.h"

namespace fs = std::filesystem;

namespace moetron::train {

std::vector<EvalPrompt> load_eval_prompts(const config::Config& cfg, int64_t n) {
  std::vector<EvalPrompt> out;
  if (!cfg.data.eval_path.empty()) {
    for (auto& p : data::read_rl_prompts(cfg.data.eval_path, cfg.data.skip_bad_lines)) {
      if (static_cast<int64_t>(out.size()) >= n) break;
      if (p.answer.empty()) continue;
      out.push_back({p.prompt, p.answer, p.task.empty() ? cfg.data.task : p.task});
    }
    return out;
  }
  auto task = data::generate_task_data(cfg.data.task, data::task_options(cfg));
  for (const auto& line : task.eval) {
    if (static_cast<int64_t>(out.size()) >= n) break;
    auto rec = nlohmann::json::parse(line);
    out.push_back({rec.at("prompt").get<std::string>(), rec.at("answer").get<std::string>(),
                   rec.value("task", cfg.data.task)});
  }
  return out;
}

EvalResult evaluate(model::DeepseekV3ForCausalLM& model, const config::Config& cfg,
                    const data::Tokenizer& tokenizer) {
  const bool was_training = model->is_training();
  model->eval();
  torch::NoGradGuard no_grad;
  const auto device = model->lm_head_weight().device();
  EvalResult result;

  const auto stage =
      cfg.train.stage == config::Stage::kPretrain ? config::Stage::kPretrain : config::Stage::kSft;
  data::BatchLoader loader(cfg.data, stage, tokenizer, cfg.train.micro_batch_size, cfg.data.seq_len,
                           cfg.data.shuffle_seed, data::Split::kEval, chat_options(cfg));
  double loss_sum = 0;
  for (int64_t i = 0; i < cfg.train.eval_batches; ++i) {
    auto batch = to_tensors(loader.next(), device);
    model::ForwardOptions opts;
    opts.compute_mtp = false;
    AutocastGuard autocast(device, cfg.train.dtype);
    auto out =
        model->forward(batch.input_ids, batch.labels, batch.position_ids, batch.segment_ids, opts);
    const int64_t n = out.num_target_tokens.item<int64_t>();
    loss_sum += out.main_loss.item<double>() * static_cast<double>(n);
    result.loss_tokens += n;
  }
  result.loss = result.loss_tokens > 0 ? loss_sum / static_cast<double>(result.loss_tokens) : 0;

  auto prompts = load_eval_prompts(cfg, cfg.train.eval_batches * cfg.train.micro_batch_size);
  if (!prompts.empty()) {
    data::ChatTemplate chat(tokenizer, chat_options(cfg));
    std::vector<std::vector<int64_t>> ids;
    for (const auto& p : prompts) ids.push_back(prompt_ids(chat, p.prompt));
    auto sampling = sampling_options(cfg, tokenizer);
    sampling.greedy = true;
    auto completions = rl::generate(model, ids, sampling);
    for (size_t i = 0; i < prompts.size(); ++i) {
      const std::string text = completion_text(tokenizer, completions[i]);
      result.correct += data::check_answer(prompts[i].task, text, prompts[i].answer) ? 1 : 0;
    }
    result.total = static_cast<int64_t>(prompts.size());
    result.accuracy = static_cast<double>(result.correct) / static_cast<double>(result.total);
    if (cfg.train.eval_samples > 0) {
      // R1's protocol: pass@1 = mean over prompts of (correct samples / k).
      std::vector<std::string> texts;
      for (const auto& p : prompts) texts.push_back(p.prompt);
      auto sampled = sampling_options(cfg, tokenizer);
      sampled.seed = static_cast<uint64_t>(cfg.train.seed) * 7919u + 17u;
      const auto groups = sample_groups(model, chat, texts, cfg.train.eval_samples, sampled);
      int64_t correct = 0;
      for (size_t i = 0; i < prompts.size(); ++i) {
        for (const auto& c : groups[i].completions) {
          correct +=
              data::check_answer(prompts[i].task, completion_text(tokenizer, c), prompts[i].answer)
                  ? 1
                  : 0;
        }
      }
      result.samples = cfg.train.eval_samples;
      result.sampled_pass1 =
          static_cast<double>(correct) / static_cast<double>(result.total * result.samples);
    }
  }
  if (was_training) model->train();
  return result;
}

nlohmann::json eval_record(int64_t step, const EvalResult& e) {
  nlohmann::json r{{"step", step}, {"eval_loss", e.loss}, {"eval_tokens", e.loss_tokens}};
  if (e.total > 0) {
    r["eval_accuracy"] = e.accuracy;
    r["eval_correct"] = e.correct;
    r["eval_total"] = e.total;
  }
  if (e.samples > 0) {
    r["eval_pass@1"] = e.sampled_pass1;
    r["eval_samples"] = e.samples;
  }
  return r;
}

std::string resolve_checkpoint(const std::string& path) {
  if (fs::exists(fs::path(path) / ckpt::kManifestFile)) return path;
  for (const auto& dir : {fs::path(path), fs::path(path) / "checkpoints"}) {
    if (!fs::is_directory(dir)) continue;
    if (auto found = ckpt::find_resume_checkpoint(dir.string())) return *found;
  }
  throw Error(ErrorKind::kConfig,
              str_cat("no valid training checkpoint at '", path,
                      "' (expected a checkpoint directory with manifest.json, or a run / "
                      "checkpoints directory holding one)"));
}

void load_model_weights(const std::string& path, model::DeepseekV3ForCausalLM& model) {
  torch::NoGradGuard no_grad;
  if (fs::exists(fs::path(path) / "config.json")) {
    auto hf = ckpt::load_hf_tensors(path, ckpt::HfLoadOptions{torch::kFloat32});
    std::unordered_map<std::string, torch::Tensor> tensors(hf.begin(), hf.end());
    model::load_hf_tensors(model, tensors);
    log::info("initialised weights from HF checkpoint ", path);
    return;
  }
  ckpt::load_checkpoint_model(resolve_checkpoint(path), *model);
}

}  // namespace moetron::train
