// CPU-only builds: NCCL is unavailable, which is a config error naming the alternative.
#include "backends.h"
#include "moetron/core/error.h"

namespace moetron::dist::detail {

c10::intrusive_ptr<c10d::Backend> make_nccl(const c10::intrusive_ptr<c10d::Store>&, int64_t,
                                            int64_t, std::chrono::milliseconds,
                                            const torch::Device&) {
  throw Error(ErrorKind::kConfig,
              "dist.backend=nccl: this build has no CUDA (configure with MOETRON_WITH_CUDA=ON); "
              "use dist.backend=gloo on CPU");
}

}  // namespace moetron::dist::detail
