// `moetron bench model CONFIG [overrides]`: times a training step (forward + backward) of the
// configured model and, with --hf, the same weights and batch in HF transformers in the same
// run (bench/hf_train_step.py), printing the ratio. `moetron bench kernels`: our CUDA kernels
// against the composites they replace (bench_kernels.cpp). `moetron bench train`: training-step
// throughput and MFU (bench_train.cpp). Timings live here, never in tests.
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cstdio>
#include <ctime>
#include <iomanip>
#include <iostream>
#include <sstream>

#include <unistd.h>

#include <torch/csrc/autograd/profiler_legacy.h>
#include "bench_kernels.h"
#include "bench_train.h"
#include "command.h"
#include "moetron/build_config.h"
#include "moetron/ckpt/hf_model.h"
#include "moetron/config/loader.h"
#include "moetron/ops/cpu_gemm.h"
#include "moetron/train/autocast.h"

#include "moetron/core/env.h"
#include "moetron/core/error.h"
#include "moetron/core/files.h"
#include "moetron/core/timer.h"
#include "moetron/model/accounting.h"

namespace moetron::cli {
namespace {

struct BenchModelArgs {
  std::shared_ptr<ConfigArgs> config = std::make_shared<ConfigArgs>();
  int64_t batch = 4;
  int64_t seq = 256;
  int steps = 5;
  int warmup = 1;
  int threads = 2;
  int64_t seed = 0;
  bool hf = false;
  std::string dtype = "fp32";  // fp32, or bf16: both sides' forward under CPU autocast
  std::string python = MOETRON_PYTHON_DEFAULT;
};

std::string run_capture(const std::string& cmd) {
  std::array<char, 4096> buf{};
  std::string out;
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (pipe == nullptr) throw Error(str_cat("cannot run: ", cmd));
  while (std::fgets(buf.data(), buf.size(), pipe) != nullptr) out += buf.data();
  const int status = ::pclose(pipe);
  if (status != 0) throw Error(str_cat("command failed (status ", status, "): ", cmd, "\n", out));
  return out;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The dense matmul rate this process reaches at its thread count (median of 5 square GEMMs of
// size n in `dtype`), through ATen's torch::mm or through moetron's CPU products
// (ops::cpu::gemm, oneDNN for fp32): the roofline a matmul-bound training step is measured against.
double matmul_gflops(int64_t n, torch::ScalarType dtype, bool ours) {
  auto a = torch::randn({n, n}).to(dtype), b = torch::randn({n, n}).to(dtype);
  auto product = [&] { return ours ? ops::cpu::gemm(a, b) : torch::mm(a, b); };
  auto c = product();  // warm-up
  std::vector<double> rates;
  for (int i = 0; i < 5; ++i) {
    Stopwatch sw;
    c = product();
    rates.push_back(2.0 * static_cast<double>(n * n * n) / sw.seconds() / 1e9);
  }
  return median(rates);
}

int run_bench_model(const BenchModelArgs& args) {
  config::Config cfg = config::load_file(args.config->path, args.config->overrides);
  torch::set_num_threads(args.threads);
  // Same ids as the Python side: torch.manual_seed(seed); torch.randint(...) before the model.
  torch::manual_seed(args.seed);
  auto ids = torch::randint(0, cfg.model.vocab_size, {args.batch, args.seq}, torch::kLong);
  torch::manual_seed(args.seed + 1);
  model::DeepseekV3ForCausalLM m(cfg);
  m->train();
  // Like for like with HF: main next-token loss only (HF has no MTP and no balance loss).
  model::ForwardOptions opts;
  opts.compute_mtp = false;
  opts.compute_balance = false;

  // CPU time next to wall time: on a shared machine other processes inflate the wall time of
  // both sides, while the process CPU time (all threads) mostly measures the work itself.
  std::vector<double> times, cpu_times;
  double first_loss = 0;
  for (int i = 0; i < args.warmup + args.steps; ++i) {
    m->zero_grad();
    Stopwatch sw;
    const std::clock_t cpu_start = std::clock();
    {
      // MOETRON_PROFILE=trace.json records the last step's ops (chrome://tracing format).
      std::unique_ptr<torch::autograd::profiler::RecordProfile> profile;
      if (auto path = env::get("MOETRON_PROFILE"); path && i + 1 == args.warmup + args.steps) {
        profile = std::make_unique<torch::autograd::profiler::RecordProfile>(*path);
      }
      torch::Tensor loss;
      {
        train::AutocastGuard autocast(torch::Device(torch::kCPU), args.dtype);
        loss = m->forward(ids, ids, {}, {}, opts).loss;
      }
      loss.backward();
      if (i == 0) first_loss = loss.item<double>();
    }
    const double dt = sw.seconds();
    const double cpu_dt = static_cast<double>(std::clock() - cpu_start) / CLOCKS_PER_SEC;
    if (i >= args.warmup) {
      times.push_back(dt);
      cpu_times.push_back(cpu_dt);
    }
  }
  const double ours_ms = 1000 * median(times);
  const double ours_cpu_ms = 1000 * median(cpu_times);
  const double tokens = static_cast<double>(args.batch * args.seq);
  const auto flops = model::forward_flops_per_token(cfg, args.seq);
  std::cout << std::fixed << std::setprecision(2);
  std::cout << "config " << args.config->path << ": " << model::summary_line(cfg, args.seq) << "\n";
  std::cout << "batch " << args.batch << " x seq " << args.seq << ", threads " << args.threads
            << ", " << args.dtype << ", " << args.steps << " timed steps (median)\n";
  // A step is ~3x the forward FLOPs; against the dense matmul rate of this machine and thread
  // count, that bounds how fast any implementation of the same FLOPs can be.
  const double step_gflop = 3 * flops.total * tokens / 1e9;
  // The faster of ATen's rate (what HF gets) and ours (oneDNN for fp32 CPU products).
  const auto mm_dtype = args.dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32;
  const double aten_rate = matmul_gflops(1024, mm_dtype, false);
  const double our_rate = matmul_gflops(1024, mm_dtype, true);
  const double peak = std::max(aten_rate, our_rate);
  std::cout << "roofline: " << step_gflop << " GFLOP per step; " << args.dtype
            << " matmul 1024^3: ATen " << aten_rate << " GFLOP/s, moetron ("
            << ops::cpu::gemm_backend() << ") " << our_rate
            << " GFLOP/s -> a step needs >= " << 1000 * step_gflop / peak << " ms\n";
  std::cout << "moetron  step " << ours_ms << " ms  (" << std::setprecision(0)
            << tokens / (ours_ms / 1000) << " tokens/s, " << std::setprecision(2)
            << 3 * flops.total * tokens / (ours_ms / 1000) / 1e9 << " GFLOP/s, cpu " << ours_cpu_ms
            << " ms)  loss " << std::setprecision(6) << first_loss << "\n";
  if (!args.hf) return 0;

  // Export the same weights, then time HF on them.
  const std::string dir = str_cat("/tmp/moetron-bench-", ::getpid());
  remove_tree(dir);
  ckpt::save_hf_model(dir, m, torch::kFloat32);
  const std::string script = std::string(MOETRON_SOURCE_DIR_DEFAULT) + "/bench/hf_train_step.py";
  std::ostringstream cmd;
  cmd << "HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error OMP_NUM_THREADS=" << args.threads << " "
      << args.python << " " << script << " --model " << dir << " --batch " << args.batch
      << " --seq " << args.seq << " --steps " << args.steps << " --warmup " << args.warmup
      << " --threads " << args.threads << " --seed " << args.seed << " --dtype " << args.dtype
      << " 2>/dev/null";
  std::string out;
  try {
    out = run_capture(cmd.str());
  } catch (...) {
    remove_tree(dir);
    throw;
  }
  remove_tree(dir);
  const auto line = out.substr(out.rfind('{'));
  const auto hf = nlohmann::json::parse(line);
  const double hf_ms = hf.at("ms_per_step").get<double>();
  const double hf_cpu_ms = hf.at("cpu_ms_per_step").get<double>();
  std::cout << std::setprecision(2) << "hf       step " << hf_ms << " ms  (" << std::setprecision(0)
            << tokens / (hf_ms / 1000) << " tokens/s, cpu " << std::setprecision(2) << hf_cpu_ms
            << " ms)  loss " << std::setprecision(6) << hf.at("loss").get<double>() << "\n";
  std::cout << std::setprecision(3) << "ratio moetron/hf = " << ours_ms / hf_ms
            << "  (target <= 0.5; cpu time " << ours_cpu_ms / hf_cpu_ms
            << "; the roofline allows >= " << 1000 * step_gflop / peak / hf_ms << ")\n";
  return 0;
}

}  // namespace

Run setup_bench(CLI::App& app) {
  app.require_subcommand(1);
  auto args = std::make_shared<BenchModelArgs>();
  CLI::App* model = app.add_subcommand(
      "model", "Forward+backward step time of CONFIG's model (and HF transformers with --hf)");
  add_config_args(*model, args->config, true);
  model->add_option("--batch", args->batch, "Sequences per step")->capture_default_str();
  model->add_option("--seq", args->seq, "Tokens per sequence")->capture_default_str();
  model->add_option("--steps", args->steps, "Timed steps")->capture_default_str();
  model->add_option("--warmup", args->warmup, "Untimed steps first")->capture_default_str();
  model->add_option("--threads", args->threads, "CPU threads (both sides)")->capture_default_str();
  model->add_option("--seed", args->seed, "Seed of the ids and the init")->capture_default_str();
  model->add_flag("--hf", args->hf, "Also time HF transformers on the same weights and batch");
  model
      ->add_option("--dtype", args->dtype,
                   "fp32, or bf16: both sides' forward under CPU autocast (fp32 weights)")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  model->add_option("--python", args->python, "Python with transformers (default: the venv)");
  Run run_model = [args] { return run_bench_model(*args); };

  auto kargs = std::make_shared<BenchKernelsArgs>();
  CLI::App* kernels = app.add_subcommand(
      "kernels", "CUDA kernels vs the LibTorch ops they replace (exits 0 without a GPU)");
  kernels->add_option("--warmup", kargs->warmup, "Untimed calls first")->capture_default_str();
  kernels->add_option("--iters", kargs->iters, "Timed calls (mean)")->capture_default_str();
  kernels->add_option("--shapes", kargs->shapes, "Shapes: tiny, v2-lite, v3")
      ->delimiter(',')
      ->capture_default_str();
  auto targs = std::make_shared<BenchTrainArgs>();
  CLI::App* train = app.add_subcommand(
      "train",
      "Training-step throughput of CONFIG's model on random tokens: tokens/s, step time, "
      "MFU (--compare kernels: also with every kernels.* = reference)");
  train->footer(kMfuDefinition);
  add_config_args(*train, targs->config, true);
  train->add_option("--steps", targs->steps, "Timed steps")->capture_default_str();
  train->add_option("--warmup", targs->warmup, "Untimed steps first")->capture_default_str();
  train
      ->add_option("--compare", targs->compare,
                   "kernels: measure the config with every kernels.* = reference too (same run)")
      ->check(CLI::IsMember({"kernels"}));
  return [model, run_model, kernels, kargs, train, targs]() -> int {
    if (model->parsed()) return run_model();
    if (kernels->parsed()) return run_bench_kernels(*kargs);
    if (train->parsed()) return run_bench_train(*targs);
    throw Error(ErrorKind::kUsage, "bench: choose a benchmark (model, kernels, train)");
  };
}

}  // namespace moetron::cli
