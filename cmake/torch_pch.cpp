// Anchor translation unit for the shared precompiled <torch/torch.h> (see cmake/moetron.cmake).
#include <torch/torch.h>

namespace moetron::detail {
int torch_pch_anchor() {
  return 0;
}
}  // namespace moetron::detail
