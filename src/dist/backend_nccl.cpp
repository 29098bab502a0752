// The NCCL backend (CUDA tensors): ProcessGroupNCCL, whose all-to-all with uneven splits is
// NCCL grouped send/recv. Compiled only in CUDA builds (backend_nccl_stub.cpp otherwise).
#define USE_C10D_NCCL 1
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include "backends.h"

namespace moetron::dist::detail {

c10::intrusive_ptr<c10d::Backend> make_nccl(const c10::intrusive_ptr<c10d::Store>& store,
                                            int64_t rank, int64_t size,
                                            std::chrono::milliseconds timeout,
                                            const torch::Device& device) {
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = timeout;
  (void)device;  // the communicator binds to the current device (set from LOCAL_RANK)
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, static_cast<int>(rank),
                                                     static_cast<int>(size), opts);
}

}  // namespace moetron::dist::detail
