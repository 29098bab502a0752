// Op implementation selection and capability queries.
#include "moetron/ops/impl.h"

#include <torch/cuda.h>

#include <utility>
#include <vector>

#include "moetron/build_config.h"
#include "moetron/core/error.h"

#if MOETRON_HAVE_CUDA_KERNELS
#include <cuda_runtime_api.h>
#endif

namespace moetron::ops {

Impl parse_impl(std::string_view text, std::string_view key) {
  if (text == "reference") return Impl::kReference;
  if (text == "cuda") return Impl::kCuda;
  throw Error(ErrorKind::kConfig,
              str_cat(key, ": unknown implementation '", text, "'; expected reference or cuda"));
}

bool cuda_kernels_built() {
  return MOETRON_HAVE_CUDA_KERNELS != 0;
}

bool cuda_available() {
  return cuda_kernels_built() && torch::cuda::is_available();
}

std::optional<CudaDeviceInfo> cuda_device_info() {
  if (!cuda_available()) return std::nullopt;
#if MOETRON_HAVE_CUDA_KERNELS
  int device = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    return std::nullopt;
  }
  CudaDeviceInfo info;
  info.name = prop.name;
  info.sm_count = prop.multiProcessorCount;
  // Vendor peak HBM/GDDR bandwidths (GB/s); the first name fragment that matches wins.
  static const std::vector<std::pair<const char*, double>> kPeaks = {{"H200", 4800},
                                                                     {"GH200", 4000},
                                                                     {"H100 NVL", 3900},
                                                                     {"H100 PCIe", 2000},
                                                                     {"H100", 3350},
                                                                     {"H800", 3350},
                                                                     {"H20", 4000},
                                                                     {"B200", 8000},
                                                                     {"A100-SXM4-80GB", 2039},
                                                                     {"A100 80GB PCIe", 1935},
                                                                     {"A100", 1555},
                                                                     {"A800", 2039},
                                                                     {"L40S", 864},
                                                                     {"L4", 300},
                                                                     {"A10G", 600},
                                                                     {"RTX 4090", 1008}};
  for (const auto& [fragment, gbs] : kPeaks) {
    if (info.name.find(fragment) != std::string::npos) {
      info.peak_bandwidth_gbs = gbs;
      info.bandwidth_source = "table";
      return info;
    }
  }
  int clock_khz = 0, bus_bits = 0;
  if (cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, device) == cudaSuccess &&
      cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device) == cudaSuccess &&
      clock_khz > 0 && bus_bits > 0) {
    // Double data rate: two transfers per clock.
    info.peak_bandwidth_gbs = 2.0 * clock_khz * 1e3 * (bus_bits / 8.0) / 1e9;
    info.bandwidth_source = "clock x bus width";
  } else {
    info.bandwidth_source = "unknown";
  }
  return info;
#else
  return std::nullopt;
#endif
}

}  // namespace moetron::ops
