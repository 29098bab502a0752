// The process group of a training process, from its environment.
#include <c10/cuda/CUDAFunctions.h>
#include <torch/cuda.h>

#include <mutex>

#include "moetron/core/error.h"
#include "moetron/core/logging.h"
#include "moetron/dist/comm.h"
#include "moetron/dist/env.h"

namespace moetron::dist {

std::shared_ptr<Comm> init_from_env(const config::Config& cfg, const torch::Device& device,
                                    torch::Device* rank_device) {
  static std::mutex mu;
  static std::shared_ptr<Comm> shared;
  std::lock_guard<std::mutex> lock(mu);
  const DistEnv env = read_dist_env();
  torch::Device dev = device;
  if (dev.is_cuda() && env.distributed()) {
    const int64_t count = static_cast<int64_t>(torch::cuda::device_count());
    MOETRON_CHECK_CONFIG(count > 0, "no CUDA device visible to rank ", env.rank);
    MOETRON_CHECK_CONFIG(env.local_rank < count, "rank ", env.rank, " has LOCAL_RANK ",
                         env.local_rank, " but only ", count,
                         " CUDA devices are visible; start at most one rank per GPU");
    dev = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank));
    c10::cuda::set_device(dev.index());
  }
  if (rank_device) *rank_device = dev;
  if (env.distributed()) log::set_rank(static_cast<int>(env.rank));
  CommOptions o;
  o.rank = env.rank;
  o.world = env.world_size;
  o.master_addr = env.master_addr;
  o.master_port = env.master_port;
  o.backend = cfg.dist.backend;
  o.timeout_s = cfg.dist.timeout_s;
  o.device = dev;
  const Mesh mesh = make_mesh(env.world_size, env.rank, cfg);
  if (!env.distributed()) return std::make_shared<Comm>(o, mesh);
  if (shared) {
    const auto& had = shared->options();
    MOETRON_CHECK_CONFIG(shared->mesh().ep == mesh.ep && had.backend == o.backend &&
                             had.timeout_s == o.timeout_s && had.device == o.device,
                         "every stage of one distributed process must use the same dist.* "
                         "settings and device (the process groups are created once): had "
                         "dist.ep=",
                         shared->mesh().ep, " dist.backend=", had.backend, " on ", had.device,
                         ", now dist.ep=", mesh.ep, " dist.backend=", o.backend, " on ", o.device);
    return shared;
  }
  shared = std::make_shared<Comm>(o, mesh);
  return shared;
}

}  // namespace moetron::dist
