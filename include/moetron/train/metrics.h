// Training metrics: the JSONL metrics file (one record per line, appended, truncated to the
// resumed step on resume), per-layer expert-load statistics, and the fixed console step line.
#pragma once

#include <torch/types.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace moetron::train {

class MetricsLog {
 public:
  // Opens `path` for appending. With `resume_step` >= 0, records whose "step" is larger are
  // dropped first (a crashed run may have logged past its last checkpoint). An empty path
  // writes nothing (ranks other than 0 in a distributed run).
  MetricsLog(std::string path, int64_t resume_step);
  void write(const nlohmann::json& record);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::ofstream out_;
};

// Expert load of one MoE layer over a step: max/mean (1 = perfectly balanced) and the
// coefficient of variation of the per-expert assignment counts.
struct ExpertLoad {
  double max_over_mean = 0;
  double cv = 0;
};
std::vector<ExpertLoad> expert_load(const torch::Tensor& counts_ME);

struct StepLine {
  int64_t step = 0, total_steps = 0;
  double loss = 0, grad_norm = 0, lr = 0;
  double tokens_per_s = 0;
  double mfu = -1;  // < 0: unknown peak (printed as "-")
  double eta_s = 0;
};
// "step 120/200 | loss 2.3456 | gnorm 0.812 | lr 3.00e-04 | 5.1k tok/s | mfu - | eta 1m05s"
std::string format_step_line(const StepLine& line);
std::string format_duration(double seconds);

// Peak dense bf16 FLOP/s of the current CUDA device when known (H100/H200), else -1: MFU is
// reported only against a published peak, never guessed for CPUs.
double device_peak_flops(const torch::Device& device);

}  // namespace moetron::train
