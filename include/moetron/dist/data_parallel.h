// Data parallelism over the mesh: every rank trains on its own rows, gradients of replicated
// parameters are summed over all ranks and those of expert shards over the shard's replicas, in
// flat buckets; the global gradient norm, expert counts and metrics are reduced the same way.
#pragma once

#include <cstdint>
#include <vector>

#include "moetron/dist/comm.h"
#include "moetron/model/model.h"
#include "moetron/optim/optimizer.h"

namespace moetron::dist {

// Trainable parameters split by who shares them: experts (the stacked routed-expert tensors,
// sharded under EP) and the rest (identical on every rank).
struct ParamSplit {
  std::vector<torch::Tensor> replicated;
  std::vector<torch::Tensor> experts;
};
ParamSplit split_parameters(model::DeepseekV3ForCausalLM& model);

class DataParallel {
 public:
  // bucket_mb: the size of the flat buffers gradients are reduced in.
  DataParallel(Comm& comm, model::DeepseekV3ForCausalLM& model, double bucket_mb = 25.0);

  // After backward, before clipping: grad <- (Σ over the ranks sharing the parameter) / world,
  // i.e. the gradient of the mean of the ranks' losses. A gradient missing on some ranks counts
  // as zero there; one missing on every rank stays missing.
  void all_reduce_gradients();
  // Global L2 norm (replicated counted once, every expert shard once) and clipping.
  optim::ClipResult clip_grad_norm(double max_norm);
  // Sums [M, E] per-rank expert counts over all ranks (for the bias update and load metrics).
  torch::Tensor global_counts(const torch::Tensor& counts_ME);
  // Sum / max over ranks of a few scalars (one all-reduce each; no-ops for a world of one).
  std::vector<double> sum(const std::vector<double>& values, const std::string& what);
  std::vector<double> max(const std::vector<double>& values, const std::string& what);
  int64_t max(int64_t value, const std::string& what);

  Comm& comm() { return comm_; }

 private:
  void reduce_buckets(const std::vector<torch::Tensor>& params, Group& group,
                      const std::string& what);

  Comm& comm_;
  ParamSplit params_;
  int64_t bucket_bytes_;
};

}  // namespace moetron::dist
