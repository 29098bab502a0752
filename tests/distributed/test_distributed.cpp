// Multi-process tests over Gloo on this machine (label dist): the all-to-all, expert and data
// parallelism against one process on the same global batch, zero-token experts, and what the
// surviving ranks do when a peer dies or hangs.
#include <gtest/gtest.h>

#include <filesystem>

#include "spawn.h"

namespace {

using moetron::testing::all_output;
using moetron::testing::run_ranks;

const std::string kWorker = MOETRON_BINARY_DIR "/bin/dist_worker";

std::string out_dir(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("moetron_dist_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return dir.string();
}

void expect_all_pass(const std::string& scenario, int world, int ep) {
  auto run = run_ranks({kWorker, scenario, std::to_string(ep)}, world,
                       out_dir(scenario + std::to_string(world) + "_" + std::to_string(ep)), 240);
  ASSERT_FALSE(run.timed_out) << all_output(run);
  for (size_t r = 0; r < run.ranks.size(); ++r) {
    EXPECT_EQ(run.ranks[r].exit_code, 0) << all_output(run);
  }
}

TEST(Distributed, AllToAllRoundTripIsRankEncoded) {
  expect_all_pass("all_to_all", 3, 1);
}

// One rank with a real backend on the first device: NCCL when a GPU is present (label gpu; on
// CPU the same scenario exercises a Gloo group of one).
TEST(DistributedGpu, SingleRankBackendOnTheDevice) {
  auto run = run_ranks({kWorker, "single_rank_device", "1"}, 1, out_dir("single_device"), 120);
  ASSERT_FALSE(run.timed_out) << all_output(run);
  EXPECT_EQ(run.ranks[0].exit_code, 0) << all_output(run);
}

TEST(Distributed, ExpertParallel2EqualsOneProcess) {
  expect_all_pass("equivalence", 2, 2);
}

TEST(Distributed, ExpertParallel4EqualsOneProcess) {
  expect_all_pass("equivalence", 4, 4);
}

TEST(Distributed, DataParallel2EqualsOneProcessWithTheDoubledBatch) {
  expect_all_pass("equivalence", 2, 1);
}

TEST(Distributed, ExpertTimesDataParallelEqualsOneProcess) {
  expect_all_pass("equivalence", 4, 2);
}

TEST(Distributed, ExpertsAndRanksWithZeroTokens) {
  expect_all_pass("zero_tokens", 2, 2);
}

void expect_failure_named(const std::string& scenario, double max_seconds) {
  auto run =
      run_ranks({kWorker, scenario, "1"}, 3, out_dir(scenario), 120, {"MOETRON_TEST_TIMEOUT_S=6"});
  ASSERT_FALSE(run.timed_out) << "ranks still running after 120 s:\n" << all_output(run);
  EXPECT_LT(run.seconds, max_seconds) << all_output(run);
  for (int r : {0, 2}) {
    EXPECT_EQ(run.ranks[r].exit_code, 3) << all_output(run);
    const auto& out = run.ranks[r].output;
    EXPECT_NE(out.find("'after the failure'"), std::string::npos) << out;
    EXPECT_NE(out.find("rank " + std::to_string(r) + ": all_reduce"), std::string::npos) << out;
    EXPECT_NE(out.find("rank 1: no progress report"), std::string::npos) << out;
  }
}

TEST(Distributed, ADeadRankMakesTheOthersFailNamingIt) {
  expect_failure_named("peer_dies", 60);
}

TEST(Distributed, AHungRankMakesTheOthersFailWithinTheTimeout) {
  auto run = run_ranks({kWorker, "peer_hangs", "1"}, 3, out_dir("peer_hangs"), 120,
                       {"MOETRON_TEST_TIMEOUT_S=6"});
  // Rank 1 sleeps (killed by the deadline); ranks 0 and 2 must give up on their own.
  for (int r : {0, 2}) {
    EXPECT_EQ(run.ranks[r].exit_code, 3) << all_output(run);
    const auto& out = run.ranks[r].output;
    EXPECT_NE(out.find("'after the failure'"), std::string::npos) << out;
    EXPECT_NE(out.find("rank 1: alive but behind"), std::string::npos) << out;
  }
}

}  // namespace
