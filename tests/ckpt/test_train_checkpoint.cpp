// Training checkpoints: bit-exact resume (model, buffers, AdamW state, RNG, losses), SHA-256
// known vectors, refusal of corrupted / truncated / incomplete checkpoints, kill -9 during
// saves (a separate helper process), keep-last pruning, `latest`, re-saves and model mismatch.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <thread>

#include "moetron/ckpt/sha256.h"
#include "moetron/ckpt/train_checkpoint.h"
#include "moetron/core/error.h"
#include "moetron/core/files.h"
#include "train_fixture.h"

namespace moetron::ckpt {
namespace {

namespace fs = std::filesystem;
using testing::fixed_batch;
using testing::make_trainer;
using testing::TinyTrainer;
using testing::train_step;

class TrainCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Tiny models: one intra-op thread is both faster (no pool contention on shared CI cores)
    // and keeps the straight and resumed runs on the same reduction order.
    torch::set_num_threads(1);
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ =
        (fs::temp_directory_path() / str_cat("moetron_trainckpt_", ::getpid(), "_", info->name()))
            .string();
    remove_tree(dir_);
    fs::create_directories(dir_);
    ckpts_ = dir_ + "/checkpoints";
  }
  void TearDown() override { remove_tree(dir_); }

  std::string dir_;
  std::string ckpts_;
};

TrainState state_at(int64_t step) {
  TrainState s;
  s.step = step;
  s.loader_state = str_cat(R"({"epoch":0,"position":)", step * 24, "}");
  s.metrics_state = {{"tokens", step * 24}, {"best_loss", 1.5}};
  s.extra = {{"note", "hello"}, {"list", {1, 2, 3}}};
  s.config_yaml = "model:\n  vocab_size: 61\n";
  return s;
}

std::map<std::string, torch::Tensor> state_tensors(TinyTrainer& t) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : t.model->named_parameters()) out["param:" + p.key()] = p.value().detach();
  for (const auto& b : t.model->named_buffers()) out["buffer:" + b.key()] = b.value().detach();
  for (const auto& p : t.model->named_parameters()) {
    auto it = t.optimizer->state().find(p.value().unsafeGetTensorImpl());
    if (it == t.optimizer->state().end()) continue;
    const auto& s = static_cast<const torch::optim::AdamWParamState&>(*it->second);
    out["exp_avg:" + p.key()] = s.exp_avg();
    out["exp_avg_sq:" + p.key()] = s.exp_avg_sq();
    out["step:" + p.key()] = torch::tensor(s.step());
  }
  return out;
}

void expect_bit_identical(const std::map<std::string, torch::Tensor>& a,
                          const std::map<std::string, torch::Tensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, ta] : a) {
    auto it = b.find(name);
    ASSERT_NE(it, b.end()) << name;
    EXPECT_TRUE(torch::equal(ta, it->second)) << name;
  }
}

