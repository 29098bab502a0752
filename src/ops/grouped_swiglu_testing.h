// Test seam of grouped_swiglu's CUDA implementation (builds with CUDA kernels only): with a host
// executor set, Impl::kCuda also runs on CPU tensors and hands each grouped call's problems
// (host pointers) to the executor instead of cuBLAS. CPU tests use it to check the problem lists
// the op builds and the launcher's cuBLAS arguments (kernels::plan_grouped_gemm) against the
// reference without a device. Never set outside tests.
#pragma once

#include "moetron/build_config.h"

#if MOETRON_HAVE_CUDA_KERNELS
#include <cstdint>

#include "moetron/kernels/grouped_gemm.h"

namespace moetron::ops::detail {

using GroupedGemmHostExecutor = void (*)(const kernels::GemmProblem* problems, int64_t count,
                                         kernels::GemmDType dtype);
// nullptr restores cuBLAS.
void set_grouped_gemm_host_executor(GroupedGemmHostExecutor executor);

}  // namespace moetron::ops::detail
#endif
