// `moetron bench train CONFIG [overrides]`: the throughput of real training steps of CONFIG's
// model (forward, backward, clipping, AdamW, the bias update) on random tokens, with MFU.
#pragma once

#include <memory>
#include <string>

#include "command.h"

namespace moetron::cli {

struct BenchTrainArgs {
  std::shared_ptr<ConfigArgs> config = std::make_shared<ConfigArgs>();
  int steps = 10;       // timed steps
  int warmup = 2;       // untimed steps first
  std::string compare;  // "" or "kernels": also run with every kernels.* = reference
};

// Prints the measurement(s) and a final JSON line; on a CPU MFU is printed as "-".
int run_bench_train(const BenchTrainArgs& args);

// What MFU counts (the help text and the output say the same).
extern const char* const kMfuDefinition;

}  // namespace moetron::cli
