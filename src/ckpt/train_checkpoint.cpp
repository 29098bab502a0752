// Training checkpoint directories: crash-safe save (temporary directory, manifest last, rename,
// `latest`, pruning), manifest verification, resume discovery, and the all-or-nothing load.
#include "moetron/ckpt/train_checkpoint.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>

#include "moetron/ckpt/sha256.h"
#include "moetron/core/error.h"
#include "moetron/core/files.h"
#include "moetron/core/logging.h"
#include "strict_json.h"
#include "train_state_io.h"

namespace moetron::ckpt {

namespace fs = std::filesystem;

namespace {

constexpr const char* kManifestFormat = "moetron-train-checkpoint";
constexpr const char* kStepPrefix = "step-";
constexpr const char* kTmpMarker = ".tmp.";
constexpr int kTrainerStateMaxDepth = 64;

// The data files, in the order they are written; the manifest lists exactly these.
const std::vector<std::string>& data_files() {
  static const std::vector<std::string> files = {kModelFile, kOptimizerFile, kRngFile,
                                                 kTrainerStateFile, kConfigFile};
  return files;
}

std::string join(const std::string& dir, const std::string& name) {
  return (fs::path(dir) / name).string();
}

// The step of a directory named exactly "step-<digits>", else -1.
int64_t parse_step_name(const std::string& name) {
  const size_t prefix = std::strlen(kStepPrefix);
  if (name.size() <= prefix || name.compare(0, prefix, kStepPrefix) != 0) return -1;
  if (name.size() - prefix > 18) return -1;  // fits int64
  int64_t step = 0;
  for (size_t i = prefix; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

std::string dir_name(const std::string& path) {
  fs::path p = fs::path(path).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();  // "step-3/"
  return p.filename().string();
}

std::string parent_of(const std::string& checkpoint_dir) {
  fs::path p = fs::path(checkpoint_dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  const auto parent = p.parent_path();
  return parent.empty() ? "." : parent.string();
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

void rename_or_throw(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) {
    throw Error(str_cat("cannot rename ", from, " to ", to, ": ", std::strerror(errno)));
  }
}

// Leftovers of interrupted saves and prunes are "step-*.tmp.<pid>" directories and
// "latest.tmp.<pid>" files;
// they are garbage once that process is gone (or is us: a failed earlier save).
void remove_stale_temporaries(const std::string& checkpoints_dir) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(checkpoints_dir, ec)) {
    const std::string name = entry.path().filename().string();
    const size_t at = name.rfind(kTmpMarker);
    const bool ours = name.rfind(kStepPrefix, 0) == 0 || name.rfind(kLatestFile, 0) == 0;
    if (at == std::string::npos || !ours) continue;
    const std::string pid_text = name.substr(at + std::strlen(kTmpMarker));
    if (pid_text.empty() || pid_text.size() > 9 ||
        !std::all_of(pid_text.begin(), pid_text.end(), ::isdigit)) {
      continue;
    }
    const pid_t pid = static_cast<pid_t>(std::stol(pid_text));
    const bool alive = pid != ::getpid() && (::kill(pid, 0) == 0 || errno == EPERM);
    if (alive) continue;  // another live process may be writing it
    log::info("removing the leftover of an interrupted checkpoint save: ", entry.path().string());
    remove_tree(entry.path().string());
  }
}

// Removes a checkpoint directory so that a crash midway never leaves a half-deleted
// "step-<N>": rename it to a temporary name first (atomic), then delete the tree.
void remove_checkpoint_dir(const std::string& path) {
  const std::string doomed = str_cat(path, kTmpMarker, ::getpid());
  remove_tree(doomed);
  rename_or_throw(path, doomed);
  fsync_directory(parent_of(path));
  remove_tree(doomed);
}

// Puts the complete `tmp` directory at `final_dir`. An existing `final_dir` (a re-run of the
// same step) is swapped out atomically with renameat2(RENAME_EXCHANGE), so there is no moment
// without a complete step-<N>; filesystems without exchange get move-aside + rename.
void install_directory(const std::string& tmp, const std::string& final_dir) {
  if (!is_directory(final_dir)) {
    rename_or_throw(tmp, final_dir);
    return;
  }
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) == 0) {
    fsync_directory(parent_of(final_dir));
    remove_tree(tmp);  // now holds the replaced checkpoint
    return;
  }
  if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP) {
    throw Error(str_cat("cannot exchange ", tmp, " with ", final_dir, ": ", std::strerror(errno)));
  }
  const std::string aside = str_cat(final_dir, ".old", kTmpMarker, ::getpid());
  remove_tree(aside);
  rename_or_throw(final_dir, aside);
  rename_or_throw(tmp, final_dir);
  fsync_directory(parent_of(final_dir));
  remove_tree(aside);
}

