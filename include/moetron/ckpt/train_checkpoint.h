// Training checkpoints: the full training state (model parameters and buffers, AdamW state by
// parameter name, RNG states, trainer/loader/metrics state, config) in checkpoints/step-<N>/,
// written crash-safely with a checksummed manifest, verified before anything is loaded.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>
#include <nlohmann/json.hpp>

namespace moetron::ckpt {

// Layout of one checkpoint directory (all written before manifest.json, which comes last).
inline constexpr const char* kModelFile = "model.safetensors";
inline constexpr const char* kOptimizerFile = "optimizer.safetensors";
inline constexpr const char* kRngFile = "rng.safetensors";
inline constexpr const char* kTrainerStateFile = "trainer_state.json";
inline constexpr const char* kConfigFile = "config.yaml";
inline constexpr const char* kManifestFile = "manifest.json";
inline constexpr const char* kLatestFile = "latest";  // in the checkpoints directory
inline constexpr int64_t kTrainCheckpointVersion = 1;

// What the trainer owns; the checkpoint stores it verbatim.
struct TrainState {
  int64_t step = 0;              // optimizer steps taken; names the directory step-<N>
  std::string loader_state;      // the data loader's own (JSON) text, opaque here
  nlohmann::json metrics_state;  // opaque
  nlohmann::json extra;          // anything else the trainer wants back
  std::string config_yaml;       // the resolved config text
};

// How the ranks of a distributed run share one checkpoint directory (on a filesystem they all
// see). Rank 0 writes the replicated state (model.safetensors and optimizer.safetensors hold
// everything but the expert shards under expert parallelism), the trainer state and the
// manifest; the first replica of each expert shard writes model.experts-<k>-of-<ep>.safetensors
// and optimizer.experts-<k>-of-<ep>.safetensors; every rank writes its RNG state. The manifest's
// "layout" records the shards (rows of the full stacked-expert tensors), so a checkpoint loads
// at any other ep / dp layout, including one process (export, eval).
struct CheckpointRanks {
  int64_t rank = 0, world = 1;
  int64_t ep_rank = 0, ep = 1;
  bool shard_writer = true;                         // this rank writes its expert shard (dp rank 0)
  std::function<void(const std::string&)> barrier;  // every rank; names the point
  std::function<std::string(const std::string&)> broadcast;  // rank 0's value, on every rank
};

// "<checkpoints_dir>/step-<step>".
std::string checkpoint_path(const std::string& checkpoints_dir, int64_t step);

// Writes step-<state.step> under `checkpoints_dir` (created if missing): everything goes into
// step-<N>.tmp.<pid>/ (each file fsynced), the manifest last, then the directory is renamed into
// place (an existing step-<N> is swapped out and removed only afterwards), `latest` is rewritten
// atomically, and older checkpoints beyond the newest `keep_last` are removed (keep_last <= 0:
// keep all; never the one just written nor the one `latest` named). Stale temporary directories
// of dead processes are removed first. The optimizer must be a torch::optim::AdamW whose
// parameters all belong to `model`. Returns the checkpoint directory.
// In a distributed run every rank calls it with `ranks`; it returns on every rank once the
// directory is installed.
std::string save_train_checkpoint(const std::string& checkpoints_dir, torch::nn::Module& model,
                                  torch::optim::Optimizer& optimizer, const TrainState& state,
                                  int64_t keep_last, const CheckpointRanks* ranks = nullptr);

// Verifies the manifest (sizes and SHA-256), then reads and checks everything against `model` and
// `optimizer` (names, shapes, dtypes, group membership) before changing any of them: on error
// nothing is modified and the message names the file and every offending name, plus the valid
// checkpoints next to this one. Restores parameters, buffers, AdamW state and hyper-parameters
// by parameter name, and the CPU (and CUDA, per device) generator states (`rank`'s own when the
// checkpoint has them, else rank 0's). A model with sharded experts reads its rows of the full
// tensors, whatever layout the checkpoint was saved at.
TrainState load_train_checkpoint(const std::string& checkpoint_dir, torch::nn::Module& model,
                                 torch::optim::Optimizer& optimizer, int64_t rank = 0);

// Only the model's parameters and buffers (e.g. to start SFT from a pretraining run): verifies
// the manifest, checks every name, shape and dtype before changing anything, then copies.
void load_checkpoint_model(const std::string& checkpoint_dir, torch::nn::Module& model);

// The checkpoint `train.resume: auto` resumes from: the one `latest` names if it verifies, else
// the newest that verifies (each skipped one is logged with its reason); nullopt when none does.
std::optional<std::string> find_resume_checkpoint(const std::string& checkpoints_dir);

// Checkpoint directories (exactly "step-<N>") in ascending step order, verified or not;
// temporary and partly deleted directories are never listed. Empty if the directory is missing.
std::vector<std::string> list_checkpoints(const std::string& checkpoints_dir);

// Checks the manifest and every file it lists (present, size, SHA-256) and that all required
// files are listed; throws moetron::Error naming the bad file.
void verify_checkpoint(const std::string& checkpoint_dir);

// The checkpoints of `checkpoints_dir` that verify, ascending by step.
std::vector<std::string> list_valid_checkpoints(const std::string& checkpoints_dir);

}  // namespace moetron::ckpt
