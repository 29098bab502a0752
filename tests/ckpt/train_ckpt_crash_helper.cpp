// Child process of the kill -9 test: trains a tiny model and saves a training checkpoint after
// every step, forever, until the parent kills it. Prints "ready" once set up.
// Usage: train_ckpt_crash_helper CHECKPOINTS_DIR FIRST_STEP KEEP_LAST
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "moetron/ckpt/train_checkpoint.h"
#include "moetron/core/logging.h"
#include "train_fixture.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s CHECKPOINTS_DIR FIRST_STEP KEEP_LAST\n", argv[0]);
    return 2;
  }
  moetron::log::set_level(moetron::log::Level::kWarn);
  torch::set_num_threads(1);
  const std::string dir = argv[1];
  int64_t step = std::atoll(argv[2]);
  const int64_t keep_last = std::atoll(argv[3]);
  // A wider vocabulary makes the files a few MB, so a kill lands inside writes as well.
  auto t = moetron::ckpt::testing::make_trainer(/*seed=*/7, /*vocab_size=*/8192);
  const auto ids = moetron::ckpt::testing::fixed_batch(8192);
  std::printf("ready\n");
  std::fflush(stdout);
  for (;; ++step) {
    moetron::ckpt::testing::train_step(t, ids);
    moetron::ckpt::TrainState state;
    state.step = step;
    state.loader_state = R"({"position": )" + std::to_string(step) + "}";
    state.config_yaml = "model: tiny\n";
    moetron::ckpt::save_train_checkpoint(dir, *t.model, *t.optimizer, state, keep_last);
  }
}
