// Process groups for distributed training over PyTorch's c10d: TCPStore rendezvous, the Gloo
// backend on CPU and NCCL on GPUs, and the data-parallel x expert-parallel mesh. Every collective
// is named by the caller; a failure (a peer that died, or a timeout) becomes a moetron::Error
// naming this rank, the operation, the group and the peers that stopped making progress.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

#include "moetron/config/config.h"

namespace moetron::dist {

// The layout of `world` ranks: `ep` consecutive ranks form one expert-parallel group (they split
// the routed experts between them, ep_rank = rank % ep); the dp = world / ep ranks with the same
// ep_rank hold the same expert shard and form its expert-replica group. Every rank reads its own
// data: data parallelism is world-wide, dp only counts the replicas of each expert shard.
struct Mesh {
  int64_t world = 1, rank = 0, ep = 1;
  int64_t dp() const { return world / ep; }
  int64_t ep_rank() const { return rank % ep; }
  int64_t dp_rank() const { return rank / ep; }
  // Global ranks of this rank's expert-parallel group and of its expert-replica group.
  std::vector<int64_t> ep_group_ranks() const;
  std::vector<int64_t> dp_group_ranks() const;
};

// Checks world / ep against each other and the model (routed experts divisible by ep, no ep > 1
// for a dense model) with config errors naming dist.ep; returns the mesh of `rank`.
Mesh make_mesh(int64_t world, int64_t rank, const config::Config& cfg);

enum class ReduceOp { kSum, kMax, kMin };

class Comm;

// One process group. With size 1 every operation is a local no-op (or a copy).
class Group {
 public:
  const std::string& name() const { return name_; }
  int64_t rank() const { return rank_; }  // within the group
  int64_t size() const { return static_cast<int64_t>(ranks_.size()); }
  const std::vector<int64_t>& ranks() const { return ranks_; }  // global ranks

  // In place on every tensor (same shapes and dtypes on every member).
  void all_reduce(std::vector<torch::Tensor>& tensors, ReduceOp op, const std::string& what);
  void all_reduce(torch::Tensor& tensor, ReduceOp op, const std::string& what);
  // Uneven all-to-all along dim 0: rows [Σ in_splits[<p], +in_splits[p]) go to member p; the
  // result holds Σ out_splits rows, member q's rows at offset Σ out_splits[<q]. Not
  // differentiable (see ep_dispatcher.h for the autograd wrapper).
  torch::Tensor all_to_all(const torch::Tensor& input, const std::vector<int64_t>& in_splits,
                           const std::vector<int64_t>& out_splits, const std::string& what);
  void broadcast(torch::Tensor& tensor, int64_t root, const std::string& what);
  // An all-reduce of one element: works on every backend and device.
  void barrier(const std::string& what);
  // Where this group's tensors must live (CUDA for NCCL, CPU for Gloo and local groups).
  torch::Device comm_device() const;

 private:
  friend class Comm;
  void run(const std::string& op, const std::string& what, const std::function<void()>& body);

  struct Backend;  // the c10d backend (absent for a group of one)
  Comm* comm_ = nullptr;
  std::string name_;
  int64_t rank_ = 0;
  std::vector<int64_t> ranks_;
  std::shared_ptr<Backend> backend_;
};

struct CommOptions {
  int64_t rank = 0, world = 1;
  std::string master_addr = "127.0.0.1";
  int64_t master_port = 29500;
  std::string backend = "auto";  // auto | gloo | nccl
  int64_t timeout_s = 300;
  torch::Device device{torch::kCPU};  // tensors' device: NCCL needs CUDA, Gloo takes CPU
  // Create the store and real backends even for a world of one (tests of the NCCL / Gloo path
  // on a single device).
  bool force_backend = false;
};

class Comm {
 public:
  // world == 1: no store, no backend, every group is local. Otherwise rendezvous at
  // master_addr:master_port (rank 0 hosts the TCPStore; a missing rank is an error after
  // timeout_s naming how many joined), then creates the world group and the mesh's groups.
  Comm(const CommOptions& options, const Mesh& mesh);
  ~Comm();
  Comm(const Comm&) = delete;
  Comm& operator=(const Comm&) = delete;

  const Mesh& mesh() const { return mesh_; }
  int64_t rank() const { return mesh_.rank; }
  int64_t world_size() const { return mesh_.world; }
  bool distributed() const { return mesh_.world > 1; }
  const std::string& backend_name() const { return backend_name_; }
  int64_t timeout_s() const { return options_.timeout_s; }
  const torch::Device& device() const { return options_.device; }  // where collectives run
  const CommOptions& options() const { return options_; }

  Group& world() { return world_; }
  Group& ep() { return ep_; }  // the ranks that split the experts between them
  Group& dp() { return dp_; }  // the replicas of this rank's expert shard

 private:
  friend class Group;
  Group make_group(const std::string& name, const std::vector<int64_t>& ranks);
  // What the other ranks last reported (for error messages), e.g. "rank 2: no progress report
  // for 12 s (last: #41 all_reduce grads on world)".
  std::string peer_report(const Group& group);
  void note_progress(const std::string& op, const std::string& what, const std::string& group);

  CommOptions options_;
  Mesh mesh_;
  std::string backend_name_ = "local";
  struct State;  // the TCPStore and the progress reporter
  std::unique_ptr<State> state_;
  Group world_, ep_, dp_;
};

}  // namespace moetron::dist

namespace moetron::dist {

// Group rank 0's `value` on every member (two broadcasts: length, bytes).
std::string broadcast_string(Group& group, const std::string& value, const std::string& what);

// Runs `fn` on group rank 0 only (e.g. creating files every rank then reads); a moetron::Error
// it throws is rethrown, with its kind, on every member, so no rank waits on a failed peer.
void on_rank0(Group& group, const std::function<void()>& fn, const std::string& what);

// This process's place in a distributed run, from the launcher's environment (torchrun or SLURM
// variables; see read_dist_env) and the config's dist section: a world of one without them.
// `device` is the configured device; on CUDA each rank takes cuda:LOCAL_RANK (returned in
// *rank_device) and makes it current. Logs carry the rank from here on. The process groups are
// created once per process and shared by later calls (the stages of `moetron run`), which must
// ask for the same dist.* settings and device.
std::shared_ptr<Comm> init_from_env(const config::Config& cfg, const torch::Device& device,
                                    torch::Device* rank_device);

}  // namespace moetron::dist