TEST(Sha256, KnownVectors) {
  // FIPS 180-2 / NIST CSRC examples.
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(
      sha256_hex("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmno"
                 "pqklmnopqrlmnopqrsmnopqrstnopqrstu"),
      "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
  // One million 'a', fed in uneven pieces to exercise the block buffer.
  Sha256 h;
  const std::string chunk(997, 'a');
  size_t left = 1'000'000;
  while (left > 0) {
    const size_t n = std::min(left, chunk.size());
    h.update(chunk.data(), n);
    left -= n;
  }
  EXPECT_EQ(h.finish_hex(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // Lengths around the 55/56/64-byte padding boundaries agree between one-shot and streaming.
  for (size_t len : {55, 56, 63, 64, 65, 119, 120, 128}) {
    const std::string s(len, 'x');
    Sha256 split;
    split.update(s.data(), len / 3);
    split.update(s.data() + len / 3, len - len / 3);
    EXPECT_EQ(split.finish_hex(), sha256_hex(s)) << len;
  }
}

TEST_F(TrainCheckpointTest, ResumeIsBitIdentical) {
  constexpr int kSteps = 6, kSplit = 3;
  const auto ids = fixed_batch(61);

  // Straight run.
  TinyTrainer straight = make_trainer(0);
  std::vector<torch::Tensor> straight_losses;
  for (int s = 0; s < kSteps; ++s) straight_losses.push_back(train_step(straight, ids));

  // k steps, save, load into a FRESH model/optimizer built from another seed, N-k steps.
  std::string saved;
  {
    TinyTrainer first = make_trainer(0);
    for (int s = 0; s < kSplit; ++s) {
      EXPECT_TRUE(torch::equal(train_step(first, ids), straight_losses[s])) << s;
    }
    saved = save_train_checkpoint(ckpts_, *first.model, *first.optimizer, state_at(kSplit), 2);
  }
  TinyTrainer resumed = make_trainer(99);
  torch::rand({1000});  // move the generator away from the saved state
  const TrainState state = load_train_checkpoint(saved, *resumed.model, *resumed.optimizer);
  EXPECT_EQ(state.step, kSplit);
  EXPECT_EQ(state.loader_state, state_at(kSplit).loader_state);
  EXPECT_EQ(state.metrics_state, state_at(kSplit).metrics_state);
  EXPECT_EQ(state.extra, state_at(kSplit).extra);
  EXPECT_EQ(state.config_yaml, state_at(kSplit).config_yaml);
  for (int s = kSplit; s < kSteps; ++s) {
    EXPECT_TRUE(torch::equal(train_step(resumed, ids), straight_losses[s])) << "step " << s;
  }
  const auto a = state_tensors(straight);
  const auto b = state_tensors(resumed);
  expect_bit_identical(a, b);
  // Non-trivial: the bias buffers moved, the optimizer state is there and counted 6 steps.
  const auto& bias = a.at("buffer:model.layers.1.mlp.gate.e_score_correction_bias");
  EXPECT_GT(bias.abs().sum().item<double>(), 0.0);
  EXPECT_EQ(a.at("step:model.embed_tokens.weight").item<int64_t>(), kSteps);
  EXPECT_GT(a.size(), 100u);
}

TEST_F(TrainCheckpointTest, ResumeWithoutRngRestoreWouldDiffer) {
  // Guards the test above: the dropout noise really depends on the generator state.
  const auto ids = fixed_batch(61);
  TinyTrainer a = make_trainer(0), b = make_trainer(0);
  torch::manual_seed(1);
  const auto la = train_step(a, ids);
  torch::manual_seed(2);
  const auto lb = train_step(b, ids);
  EXPECT_FALSE(torch::equal(la, lb));
}

TEST_F(TrainCheckpointTest, OptimizerWithoutStateRoundTrips) {
  TinyTrainer t = make_trainer(0);
  const auto dir = save_train_checkpoint(ckpts_, *t.model, *t.optimizer, state_at(0), 0);
  TinyTrainer fresh = make_trainer(5);
  train_step(fresh, fixed_batch(61));  // state that the load must clear
  load_train_checkpoint(dir, *fresh.model, *fresh.optimizer);
  EXPECT_TRUE(fresh.optimizer->state().empty());
  expect_bit_identical(state_tensors(t), state_tensors(fresh));
}

void set_amsgrad(TinyTrainer& t, bool on) {
  for (auto& g : t.optimizer->param_groups()) {
    static_cast<torch::optim::AdamWOptions&>(g.options()).amsgrad(on);
  }
}

TEST_F(TrainCheckpointTest, AmsgradStateAndHyperParametersAreRestored) {
  const auto ids = fixed_batch(61);
  TinyTrainer straight = make_trainer(0);
  set_amsgrad(straight, true);
  for (int s = 0; s < 2; ++s) train_step(straight, ids);
  const auto dir =
      save_train_checkpoint(ckpts_, *straight.model, *straight.optimizer, state_at(2), 0);
  // The straight run's next step draws from the generator state the checkpoint holds.
  const auto straight_loss = train_step(straight, ids);
  // Fresh optimizer without amsgrad and another lr: the checkpoint's values win.
  TinyTrainer resumed = make_trainer(1);
  optim::set_lr(*resumed.optimizer, 0.5);
  load_train_checkpoint(dir, *resumed.model, *resumed.optimizer);
  for (auto& g : resumed.optimizer->param_groups()) {
    const auto& o = static_cast<const torch::optim::AdamWOptions&>(g.options());
    EXPECT_TRUE(o.amsgrad());
    EXPECT_EQ(o.lr(), 1e-2);
  }
  EXPECT_EQ(
      static_cast<const torch::optim::AdamWOptions&>(resumed.optimizer->param_groups()[0].options())
          .weight_decay(),
      0.1);
  EXPECT_TRUE(torch::equal(train_step(resumed, ids), straight_loss));
  expect_bit_identical(state_tensors(straight), state_tensors(resumed));
  for (const auto& p : straight.model->named_parameters()) {
    const auto& a = static_cast<const torch::optim::AdamWParamState&>(
        *straight.optimizer->state().at(p.value().unsafeGetTensorImpl()));
    const auto q = resumed.model->named_parameters()[p.key()];
    const auto& b = static_cast<const torch::optim::AdamWParamState&>(
        *resumed.optimizer->state().at(q.unsafeGetTensorImpl()));
    ASSERT_TRUE(b.max_exp_avg_sq().defined()) << p.key();
    EXPECT_TRUE(torch::equal(a.max_exp_avg_sq(), b.max_exp_avg_sq())) << p.key();
  }
}

// Saves steps 1, 2, 3 (a training step before each); returns the trainer.
TinyTrainer save_three(const std::string& ckpts) {
  TinyTrainer t = make_trainer(0);
  const auto ids = fixed_batch(61);
  for (int64_t s = 1; s <= 3; ++s) {
    train_step(t, ids);
    save_train_checkpoint(ckpts, *t.model, *t.optimizer, state_at(s), 0);
  }
  return t;
}

void flip_byte(const std::string& path, uint64_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x10);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

struct Corruption {
  const char* label;
  const char* file;  // what the message must name
  std::function<void(const std::string& step_dir)> apply;
};

TEST_F(TrainCheckpointTest, CorruptedCheckpointsAreRefusedNamingTheFile) {
  const std::vector<Corruption> cases = {
      {"truncated model", kModelFile,
       [](const std::string& d) {
         const auto p = d + "/" + kModelFile;
         fs::resize_file(p, fs::file_size(p) / 2);
       }},
      {"flipped optimizer byte", kOptimizerFile,
       [](const std::string& d) {
         const auto p = d + "/" + kOptimizerFile;
         flip_byte(p, fs::file_size(p) - 100);
       }},
      {"missing rng file", kRngFile, [](const std::string& d) { fs::remove(d + "/" + kRngFile); }},
      {"manifest lists a wrong size", kTrainerStateFile,
       [](const std::string& d) {
         const auto p = d + "/" + kManifestFile;
         auto m = nlohmann::json::parse(read_text_file(p));
         m["files"][kTrainerStateFile]["bytes"] =
             m["files"][kTrainerStateFile]["bytes"].get<int>() + 1;
         write_file_atomic(p, m.dump());
       }},
      {"missing manifest", kManifestFile,
       [](const std::string& d) { fs::remove(d + "/" + kManifestFile); }},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.label);
    remove_tree(ckpts_);
    TinyTrainer t = save_three(ckpts_);
    const std::string bad = checkpoint_path(ckpts_, 3);
    c.apply(bad);

    EXPECT_THROW(verify_checkpoint(bad), Error);
    TinyTrainer fresh = make_trainer(42);
    const auto before = state_tensors(fresh);
    try {
      load_train_checkpoint(bad, *fresh.model, *fresh.optimizer);
      ADD_FAILURE() << "loaded a corrupted checkpoint";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(bad + "/" + c.file), std::string::npos) << msg;
      EXPECT_NE(msg.find("valid checkpoints in " + ckpts_ + ": step-2 step-1"), std::string::npos)
          << msg;
    }
    expect_bit_identical(before, state_tensors(fresh));  // nothing was half-loaded
    // `latest` names step-3, which fails: resume falls back to step-2.
    EXPECT_EQ(read_text_file(ckpts_ + "/" + kLatestFile), "step-3\n");
    EXPECT_EQ(find_resume_checkpoint(ckpts_), checkpoint_path(ckpts_, 2));
    EXPECT_EQ(list_valid_checkpoints(ckpts_).size(), 2u);
  }
}

TEST_F(TrainCheckpointTest, LatestPruningAndResave) {
  TinyTrainer t = make_trainer(0);
  const auto ids = fixed_batch(61);
  EXPECT_EQ(find_resume_checkpoint(ckpts_), std::nullopt);  // no directory yet
  for (int64_t s = 1; s <= 5; ++s) {
    train_step(t, ids);
    save_train_checkpoint(ckpts_, *t.model, *t.optimizer, state_at(s * 10), /*keep_last=*/2);
    EXPECT_EQ(read_text_file(ckpts_ + "/latest"), str_cat("step-", s * 10, "\n"));
  }
  EXPECT_EQ(list_checkpoints(ckpts_),
            (std::vector<std::string>{checkpoint_path(ckpts_, 40), checkpoint_path(ckpts_, 50)}));
  EXPECT_EQ(find_resume_checkpoint(ckpts_), checkpoint_path(ckpts_, 50));

  // Re-saving step 50 with different weights replaces it completely.
  train_step(t, ids);
  const auto expected = state_tensors(t);
  save_train_checkpoint(ckpts_, *t.model, *t.optimizer, state_at(50), 2);
  EXPECT_EQ(list_checkpoints(ckpts_).size(), 2u);
  TinyTrainer fresh = make_trainer(3);
  load_train_checkpoint(checkpoint_path(ckpts_, 50), *fresh.model, *fresh.optimizer);
  expect_bit_identical(expected, state_tensors(fresh));

  // Saving an older step (a run restarted from earlier) keeps it even when it is the oldest.
  save_train_checkpoint(ckpts_, *t.model, *t.optimizer, state_at(45), 2);
  EXPECT_TRUE(fs::is_directory(checkpoint_path(ckpts_, 45)));
  EXPECT_EQ(find_resume_checkpoint(ckpts_), checkpoint_path(ckpts_, 45));

  // Stale temporaries of dead processes are ignored by listing and removed by the next save;
  // a `latest` naming a missing directory falls back to the newest valid one.
  fs::create_directories(ckpts_ + "/step-60.tmp.999999999");
  fs::create_directories(ckpts_ + "/step-70.tmp.999999998");
  write_file_atomic(ckpts_ + "/latest", "step-70\n");
  EXPECT_EQ(find_resume_checkpoint(ckpts_), checkpoint_path(ckpts_, 50));
  save_train_checkpoint(ckpts_, *t.model, *t.optimizer, state_at(80), 0);
  for (const auto& e : fs::directory_iterator(ckpts_)) {
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
  }
}

TEST_F(TrainCheckpointTest, MismatchedModelListsEveryName) {
  TinyTrainer t = make_trainer(0);
  train_step(t, fixed_batch(61));
  const auto dir = save_train_checkpoint(ckpts_, *t.model, *t.optimizer, state_at(1), 0);

  // Four layers instead of three and a different vocabulary.
  TinyTrainer other = make_trainer(0, /*vocab_size=*/64, /*layers=*/4);
  const auto before = state_tensors(other);
  try {
    load_train_checkpoint(dir, *other.model, *other.optimizer);
    ADD_FAILURE() << "loaded into a different model";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
    EXPECT_NE(msg.find("missing in the checkpoint ("), std::string::npos) << msg;
    EXPECT_NE(msg.find("model.layers.3.self_attn"), std::string::npos) << msg;
    EXPECT_NE(msg.find("shape/dtype mismatch ("), std::string::npos) << msg;
    EXPECT_NE(msg.find("model.embed_tokens.weight: checkpoint [61, 32] F32, expected [64, 32] F32"),
              std::string::npos)
        << msg;
    EXPECT_NE(msg.find("lm_head.weight"), std::string::npos) << msg;
  }
  expect_bit_identical(before, state_tensors(other));

  // Fewer layers: the extra layer's names are "in the checkpoint but not in the model".
  TinyTrainer fewer = make_trainer(0, 61, /*layers=*/2);
  try {
    load_train_checkpoint(dir, *fewer.model, *fewer.optimizer);
    ADD_FAILURE() << "loaded into a smaller model";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("in the checkpoint but not in the model ("), std::string::npos) << msg;
    EXPECT_NE(msg.find("model.layers.2.mlp.gate.e_score_correction_bias"), std::string::npos)
        << msg;
  }
}