uint64_t file_size(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    throw Error(str_cat(path, ": missing or unreadable: ", std::strerror(errno)));
  }
  if (!S_ISREG(st.st_mode)) throw Error(str_cat(path, ": not a regular file"));
  return static_cast<uint64_t>(st.st_size);
}

nlohmann::json read_manifest(const std::string& checkpoint_dir) {
  const std::string path = join(checkpoint_dir, kManifestFile);
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    throw Error(str_cat(path,
                        ": missing (the save did not finish, or the directory is not a "
                        "training checkpoint)"));
  }
  return detail::parse_json_strict(read_text_file(path), path, /*max_depth=*/4);
}

void prune(const std::string& checkpoints_dir, int64_t keep_last, const std::string& keep) {
  if (keep_last <= 0) return;
  const auto all = list_checkpoints(checkpoints_dir);
  if (static_cast<int64_t>(all.size()) <= keep_last) return;
  const auto keep_name = dir_name(keep);
  for (size_t i = 0; i + keep_last < all.size(); ++i) {
    if (dir_name(all[i]) == keep_name) continue;
    log::info("removing old checkpoint ", all[i], " (checkpoint.keep_last=", keep_last, ")");
    remove_checkpoint_dir(all[i]);
  }
}

std::string valid_list_text(const std::string& checkpoints_dir) {
  const auto valid = list_valid_checkpoints(checkpoints_dir);
  if (valid.empty()) return str_cat("no valid checkpoint in ", checkpoints_dir);
  std::string text = str_cat("valid checkpoints in ", checkpoints_dir, ":");
  for (auto it = valid.rbegin(); it != valid.rend(); ++it) text += " " + dir_name(*it);
  return text;
}

std::string shard_file(const char* kind, int64_t index, int64_t count) {
  return str_cat(kind, ".experts-", index, "-of-", count, ".safetensors");
}

std::string rank_rng_file(int64_t rank) {
  return str_cat("rng.rank-", rank, ".safetensors");
}

// The model or optimizer tensors of a verified checkpoint, shards included.
std::shared_ptr<detail::TensorSource> tensor_source(const std::string& checkpoint_dir,
                                                    const nlohmann::json& manifest,
                                                    const char* kind, const char* main_file) {
  std::vector<detail::TensorSource::Shard> shards;
  const std::string manifest_path = join(checkpoint_dir, kManifestFile);
  if (manifest.contains("layout")) {
    try {
      const auto& layout = manifest.at("layout");
      const int64_t ep = layout.at("ep").get<int64_t>();
      for (const auto& shard : layout.at("expert_shards")) {
        const int64_t index = shard.at("index").get<int64_t>();
        shards.push_back({shard_file(kind, index, ep), shard.at("first").get<int64_t>(),
                          shard.at("count").get<int64_t>()});
      }
    } catch (const nlohmann::json::exception& e) {
      throw Error(str_cat(manifest_path, ": malformed layout: ", e.what()));
    }
  }
  return std::make_shared<detail::TensorSource>(checkpoint_dir, main_file, shards);
}

}  // namespace

std::string checkpoint_path(const std::string& checkpoints_dir, int64_t step) {
  return join(checkpoints_dir, str_cat(kStepPrefix, step));
}

std::vector<std::string> list_checkpoints(const std::string& checkpoints_dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(checkpoints_dir, ec)) {
    const int64_t step = parse_step_name(entry.path().filename().string());
    if (step >= 0 && is_directory(entry.path().string())) {
      found.emplace_back(step, entry.path().string());
    }
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (auto& f : found) out.push_back(std::move(f.second));
  return out;
}

