// `moetron bench train`: builds CONFIG's model on its device (train.device, train.dtype: bf16
// is autocast with fp32 master weights, as the trainer runs it) and times real training steps
// on random tokens: train.grad_accum_steps micro-batches of micro_batch_size x data.seq_len
// (forward, backward), gradient clipping, the AdamW step and the aux-loss-free bias update.
// Prints step time, tokens/s, model FLOP/s and MFU; --compare kernels measures the same config
// with every kernels.* = reference in the same run and prints the speed-up.
#include "bench_train.h"

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <utility>
#include <vector>

#include "moetron/build_config.h"
#include "moetron/config/loader.h"
#include "moetron/core/error.h"
#include "moetron/core/timer.h"
#include "moetron/model/accounting.h"
#include "moetron/model/bias_update.h"
#include "moetron/model/model.h"
#include "moetron/ops/impl.h"
#include "moetron/optim/optimizer.h"
#include "moetron/train/autocast.h"
#include "moetron/train/metrics.h"
#include "moetron/train/trainer.h"

#if MOETRON_HAVE_CUDA_KERNELS
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace moetron::cli {

const char* const kMfuDefinition =
    "MFU = model FLOPs per token x tokens/s / the device's dense bf16 peak, with model FLOPs per "
    "token = 3 x forward FLOPs (model::forward_flops_per_token incl. MTP): 2 x active matmul "
    "parameters (projections, router, the K routed + shared experts, LM head) plus causal "
    "attention (QK^T and PV over (T+1)/2 keys on average), backward counted as 2 x forward; no "
    "recomputation, norms or elementwise ops. Reported only on GPUs with a published peak "
    "(H100/H200 989 TFLOP/s, A100 312), '-' otherwise.";

namespace {

struct Measurement {
  std::string label;
  config::KernelsConfig kernels;
  std::vector<double> step_s;
  double tokens_per_s = 0;
  double model_flops = 0;  // FLOP/s
  double mfu = -1;
  double first_loss = 0, last_loss = 0;
  double peak_memory_gb = -1;

  double mean_s() const {
    double s = 0;
    for (const double t : step_s) s += t;
    return s / static_cast<double>(step_s.size());
  }
  double median_s() const {
    auto v = step_s;
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  }
  double min_s() const { return *std::min_element(step_s.begin(), step_s.end()); }
};

std::string kernels_text(const config::KernelsConfig& k) {
  return str_cat("gate=", k.gate, " permute=", k.permute, " grouped_gemm=", k.grouped_gemm,
                 " attention=", k.attention, " decode_attention=", k.decode_attention);
}

config::KernelsConfig all_reference() {
  config::KernelsConfig k;
  k.gate = k.permute = k.grouped_gemm = k.attention = k.decode_attention = "reference";
  return k;
}

void synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index() < 0 ? -1 : device.index());
}

void reset_peak_memory(const torch::Device& device) {
#if MOETRON_HAVE_CUDA_KERNELS
  if (!device.is_cuda()) return;
  const auto index = device.index() < 0 ? c10::DeviceIndex(0) : device.index();
  c10::cuda::CUDACachingAllocator::emptyCache();
  c10::cuda::CUDACachingAllocator::resetPeakStats(index);
#else
  (void)device;
#endif
}

double peak_memory_gb(const torch::Device& device) {
#if MOETRON_HAVE_CUDA_KERNELS
  if (!device.is_cuda()) return -1;
  const auto index = device.index() < 0 ? c10::DeviceIndex(0) : device.index();
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(index);
  return static_cast<double>(
             stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)]
                 .peak) /
         1e9;
#else
  (void)device;
  return -1;
#endif
}

