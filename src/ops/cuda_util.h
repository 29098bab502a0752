// Private helpers of the ops that launch kernels: the no-kernels error, launch checks, the
// current stream of a tensor's device. CUDA headers only in builds with kernels.
#pragma once

#include "moetron/build_config.h"
#include "moetron/core/error.h"

#if MOETRON_HAVE_CUDA_KERNELS
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

namespace moetron::ops::detail {

// `key` is the config key that chose the implementation, e.g. "kernels.permute".
[[noreturn]] inline void throw_no_cuda_kernels(const char* key) {
  throw Error(ErrorKind::kConfig,
              str_cat(key,
                      ": implementation 'cuda' requested but this build has no CUDA kernels "
                      "(configure with MOETRON_WITH_CUDA=ON); use 'reference'"));
}

#if MOETRON_HAVE_CUDA_KERNELS
inline void check_launch(int err, const char* what) {
  MOETRON_CHECK(err == 0, what,
                ": CUDA launch failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)), " (",
                err, ")");
}

inline cudaStream_t stream_of(const torch::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}
#endif

}  // namespace moetron::ops::detail