void verify_checkpoint(const std::string& checkpoint_dir) {
  MOETRON_CHECK(is_directory(checkpoint_dir), checkpoint_dir, ": not a directory");
  const nlohmann::json manifest = read_manifest(checkpoint_dir);
  const std::string manifest_path = join(checkpoint_dir, kManifestFile);
  try {
    MOETRON_CHECK(manifest.is_object() && manifest.value("format", "") == kManifestFormat,
                  "expected format \"", kManifestFormat, "\"");
    const int64_t version = manifest.at("version").get<int64_t>();
    MOETRON_CHECK(version == kTrainCheckpointVersion, "format version ", version,
                  " is not supported by this build (reads version ", kTrainCheckpointVersion, ")");
    const int64_t step = manifest.at("step").get<int64_t>();
    const int64_t named = parse_step_name(dir_name(checkpoint_dir));
    MOETRON_CHECK(named < 0 || named == step, "step ", step, " but the directory is step-", named);
    MOETRON_CHECK(manifest.at("files").is_object(), "'files' must be an object");
  } catch (const nlohmann::json::exception& e) {
    throw Error(str_cat(manifest_path, ": malformed manifest: ", e.what()));
  } catch (const Error& e) {
    throw Error(str_cat(manifest_path, ": ", e.what()));
  }
  const auto& files = manifest.at("files");
  for (const auto& name : data_files()) {
    MOETRON_CHECK(files.contains(name), manifest_path, ": does not list ", name);
  }
  for (const auto& [name, entry] : files.items()) {
    MOETRON_CHECK(name.find('/') == std::string::npos && name != "." && name != "..", manifest_path,
                  ": file name '", name, "' is not a plain name");
    const std::string path = join(checkpoint_dir, name);
    uint64_t want_size = 0;
    std::string want_sha;
    try {
      want_size = entry.at("bytes").get<uint64_t>();
      want_sha = entry.at("sha256").get<std::string>();
    } catch (const nlohmann::json::exception& e) {
      throw Error(str_cat(manifest_path, ": malformed entry for ", name, ": ", e.what()));
    }
    const uint64_t size = file_size(path);
    MOETRON_CHECK(size == want_size, path, ": ", size, " bytes, the manifest says ", want_size,
                  " (truncated or overwritten)");
    const std::string sha = sha256_file(path);
    MOETRON_CHECK(sha == want_sha, path, ": SHA-256 ", sha, " differs from the manifest's ",
                  want_sha, " (the file is corrupted)");
  }
}

std::vector<std::string> list_valid_checkpoints(const std::string& checkpoints_dir) {
  std::vector<std::string> valid;
  for (const auto& dir : list_checkpoints(checkpoints_dir)) {
    try {
      verify_checkpoint(dir);
      valid.push_back(dir);
    } catch (const Error&) {
    }
  }
  return valid;
}

