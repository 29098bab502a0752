// Internal: constructing the c10d backends. Gloo and NCCL live in their own translation units
// because their headers need the USE_C10D_* macros (and NCCL the CUDA headers).
#pragma once

#include <chrono>
#include <string>

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

namespace moetron::dist::detail {

c10::intrusive_ptr<c10d::Backend> make_gloo(const c10::intrusive_ptr<c10d::Store>& store,
                                            int64_t rank, int64_t size,
                                            std::chrono::milliseconds timeout,
                                            const std::string& master_addr);

// A config error when this build has no CUDA.
c10::intrusive_ptr<c10d::Backend> make_nccl(const c10::intrusive_ptr<c10d::Store>& store,
                                            int64_t rank, int64_t size,
                                            std::chrono::milliseconds timeout,
                                            const torch::Device& device);

}  // namespace moetron::dist::detail