TEST_F(TrainCheckpointTest, OptimizerGroupMismatchIsRefused) {
  TinyTrainer t = make_trainer(0);
  train_step(t, fixed_batch(61));
  const auto dir = save_train_checkpoint(ckpts_, *t.model, *t.optimizer, state_at(1), 0);
  TinyTrainer other = make_trainer(0);
  other.cfg.optim.decay_norms = true;  // norms move from group 1 to group 0
  other.optimizer = optim::make_adamw(*other.model, other.cfg.optim);
  try {
    load_train_checkpoint(dir, *other.model, *other.optimizer);
    ADD_FAILURE() << "loaded with different param groups";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("optimizer.safetensors"), std::string::npos) << msg;
    EXPECT_NE(
        msg.find("model.norm.weight: in param group 0 of the optimizer, not of the checkpoint"),
        std::string::npos)
        << msg;
  }
}

// The child saves checkpoints in a loop; the parent SIGKILLs it at random moments. Whatever the
// moment, every listed step-<N> verifies, `latest` resolves to a valid checkpoint no older than
// before the child started, and it loads.
TEST_F(TrainCheckpointTest, KillDuringSaveLeavesALoadableCheckpoint) {
  TinyTrainer t = make_trainer(7, 8192);
  train_step(t, fixed_batch(8192));
  save_train_checkpoint(ckpts_, *t.model, *t.optimizer, state_at(1), 0);

  std::mt19937 rng(2024);
  int64_t first_step = 2;
  int64_t resumable = 1;
  int killed_mid_save = 0;
  for (int round = 0; round < 8; ++round) {
    int out[2];
    ASSERT_EQ(::pipe(out), 0);
    const std::string first = std::to_string(first_step);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {  // only async-signal-safe calls until exec
      ::dup2(out[1], STDOUT_FILENO);
      ::close(out[0]);
      ::close(out[1]);
      ::execl(MOETRON_CRASH_HELPER, MOETRON_CRASH_HELPER, ckpts_.c_str(), first.c_str(), "2",
              static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::close(out[1]);
    char ready[6] = {};
    ASSERT_EQ(::read(out[0], ready, 6), 6) << "helper did not start";
    ::close(out[0]);
    const int delay_ms = std::uniform_int_distribution<int>(0, 250)(rng);
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status)) << "helper exited by itself, status " << status;

    for (const auto& e : fs::directory_iterator(ckpts_)) {
      if (e.path().filename().string().find(".tmp.") != std::string::npos) ++killed_mid_save;
    }
    for (const auto& dir : list_checkpoints(ckpts_)) {
      EXPECT_NO_THROW(verify_checkpoint(dir)) << "round " << round << ": " << dir;
    }
    const auto resume = find_resume_checkpoint(ckpts_);
    ASSERT_TRUE(resume.has_value()) << "round " << round;
    TinyTrainer fresh = make_trainer(11, 8192);
    const TrainState state = load_train_checkpoint(*resume, *fresh.model, *fresh.optimizer);
    EXPECT_GE(state.step, resumable) << "round " << round;
    resumable = state.step;
    first_step = std::max(first_step, state.step + 1) + 1000;  // steps keep increasing
  }
  std::cout << "kills that left a partial save behind: " << killed_mid_save << " of 8\n";
  // The kills landed inside saves at least once (a leftover temporary was seen), and the next
  // save in this process removes the dead helper's leftovers.
  EXPECT_GT(killed_mid_save, 0);
  save_train_checkpoint(ckpts_, *t.model, *t.optimizer, state_at(first_step), 2);
  for (const auto& e : fs::directory_iterator(ckpts_)) {
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
  }
}

}  // namespace
}  // namespace moetron::ckpt