Measurement measure(const config::Config& cfg, const torch::Device& device,
                    const BenchTrainArgs& args, const std::string& label) {
  Measurement m;
  m.label = label;
  m.kernels = cfg.kernels;
  reset_peak_memory(device);
  torch::manual_seed(cfg.train.seed);
  model::DeepseekV3ForCausalLM model(cfg);
  model->to(device);
  model->train();
  auto optimizer = optim::make_adamw(*model, cfg.optim);
  optim::set_lr(*optimizer, cfg.optim.lr);
  std::vector<torch::Tensor> params;
  for (const auto& p : model->parameters()) {
    if (p.requires_grad()) params.push_back(p);
  }
  const bool bias_update = cfg.moe.bias_update_speed > 0 && cfg.moe.n_routed_experts &&
                           cfg.moe.topk_method == config::TopkMethod::kNoauxTc;
  const int64_t B = cfg.train.micro_batch_size, T = cfg.data.seq_len;
  const int64_t A = cfg.train.grad_accum_steps;
  const auto ids_options = torch::TensorOptions().dtype(torch::kInt64).device(device);
  const double inv = 1.0 / static_cast<double>(A);

  for (int i = 0; i < args.warmup + args.steps; ++i) {
    synchronize(device);
    Stopwatch sw;
    optimizer->zero_grad();
    torch::Tensor counts;
    auto loss_sum = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(device));
    for (int64_t micro = 0; micro < A; ++micro) {
      auto ids = torch::randint(0, cfg.model.vocab_size, {B, T}, ids_options);
      model::ForwardOutput out;
      {
        train::AutocastGuard autocast(device, cfg.train.dtype);
        out = model->forward(ids, ids);
      }
      (out.loss * inv).backward();
      loss_sum += out.loss.detach().to(torch::kFloat64) * inv;
      if (out.expert_counts_ME.defined()) {
        counts = counts.defined() ? counts + out.expert_counts_ME : out.expert_counts_ME;
      }
    }
    optim::clip_grad_norm(params, cfg.optim.grad_clip);
    optimizer->step();
    if (bias_update && counts.defined()) {
      model::update_expert_bias(model, counts, cfg.moe.bias_update_speed);
    }
    const double loss = loss_sum.item<double>();
    synchronize(device);
    const double dt = sw.seconds();
    if (i == 0) m.first_loss = loss;
    m.last_loss = loss;
    if (i >= args.warmup) m.step_s.push_back(dt);
  }
  m.peak_memory_gb = peak_memory_gb(device);
  const double tokens = static_cast<double>(B * T * A);
  m.tokens_per_s = tokens / m.mean_s();
  const auto flops = model::forward_flops_per_token(cfg, T);
  m.model_flops = 3 * flops.with_mtp * m.tokens_per_s;
  const double peak = train::device_peak_flops(device);
  if (peak > 0) m.mfu = m.model_flops / peak;
  return m;
}

void print(const Measurement& m, int steps) {
  std::printf("[%s] kernels: %s\n", m.label.c_str(), kernels_text(m.kernels).c_str());
  std::printf("  step time     %.2f ms (mean of %d; median %.2f, min %.2f)\n", 1e3 * m.mean_s(),
              steps, 1e3 * m.median_s(), 1e3 * m.min_s());
  std::printf("  tokens/s      %.0f\n", m.tokens_per_s);
  std::printf("  model FLOP/s  %.3f TFLOP/s\n", m.model_flops / 1e12);
  if (m.mfu >= 0) {
    std::printf("  mfu           %.1f%%\n", 100 * m.mfu);
  } else {
    std::printf("  mfu           -\n");
  }
  std::printf("  loss          %.4f (first step) -> %.4f (last)\n", m.first_loss, m.last_loss);
  if (m.peak_memory_gb >= 0) std::printf("  peak memory   %.2f GB\n", m.peak_memory_gb);
}

nlohmann::json to_json(const Measurement& m) {
  nlohmann::json j{{"label", m.label},
                   {"kernels", kernels_text(m.kernels)},
                   {"step_time_s", m.mean_s()},
                   {"step_time_median_s", m.median_s()},
                   {"tokens_per_s", m.tokens_per_s},
                   {"model_tflops", m.model_flops / 1e12},
                   {"first_loss", m.first_loss},
                   {"last_loss", m.last_loss}};
  j["mfu"] = m.mfu >= 0 ? nlohmann::json(m.mfu) : nlohmann::json(nullptr);
  j["peak_memory_gb"] =
      m.peak_memory_gb >= 0 ? nlohmann::json(m.peak_memory_gb) : nlohmann::json(nullptr);
  return j;
}

}  // namespace