std::string save_train_checkpoint(const std::string& checkpoints_dir, torch::nn::Module& model,
                                  torch::optim::Optimizer& optimizer, const TrainState& state,
                                  int64_t keep_last, const CheckpointRanks* ranks) {
  MOETRON_CHECK(state.step >= 0, "checkpoint step must be >= 0, got ", state.step);
  const CheckpointRanks single;
  const CheckpointRanks& r = ranks ? *ranks : single;
  const bool main_rank = r.rank == 0;
  const bool sharded = r.ep > 1;
  MOETRON_CHECK(r.world == 1 || (r.barrier && r.broadcast),
                "a distributed checkpoint save needs barrier and broadcast");
  const auto start = std::chrono::steady_clock::now();
  torch::optim::AdamW& adamw = detail::as_adamw(optimizer);
  const std::string final_dir = checkpoint_path(checkpoints_dir, state.step);

  // Rank 0 prepares the temporary directory and tells the others its name.
  std::string tmp;
  std::string failure;
  if (main_rank) {
    try {
      std::error_code ec;
      fs::create_directories(checkpoints_dir, ec);
      MOETRON_CHECK(!ec && is_directory(checkpoints_dir), checkpoints_dir,
                    ": cannot create the checkpoints directory: ", ec.message());
      remove_stale_temporaries(checkpoints_dir);
      tmp = str_cat(final_dir, kTmpMarker, ::getpid());
      remove_tree(tmp);
      MOETRON_CHECK(::mkdir(tmp.c_str(), 0755) == 0, tmp,
                    ": cannot create: ", std::strerror(errno));
    } catch (const Error& e) {
      failure = e.what();
    }
  }
  if (r.world > 1) {
    const std::string got = r.broadcast(failure.empty() ? tmp : "!" + failure);
    if (!got.empty() && got[0] == '!') throw Error(got.substr(1));
    tmp = got;
  } else if (!failure.empty()) {
    throw Error(failure);
  }
  auto cleanup = [&] {
    try {
      remove_tree(tmp);
    } catch (const Error&) {  // the original error matters more; the next save cleans up
    }
  };
  try {
    // Each writer is atomic and fsyncs its file and `tmp`; the manifest comes last, so a
    // directory with a manifest is complete.
    if (main_rank) {
      const auto subset = sharded ? detail::Subset::kUnsharded : detail::Subset::kAll;
      detail::save_model_state(join(tmp, kModelFile), model, subset);
      detail::save_optimizer_state(join(tmp, kOptimizerFile), model, adamw, subset);
      detail::save_rng_state(join(tmp, kRngFile));
      const nlohmann::json trainer = {{"step", state.step},
                                      {"loader_state", state.loader_state},
                                      {"metrics_state", state.metrics_state},
                                      {"extra", state.extra}};
      write_file_atomic(join(tmp, kTrainerStateFile), trainer.dump(2) + "\n");
      write_file_atomic(join(tmp, kConfigFile), state.config_yaml);
    } else {
      detail::save_rng_state(join(tmp, rank_rng_file(r.rank)));
    }
    if (sharded && r.shard_writer) {
      detail::save_model_state(join(tmp, shard_file("model", r.ep_rank, r.ep)), model,
                               detail::Subset::kSharded);
      detail::save_optimizer_state(join(tmp, shard_file("optimizer", r.ep_rank, r.ep)), model,
                                   adamw, detail::Subset::kSharded);
    }
  } catch (const Error& e) {
    failure = e.what();
  }
  if (r.world > 1) {
    // Everyone has written (or failed); rank 0 learns of any failure through the barrier's
    // companion broadcast below.
    r.barrier("checkpoint files written");
  }
  if (!failure.empty() && r.world == 1) {
    cleanup();
    throw Error(failure);
  }
  if (main_rank && failure.empty()) {
    try {
      nlohmann::json files = nlohmann::json::object();
      for (const auto& entry : fs::directory_iterator(tmp)) {
        const std::string name = entry.path().filename().string();
        files[name] = {{"bytes", file_size(entry.path().string())},
                       {"sha256", sha256_file(entry.path().string())}};
      }
      nlohmann::json manifest = {{"format", kManifestFormat},
                                 {"version", kTrainCheckpointVersion},
                                 {"step", state.step},
                                 {"files", files}};
      if (r.world > 1) {
        nlohmann::json layout = {{"world", r.world}, {"ep", r.ep}};
        nlohmann::json shards = nlohmann::json::array();
        if (sharded) {
          const auto placement = detail::expert_placement(model);
          MOETRON_CHECK(!placement.empty(), "ep=", r.ep,
                        " but the model's experts are not sharded");
          const int64_t count = placement.begin()->second.count;
          for (int64_t k = 0; k < r.ep; ++k) {
            MOETRON_CHECK(files.contains(shard_file("model", k, r.ep)), tmp, ": expert shard ", k,
                          " was not written");
            shards.push_back({{"index", k}, {"first", k * count}, {"count", count}});
          }
        }
        layout["expert_shards"] = shards;
        manifest["layout"] = layout;
      }
      write_file_atomic(join(tmp, kManifestFile), manifest.dump(2) + "\n");
      install_directory(tmp, final_dir);
      fsync_directory(checkpoints_dir);
      write_file_atomic(join(checkpoints_dir, kLatestFile), dir_name(final_dir) + "\n");
      prune(checkpoints_dir, keep_last, final_dir);
    } catch (const Error& e) {
      failure = e.what();
    }
    if (!failure.empty()) cleanup();
  }
  if (r.world > 1) {
    // Rank 0's verdict (the others' write errors surface as their own exceptions below).
    const std::string verdict = r.broadcast(failure.empty() ? "ok" : "!" + failure);
    if (verdict != "ok" && failure.empty()) failure = verdict.substr(1);
  }
  if (!failure.empty()) throw Error(str_cat("saving ", final_dir, ": ", failure));

  if (main_rank) {
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    uint64_t bytes = 0;
    for (const auto& entry : fs::directory_iterator(final_dir)) {
      bytes += file_size(entry.path().string());
    }
    log::info("saved checkpoint ", final_dir, " (", bytes / 1e6, " MB in ", seconds, " s)");
  }
  return final_dir;
}

