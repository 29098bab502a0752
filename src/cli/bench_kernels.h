// `moetron bench kernels`: our CUDA kernels against the LibTorch composite ops they replace.
#pragma once

#include <string>
#include <vector>

namespace moetron::cli {

struct BenchKernelsArgs {
  int warmup = 10;
  int iters = 50;
  std::vector<std::string> shapes = {"tiny", "v2-lite", "v3"};
};

// Prints one table per shape; exits 0 with a message when no GPU (or no kernels) is present.
int run_bench_kernels(const BenchKernelsArgs& args);

}  // namespace moetron::cli
