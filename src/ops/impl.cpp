// Op implementation selection and capability queries.
#include "moetron/ops/impl.h"

#include <torch/cuda.h>

#include "moetron/build_config.h"
#include "moetron/core/error.h"

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

}  // namespace moetron::ops