TrainState load_train_checkpoint(const std::string& checkpoint_dir, torch::nn::Module& model,
                                 torch::optim::Optimizer& optimizer, int64_t rank) {
  torch::optim::AdamW& adamw = detail::as_adamw(optimizer);
  // Integrity first: a corrupted checkpoint names its file and where to resume from instead.
  TrainState state;
  detail::PreparedRng rng;
  try {
    verify_checkpoint(checkpoint_dir);
    const std::string trainer_path = join(checkpoint_dir, kTrainerStateFile);
    const nlohmann::json trainer = detail::parse_json_strict(read_text_file(trainer_path),
                                                             trainer_path, kTrainerStateMaxDepth);
    try {
      state.step = trainer.at("step").get<int64_t>();
      state.loader_state = trainer.at("loader_state").get<std::string>();
      state.metrics_state = trainer.at("metrics_state");
      state.extra = trainer.at("extra");
    } catch (const nlohmann::json::exception& e) {
      throw Error(str_cat(trainer_path, ": malformed trainer state: ", e.what()));
    }
    state.config_yaml = read_text_file(join(checkpoint_dir, kConfigFile));
    const std::string own_rng = join(checkpoint_dir, rank_rng_file(rank));
    struct stat st {};
    rng = detail::prepare_rng_load(
        rank > 0 && ::stat(own_rng.c_str(), &st) == 0 ? own_rng : join(checkpoint_dir, kRngFile));
  } catch (const Error& e) {
    throw Error(e.kind(), str_cat("cannot load checkpoint ", checkpoint_dir, ": ", e.what(), "\n",
                                  valid_list_text(parent_of(checkpoint_dir))));
  }
  // Compatibility with the model and optimizer, checked completely before anything changes.
  const nlohmann::json manifest = read_manifest(checkpoint_dir);
  auto prepared_model = detail::prepare_model_load(
      tensor_source(checkpoint_dir, manifest, "model", kModelFile), model);
  auto prepared_optim = detail::prepare_optimizer_load(
      tensor_source(checkpoint_dir, manifest, "optimizer", kOptimizerFile), model, adamw);

  detail::apply_model_load(prepared_model);
  detail::apply_optimizer_load(prepared_optim, adamw);
  detail::apply_rng_load(rng);
  log::info("loaded checkpoint ", checkpoint_dir, " (step ", state.step, ")");
  return state;
}

void load_checkpoint_model(const std::string& checkpoint_dir, torch::nn::Module& model) {
  try {
    verify_checkpoint(checkpoint_dir);
  } catch (const Error& e) {
    throw Error(e.kind(), str_cat("cannot load checkpoint ", checkpoint_dir, ": ", e.what(), "\n",
                                  valid_list_text(parent_of(checkpoint_dir))));
  }
  auto prepared = detail::prepare_model_load(
      tensor_source(checkpoint_dir, read_manifest(checkpoint_dir), "model", kModelFile), model);
  detail::apply_model_load(prepared);
  log::info("loaded model weights from ", checkpoint_dir);
}

std::optional<std::string> find_resume_checkpoint(const std::string& checkpoints_dir) {
  std::string tried;
  const std::string latest_path = join(checkpoints_dir, kLatestFile);
  struct stat st {};
  if (::stat(latest_path.c_str(), &st) == 0) {
    std::string name = read_text_file(latest_path);
    while (!name.empty() && std::isspace(static_cast<unsigned char>(name.back()))) name.pop_back();
    if (parse_step_name(name) < 0) {
      log::warn(latest_path, ": does not name a step-<N> directory ('", name, "'); ignoring it");
    } else {
      tried = join(checkpoints_dir, name);
      try {
        verify_checkpoint(tried);
        return tried;
      } catch (const Error& e) {
        log::warn("latest checkpoint does not verify, looking for an older one: ", e.what());
      }
    }
  }
  const auto all = list_checkpoints(checkpoints_dir);
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    if (*it == tried) continue;
    try {
      verify_checkpoint(*it);
      return *it;
    } catch (const Error& e) {
      log::warn("skipping checkpoint that does not verify: ", e.what());
    }
  }
  return std::nullopt;
}

}  // namespace moetron::ckpt
