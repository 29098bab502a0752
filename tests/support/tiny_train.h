// configs/tiny.yaml and the overrides that make it train fast (short rows, small batches, a
// small built-in task, one eval batch, no periodic eval or checkpoints unless a test asks), for
// tests that run `moetron train` in process or as a process. Torch-free.
#pragma once

#include <string>
#include <vector>

namespace moetron::testing {

inline const std::string kTinyYaml = std::string(MOETRON_SOURCE_DIR) + "/configs/tiny.yaml";

inline std::vector<std::string> fast_train_overrides(const std::string& run_dir,
                                                     const std::string& name) {
  return {"log.run_dir=" + run_dir, "log.name=" + name,       "log.level=warn",
          "train.device=cpu",       "data.seq_len=64",        "train.micro_batch_size=4",
          "data.task_size=200",     "data.task_eval_size=20", "train.eval_batches=1",
          "train.eval_every=0",     "rl.max_new_tokens=16",   "ckpt.save_every=0",
          "optim.warmup_steps=2"};
}

}  // namespace moetron::testing
