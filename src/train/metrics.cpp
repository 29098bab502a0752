// Metrics file, expert-load statistics and the step line.
#include "moetron/train/metrics.h"

#include <torch/cuda.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "moetron/build_config.h"
#include "moetron/core/error.h"
#include "moetron/core/files.h"

#if MOETRON_HAVE_CUDA_KERNELS
#include <ATen/cuda/CUDAContext.h>
#endif

namespace moetron::train {

MetricsLog::MetricsLog(std::string path, int64_t resume_step) : path_(std::move(path)) {
  if (path_.empty()) return;  // a rank other than 0: rank 0 writes the metrics
  if (resume_step >= 0 && std::filesystem::exists(path_)) {
    std::istringstream in(read_text_file(path_));
    std::string kept, line;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      try {
        auto rec = nlohmann::json::parse(line);
        if (rec.contains("step") && rec["step"].get<int64_t>() > resume_step) continue;
      } catch (const nlohmann::json::exception&) {
        continue;  // a torn last line of a killed run
      }
      kept += line + "\n";
    }
    write_file_atomic(path_, kept);
  }
  out_.open(path_, std::ios::app);
  if (!out_) throw Error(str_cat("cannot open metrics file ", path_));
}

void MetricsLog::write(const nlohmann::json& record) {
  if (path_.empty()) return;
  out_ << record.dump() << '\n';
  out_.flush();
}

std::vector<ExpertLoad> expert_load(const torch::Tensor& counts_ME) {
  std::vector<ExpertLoad> out;
  if (!counts_ME.defined() || counts_ME.numel() == 0) return out;
  auto c = counts_ME.to(torch::kDouble).cpu();
  auto mean = c.mean(1);
  auto max = std::get<0>(c.max(1));
  auto std = c.std(1, /*unbiased=*/false);
  for (int64_t l = 0; l < c.size(0); ++l) {
    const double m = mean[l].item<double>();
    out.push_back(
        {m > 0 ? max[l].item<double>() / m : 0.0, m > 0 ? std[l].item<double>() / m : 0.0});
  }
  return out;
}

std::string format_duration(double seconds) {
  const auto s = static_cast<int64_t>(std::max(0.0, seconds));
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof(buf), "%ldh%02ldm", static_cast<long>(s / 3600),
                  static_cast<long>(s / 60 % 60));
  } else {
    std::snprintf(buf, sizeof(buf), "%ldm%02lds", static_cast<long>(s / 60),
                  static_cast<long>(s % 60));
  }
  return buf;
}

std::string format_step_line(const StepLine& l) {
  char tok[32];
  if (l.tokens_per_s >= 1e6) {
    std::snprintf(tok, sizeof(tok), "%.2fM", l.tokens_per_s / 1e6);
  } else if (l.tokens_per_s >= 1e3) {
    std::snprintf(tok, sizeof(tok), "%.1fk", l.tokens_per_s / 1e3);
  } else {
    std::snprintf(tok, sizeof(tok), "%.0f", l.tokens_per_s);
  }
  char mfu[16] = "-";
  if (l.mfu >= 0) std::snprintf(mfu, sizeof(mfu), "%.1f%%", 100 * l.mfu);
  char buf[256];
  std::snprintf(buf, sizeof(buf),
                "step %ld/%ld | loss %.4f | gnorm %.3f | lr %.2e | %s tok/s | mfu %s | eta %s",
                static_cast<long>(l.step), static_cast<long>(l.total_steps), l.loss, l.grad_norm,
                l.lr, tok, mfu, format_duration(l.eta_s).c_str());
  return buf;
}

double device_peak_flops(const torch::Device& device) {
#if MOETRON_HAVE_CUDA_KERNELS
  if (!device.is_cuda() || !torch::cuda::is_available()) return -1;
  const auto* props = at::cuda::getDeviceProperties(device.index() < 0 ? 0 : device.index());
  const std::string name = props->name;
  // Dense bf16 tensor-core peaks (NVIDIA data sheets; SXM parts).
  if (name.find("H200") != std::string::npos || name.find("H100") != std::string::npos) {
    return 989e12;
  }
  if (name.find("A100") != std::string::npos) return 312e12;
  return -1;
#else
  return -1;
#endif
}

}  // namespace moetron::train
