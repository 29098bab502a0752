// Which implementation of an op runs: the CPU/ATen reference (the specification) or our CUDA
// kernel. Chosen explicitly from config (`kernels.<op>: reference | cuda`).
#pragma once

#include <string_view>

namespace moetron::ops {

enum class Impl { kReference, kCuda };

// Parses "reference" | "cuda"; a config Error naming `key` otherwise.
Impl parse_impl(std::string_view text, std::string_view key);
// True when this build has the CUDA kernels compiled in.
bool cuda_kernels_built();
// True when the CUDA kernels are built and LibTorch sees at least one GPU.
bool cuda_available();

}  // namespace moetron::ops