int run_bench_train(const BenchTrainArgs& args) {
  MOETRON_CHECK_CONFIG(args.steps > 0 && args.warmup >= 0,
                       "bench train: --steps must be positive and --warmup non-negative");
  MOETRON_CHECK_CONFIG(args.compare.empty() || args.compare == "kernels",
                       "bench train: --compare takes 'kernels', got '", args.compare, "'");
  const config::Config cfg = config::load_file(args.config->path, args.config->overrides);
  const torch::Device device = train::resolve_device(cfg.train.device);
  if (!device.is_cuda()) {
    const auto& k = cfg.kernels;
    for (const auto& [key, value] : {std::pair<const char*, const std::string&>{"gate", k.gate},
                                     {"permute", k.permute},
                                     {"grouped_gemm", k.grouped_gemm},
                                     {"attention", k.attention},
                                     {"decode_attention", k.decode_attention}}) {
      MOETRON_CHECK_CONFIG(value != "cuda", "kernels.", key,
                           ": 'cuda' needs a CUDA device but this bench runs on the CPU; pass "
                           "kernels.",
                           key, "=reference");
    }
  }
  const int64_t T = cfg.data.seq_len;
  const int64_t tokens = cfg.train.micro_batch_size * T * cfg.train.grad_accum_steps;
  const auto flops = model::forward_flops_per_token(cfg, T);
  const double peak = train::device_peak_flops(device);

  std::string device_text = device.is_cuda() ? "cuda" : "cpu";
  if (const auto info = device.is_cuda() ? ops::cuda_device_info() : std::nullopt) {
    device_text += str_cat(" (", info->name, ")");
  }
  if (!device.is_cuda()) device_text += str_cat(" (threads: ", torch::get_num_threads(), ")");
  std::printf("bench train %s: %s\n", args.config->path.c_str(),
              model::summary_line(cfg, T).c_str());
  std::printf(
      "device %s, train.dtype %s, %lld x %lld tokens x %lld micro-batches = %lld tokens/step; "
      "%d timed steps after %d warm-up (forward, backward, clip, AdamW, bias update)\n",
      device_text.c_str(), cfg.train.dtype.c_str(),
      static_cast<long long>(cfg.train.micro_batch_size), static_cast<long long>(T),
      static_cast<long long>(cfg.train.grad_accum_steps), static_cast<long long>(tokens),
      args.steps, args.warmup);
  std::printf("model FLOPs/token %.4g GFLOP (3 x forward %.4g, incl. MTP %.4g); ",
              3 * flops.with_mtp / 1e9, flops.with_mtp / 1e9, flops.mtp / 1e9);
  if (peak > 0) {
    std::printf("device peak %.0f TFLOP/s (dense bf16)\n", peak / 1e12);
  } else {
    std::printf(
        "mfu '-': no published peak for %s (MFU is only reported against a GPU's dense "
        "bf16 peak)\n",
        device.is_cuda() ? "this GPU" : "a CPU");
  }
  std::fflush(stdout);

  std::vector<Measurement> runs;
  if (args.compare == "kernels") {
    auto ref = cfg;
    ref.kernels = all_reference();
    runs.push_back(measure(ref, device, args, "reference"));
    print(runs.back(), args.steps);
    std::fflush(stdout);
  }
  runs.push_back(measure(cfg, device, args, "config"));
  print(runs.back(), args.steps);

  nlohmann::json summary{
      {"bench", "train"},          {"config", args.config->path},
      {"device", device_text},     {"dtype", cfg.train.dtype},
      {"tokens_per_step", tokens}, {"steps", args.steps},
      {"warmup", args.warmup},     {"model_flops_per_token", 3 * flops.with_mtp}};
  summary["peak_flops"] = peak > 0 ? nlohmann::json(peak) : nlohmann::json(nullptr);
  nlohmann::json arr = nlohmann::json::array();
  for (const auto& m : runs) arr.push_back(to_json(m));
  summary["runs"] = arr;
  if (runs.size() == 2) {
    const double speedup = runs[1].tokens_per_s / runs[0].tokens_per_s;
    std::printf("speed-up of the config's kernels over all-reference: %.3fx (tokens/s, same run)\n",
                speedup);
    summary["speedup"] = speedup;
  }
  std::printf("%s\n", summary.dump().c_str());
  return 0;
}

}  // namespace moetron::cli
