// Private helpers of the ops that launch kernels: the no-kernels error, launch checks, the
// current stream of a tensor's device, the attention kernels' dtype and
// strides. CUDA headers only in builds with kernels.
#pragma once

#include "moetron/build_config.h"
#include "moetron/core/error.h"

#if MOETRON_HAVE_CUDA_KERNELS
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include "moetron/kernels/attention.h"
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

// `t`, or a contiguous copy unless its last dim has unit stride (all the attention kernels need).
inline torch::Tensor unit_last(const torch::Tensor& t) {
  return t.stride(-1) == 1 ? t : t.contiguous();
}

// The attention kernels' element type of `t`; other dtypes are a config error naming `key`.
inline kernels::AttnDType attn_dtype(const torch::Tensor& t, const char* key) {
  switch (t.scalar_type()) {
    case torch::kFloat32:
      return kernels::AttnDType::kFloat32;
    case torch::kBFloat16:
      return kernels::AttnDType::kBFloat16;
    case torch::kFloat16:
      return kernels::AttnDType::kFloat16;
    default:
      throw Error(ErrorKind::kConfig, str_cat(key, ": cuda runs fp32, bf16 and fp16, got ",
                                              t.dtype(), "; use reference"));
  }
}
#endif

}  // namespace moetron::ops::detail
