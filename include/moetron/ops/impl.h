// Which implementation of an op runs: the CPU/ATen reference (the specification) or our CUDA
// kernel. Chosen explicitly from config (`kernels.<op>: reference | cuda`).
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace moetron::ops {

enum class Impl { kReference, kCuda };

// Parses "reference" | "cuda"; a config Error naming `key` otherwise.
Impl parse_impl(std::string_view text, std::string_view key);
// True when this build has the CUDA kernels compiled in.
bool cuda_kernels_built();
// True when the CUDA kernels are built and LibTorch sees at least one GPU.
bool cuda_available();

// The current CUDA device, for benchmarks: its name, SM count and peak memory bandwidth (a table
// of known parts by name first, else memory clock x bus width; 0 when neither is known).
struct CudaDeviceInfo {
  std::string name;
  int sm_count = 0;
  double peak_bandwidth_gbs = 0;  // GB/s (1e9 bytes)
  std::string bandwidth_source;   // "table", "clock x bus width" or "unknown"
};
// nullopt without a device or without CUDA kernels in this build.
std::optional<CudaDeviceInfo> cuda_device_info();

}  // namespace moetron::ops
