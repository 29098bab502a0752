// Internal: the three tensor files of a training checkpoint (model, AdamW state, RNG). Each
// reader is split into prepare (open, check everything, change nothing) and apply (copy in),
// so a load that fails leaves the model, optimizer and generators untouched.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/module.h>
#include <torch/optim/adamw.h>

#include "moetron/ckpt/safetensors_format.h"

namespace moetron::ckpt::detail {

// The optimizer as AdamW, or a moetron::Error naming what is supported.
torch::optim::AdamW& as_adamw(torch::optim::Optimizer& optimizer);

// ---- expert sharding --------------------------------------------------------------------

// Rows [first, first + count) of a tensor whose full first dimension is `total` (the stacked
// routed experts under expert parallelism).
struct ShardSpec {
  int64_t first = 0, count = 0, total = 0;
};
// Sharded parameters of `model` by name (the stacked experts of every MoE layer that holds
// fewer than all of them); empty for an unsharded model.
std::map<std::string, ShardSpec> expert_placement(torch::nn::Module& model);
// Which tensors a writer puts in its file.
enum class Subset { kAll, kUnsharded, kSharded };

// The tensors of one kind ("model" or "optimizer") of a checkpoint: the main file plus, for a
// checkpoint saved with expert parallelism, one file per expert shard whose tensors hold rows
// [first, first + count) of the full tensors (0-d tensors, e.g. AdamW step counts, are copies).
// Names and shapes are those of the full, unsharded tensors.
class TensorSource {
 public:
  struct Shard {
    std::string file;
    int64_t first = 0, count = 0;
  };
  TensorSource(const std::string& dir, const std::string& main_file,
               const std::vector<Shard>& shards);
  bool contains(const std::string& name) const { return index_.count(name) > 0; }
  std::vector<std::string> names() const;
  // Full shape and dtype.
  const TensorInfo& info(const std::string& name) const;
  // Rows [first, first + count) of the full tensor (count < 0: all) as a CPU tensor (a view of
  // the mapped file when one piece covers it).
  torch::Tensor read(const std::string& name, int64_t first = 0, int64_t count = -1) const;
  const std::map<std::string, std::string>& metadata() const { return files_[0]->metadata(); }
  const std::string& path() const { return files_[0]->path(); }

 private:
  struct Piece {
    size_t file;
    int64_t first, count;
  };
  struct Entry {
    TensorInfo info;            // full
    std::vector<Piece> pieces;  // one for unsharded tensors
  };
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, Entry> index_;
};

// ---- model: every parameter and buffer under the module's own names --------------------
void save_model_state(const std::string& path, torch::nn::Module& model,
                      Subset subset = Subset::kAll);

struct PreparedModel {
  std::shared_ptr<TensorSource> source;
  struct Copy {
    torch::Tensor dst;
    std::string name;
    int64_t first = 0, count = -1;  // rows of the full tensor this model holds
  };
  std::vector<Copy> copies;
};
// Throws a config Error listing every missing / unexpected / mismatched (shape, dtype) name.
// A sharded model (expert_placement) takes its rows of the full tensors.
PreparedModel prepare_model_load(std::shared_ptr<TensorSource> source, torch::nn::Module& model);
void apply_model_load(PreparedModel& prepared);

// ---- AdamW state by parameter name, hyper-parameters in the metadata -------------------
void save_optimizer_state(const std::string& path, torch::nn::Module& model,
                          torch::optim::AdamW& optimizer, Subset subset = Subset::kAll);

struct PreparedOptimizerParam {
  torch::Tensor param;
  std::string name;
  bool has_state = false;
  bool has_max = false;
  int64_t first = 0, count = -1;  // rows of the full state this parameter holds
};
struct PreparedOptimizer {
  std::shared_ptr<TensorSource> source;
  std::vector<PreparedOptimizerParam> params;
  std::vector<torch::optim::AdamWOptions> group_options;  // one per param group, from the file
};
// Throws listing every parameter without a name in `model`, group membership differences,
// state of the wrong shape/dtype, incomplete state, and state for unknown names.
PreparedOptimizer prepare_optimizer_load(std::shared_ptr<TensorSource> source,
                                         torch::nn::Module& model, torch::optim::AdamW& optimizer);
void apply_optimizer_load(PreparedOptimizer& prepared, torch::optim::AdamW& optimizer);

// ---- RNG: the CPU default generator and every CUDA device's ------------------------------
void save_rng_state(const std::string& path);

struct PreparedRng {
  torch::Tensor cpu;
  std::vector<torch::Tensor> cuda;  // per device, only those present now and in the file
};
PreparedRng prepare_rng_load(const std::string& path);
void apply_rng_load(const PreparedRng& prepared);

}  // namespace moetron::ckpt::detail
