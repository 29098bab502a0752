// `moetron launch` as a process over launch_probe (a stand-in rank, see launch_probe.cpp): the
// torchrun environment per rank, output prefixes, teardown when a rank fails, SIGTERM
// forwarding, restarts and option errors; and one launch of `moetron train` interrupted by
// SIGTERM and resumed by the same command. Deadlines are generous (a loaded 2-core machine);
// no test asserts tight timings.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "moetron/core/error.h"
#include "moetron/core/files.h"
#include "support/cli_runner.h"
#include "support/process.h"
#include "support/tiny_train.h"

namespace moetron::dist {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using moetron::testing::ChildGuard;
using moetron::testing::CliResult;
using moetron::testing::count_lines;
using moetron::testing::read_text;
using moetron::testing::spawn_moetron;
using moetron::testing::wait_exit;
using moetron::testing::wait_until;

const std::string kProbe = MOETRON_LAUNCH_PROBE;

class LaunchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = moetron::testing::scratch_dir();
    // Each test sets what it needs; none inherits the caller's choice.
    ::unsetenv("OMP_NUM_THREADS");
  }
  void TearDown() override { moetron::remove_tree(dir_); }
  void sigterm_and_resume(int nproc, const std::vector<std::string>& extra);

  // `moetron launch <launch_args> -- <probe> <probe_args>`, waiting for it.
  CliResult launch(const std::vector<std::string>& launch_args,
                   const std::vector<std::string>& probe_args) {
    return moetron::testing::run_moetron(args(launch_args, probe_args), dir_);
  }
  std::vector<std::string> args(const std::vector<std::string>& launch_args,
                                const std::vector<std::string>& probe_args) const {
    std::vector<std::string> a = {"launch"};
    a.insert(a.end(), launch_args.begin(), launch_args.end());
    a.push_back("--");
    a.push_back(kProbe);
    a.insert(a.end(), probe_args.begin(), probe_args.end());
    return a;
  }

  std::string dir_;
};

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

// "[rank R] env RANK=.. ..." lines of stdout, by rank: name -> value.
std::map<int, std::map<std::string, std::string>> env_lines(const std::string& out) {
  std::map<int, std::map<std::string, std::string>> by_rank;
  static const std::regex line_re(R"(^\[rank (\d+)\] env (.*)$)");
  for (const auto& line : lines_of(out)) {
    std::smatch m;
    if (!std::regex_match(line, m, line_re)) continue;
    const int rank = std::stoi(m[1]);
    EXPECT_EQ(by_rank.count(rank), 0u) << "rank " << rank << " seen twice:\n" << out;
    std::istringstream words(m[2].str());
    for (std::string w; words >> w;) {
      const size_t eq = w.find('=');
      by_rank[rank][w.substr(0, eq)] = w.substr(eq + 1);
    }
  }
  return by_rank;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST_F(LaunchTest, EachRankGetsTheTorchrunEnvironment) {
  const auto r = launch({"--nproc-per-node", "3", "--master-port", "0"}, {});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto env = env_lines(r.out);
  ASSERT_EQ(env.size(), 3u) << r.out;
  std::set<std::string> ports;
  for (int rank = 0; rank < 3; ++rank) {
    ASSERT_EQ(env.count(rank), 1u) << r.out;
    const auto& e = env.at(rank);
    EXPECT_EQ(e.at("RANK"), std::to_string(rank));
    EXPECT_EQ(e.at("WORLD_SIZE"), "3");
    EXPECT_EQ(e.at("LOCAL_RANK"), std::to_string(rank));
    EXPECT_EQ(e.at("LOCAL_WORLD_SIZE"), "3");
    EXPECT_EQ(e.at("GROUP_RANK"), "0");
    EXPECT_EQ(e.at("NODE_RANK"), "0");
    EXPECT_EQ(e.at("MASTER_ADDR"), "127.0.0.1");
    EXPECT_EQ(e.at("TORCHELASTIC_RESTART_COUNT"), "0");
    EXPECT_EQ(e.at("TORCHELASTIC_MAX_RESTARTS"), "0");
    EXPECT_EQ(e.at("OMP_NUM_THREADS"), "1");  // set by the launcher: N > 1 and unset
    ports.insert(e.at("MASTER_PORT"));
  }
  ASSERT_EQ(ports.size(), 1u) << "ranks disagree on the port:\n" << r.out;
  const int port = std::stoi(*ports.begin());
  EXPECT_GT(port, 0);
  EXPECT_LE(port, 65535);
  EXPECT_TRUE(contains(r.err, "using free port " + std::to_string(port))) << r.err;
  EXPECT_TRUE(contains(r.err, "setting OMP_NUM_THREADS=1")) << r.err;
}

TEST_F(LaunchTest, SecondNodeRanksAndTheUsersOmpThreads) {
  ::setenv("OMP_NUM_THREADS", "3", 1);
  const auto r = launch({"--nproc-per-node", "2", "--nnodes", "2", "--node-rank", "1",
                         "--master-addr", "10.1.2.3", "--master-port", "29555"},
                        {});
  ::unsetenv("OMP_NUM_THREADS");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto env = env_lines(r.out);
  ASSERT_EQ(env.size(), 2u) << r.out;
  for (int rank : {2, 3}) {
    ASSERT_EQ(env.count(rank), 1u) << r.out;
    const auto& e = env.at(rank);
    EXPECT_EQ(e.at("WORLD_SIZE"), "4");
    EXPECT_EQ(e.at("LOCAL_RANK"), std::to_string(rank - 2));
    EXPECT_EQ(e.at("LOCAL_WORLD_SIZE"), "2");
    EXPECT_EQ(e.at("GROUP_RANK"), "1");
    EXPECT_EQ(e.at("NODE_RANK"), "1");
    EXPECT_EQ(e.at("MASTER_ADDR"), "10.1.2.3");
    EXPECT_EQ(e.at("MASTER_PORT"), "29555");
    EXPECT_EQ(e.at("OMP_NUM_THREADS"), "3");
  }
  EXPECT_FALSE(contains(r.err, "setting OMP_NUM_THREADS")) << r.err;
}

TEST_F(LaunchTest, PrefixesEveryLineAndFlushesPartialLines) {
  const auto r = launch({"--nproc-per-node", "2"}, {"--partial", "no newline"});
  ASSERT_EQ(r.code, 0) << r.err;
  for (const auto& line : lines_of(r.out)) {
    EXPECT_TRUE(line.rfind("[rank 0] ", 0) == 0 || line.rfind("[rank 1] ", 0) == 0) << line;
  }
  EXPECT_TRUE(contains(r.out, "[rank 0] no newline\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "[rank 1] no newline\n")) << r.out;
  // stderr stays stderr.
  EXPECT_TRUE(contains(r.err, "[rank 0] ready 0\n")) << r.err;
  EXPECT_TRUE(contains(r.err, "[rank 1] ready 1\n")) << r.err;
  EXPECT_FALSE(contains(r.out, "ready")) << r.out;
}

TEST_F(LaunchTest, FailingRankStopsTheOthersAndSetsTheExitCode) {
  const auto start = std::chrono::steady_clock::now();
  const auto r = launch({"--nproc-per-node", "3"},
                        {"--fail-rank", "1", "--code", "3", "--hang", "--sync", dir_});
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_LT(took, 20s) << "the hanging ranks were not stopped";
  EXPECT_TRUE(contains(r.err, "[rank 1] rank 1 failing with code 3")) << r.err;
  EXPECT_TRUE(contains(r.err, "rank 1 exited with code 3")) << r.err;
  for (int rank : {0, 2}) {
    EXPECT_TRUE(
        contains(r.err, "rank " + std::to_string(rank) + " was killed by signal 15 (SIGTERM)"))
        << r.err;
  }
}

TEST_F(LaunchTest, RankKilledBySignalIsNamedAndTheLauncherExitsOne) {
  const auto r = launch({"--nproc-per-node", "2"}, {"--kill-rank", "0", "--hang", "--sync", dir_});
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_TRUE(contains(r.err, "rank 0 was killed by signal 9 (SIGKILL)")) << r.err;
}

TEST_F(LaunchTest, RanksIgnoringSigtermGetSigkillAfterTheTimeout) {
  const auto r =
      launch({"--nproc-per-node", "2", "--term-timeout", "1"},
             {"--fail-rank", "0", "--code", "5", "--ignore-term", "--hang", "--sync", dir_});
  EXPECT_EQ(r.code, 5) << r.err;
  EXPECT_TRUE(contains(r.err, "ranks 1 still running after 1 s; sending SIGKILL")) << r.err;
  EXPECT_TRUE(contains(r.err, "rank 1 was killed by signal 9 (SIGKILL)")) << r.err;
}

TEST_F(LaunchTest, SigtermToTheLauncherReachesEveryRank) {
  const std::string out = dir_ + "/launch.out", err = dir_ + "/launch.err";
  const std::string trap = dir_ + "/term";
  ChildGuard launcher{spawn_moetron(
      args({"--nproc-per-node", "3"}, {"--trap-term", trap, "--hang"}), dir_, out, err)};
  ASSERT_GT(launcher.pid, 0);
  // Every rank has its handler installed once it printed "ready".
  const bool ready = wait_until(
      [&] {
        const std::string e = read_text(err);
        return contains(e, "ready 0") && contains(e, "ready 1") && contains(e, "ready 2");
      },
      30s);
  ASSERT_TRUE(ready) << read_text(err);
  ASSERT_EQ(::kill(launcher.pid, SIGTERM), 0);
  const auto status = wait_exit(launcher, 30s);
  ASSERT_TRUE(status.has_value()) << "launcher still running: " << read_text(err);
  ASSERT_TRUE(WIFEXITED(*status)) << "launcher killed by the signal instead of handling it";
  EXPECT_EQ(WEXITSTATUS(*status), 128 + SIGTERM) << read_text(err);
  for (int rank = 0; rank < 3; ++rank) {
    EXPECT_TRUE(fs::exists(trap + "." + std::to_string(rank))) << "rank " << rank;
  }
  EXPECT_TRUE(contains(read_text(err), "received SIGTERM, forwarding it to ranks 0, 1, 2"))
      << read_text(err);
}

// True once `pid` is gone or a zombie (a container's init may not reap re-parented children).
bool dead(pid_t pid) {
  const std::string stat = read_text("/proc/" + std::to_string(pid) + "/stat");
  if (stat.empty()) return true;
  const size_t paren = stat.rfind(')');
  return paren != std::string::npos && stat.size() > paren + 2 && stat[paren + 2] == 'Z';
}

TEST_F(LaunchTest, KilledLauncherLeavesNoRanksBehind) {
  const std::string out = dir_ + "/launch.out", err = dir_ + "/launch.err";
  ChildGuard launcher{
      spawn_moetron(args({"--nproc-per-node", "2"}, {"--ignore-term", "--hang"}), dir_, out, err)};
  ASSERT_GT(launcher.pid, 0);
  ASSERT_TRUE(wait_until([&] { return env_lines(read_text(out)).size() == 2; }, 30s))
      << read_text(out) << read_text(err);
  const auto env = env_lines(read_text(out));
  ASSERT_EQ(::kill(launcher.pid, SIGKILL), 0);
  ASSERT_TRUE(wait_exit(launcher, 30s).has_value());
  for (const auto& [rank, vars] : env) {
    const pid_t pid = std::stoi(vars.at("PID"));
    EXPECT_TRUE(wait_until([&] { return dead(pid); }, 30s)) << "rank " << rank << " outlived it";
  }
}

TEST_F(LaunchTest, RestartsAllRanksUntilTheyExitZero) {
  const auto r =
      launch({"--nproc-per-node", "2", "--max-restarts", "2"}, {"--succeed-on-restart", "1"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.err, "restarting all 2 local ranks (restart 1 of 2)")) << r.err;
  EXPECT_FALSE(contains(r.err, "restart 2 of 2")) << r.err;
  EXPECT_TRUE(contains(r.out, "TORCHELASTIC_RESTART_COUNT=0")) << r.out;
  EXPECT_TRUE(contains(r.out, "TORCHELASTIC_RESTART_COUNT=1")) << r.out;
  EXPECT_TRUE(contains(r.out, "TORCHELASTIC_MAX_RESTARTS=2")) << r.out;
}

TEST_F(LaunchTest, GivesUpAfterMaxRestarts) {
  const auto r =
      launch({"--nproc-per-node", "2", "--max-restarts", "1"}, {"--succeed-on-restart", "5"});
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_TRUE(contains(r.err, "restart 1 of 1")) << r.err;
  EXPECT_TRUE(contains(r.err, "no restarts left (--max-restarts 1)")) << r.err;
}

struct BadLaunch {
  std::vector<std::string> args;
  std::string names;  // part of the message, e.g. the option
};

// Every case exits 2 naming what is wrong, before any rank starts.
void expect_usage_errors(const std::vector<BadLaunch>& cases, const std::string& cwd) {
  for (const auto& c : cases) {
    std::vector<std::string> a = {"launch"};
    a.insert(a.end(), c.args.begin(), c.args.end());
    const auto r = moetron::testing::run_moetron(a, cwd);
    std::string shown;
    for (const auto& s : c.args) shown += " " + s;
    EXPECT_EQ(r.code, 2) << shown << "\n" << r.err;
    EXPECT_TRUE(contains(r.err, c.names)) << shown << "\n" << r.err;
    EXPECT_TRUE(r.out.empty()) << shown << "\n" << r.out;
  }
}

TEST_F(LaunchTest, BadNumbersExitTwoNamingTheOption) {
  expect_usage_errors(
      {
          {{"--nproc-per-node", "0", "--", kProbe}, "--nproc-per-node"},
          {{"--nproc-per-node", "two", "--", kProbe}, "--nproc-per-node"},
          {{"--", kProbe}, "--nproc-per-node"},
          {{"--nproc-per-node", "1", "--master-port", "70000", "--", kProbe}, "--master-port"},
          {{"--nproc-per-node", "1", "--max-restarts", "-1", "--", kProbe}, "--max-restarts"},
          {{"--nproc-per-node", "1", "--term-timeout", "-1", "--", kProbe}, "--term-timeout"},
      },
      dir_);
}

TEST_F(LaunchTest, BadNodesOrCommandExitTwoNamingIt) {
  expect_usage_errors(
      {
          {{"--nproc-per-node", "1", "--nnodes", "2", "--node-rank", "2", "--master-addr", "h",
            "--", kProbe},
           "--node-rank"},
          {{"--nproc-per-node", "1", "--nnodes", "2", "--", kProbe}, "--master-addr"},
          {{"--nproc-per-node", "1", "--nnodes", "2", "--master-addr", "h", "--master-port", "0",
            "--", kProbe},
           "--master-port"},
          {{"--nproc-per-node", "1"}, "command"},
          {{"--nproc-per-node", "1", "--", dir_ + "/no/such/program"}, "/no/such/program"},
      },
      dir_);
}

TEST_F(LaunchTest, MoetronSubcommandsRunWithThisBinary) {
  const auto r = moetron::testing::run_moetron(
      {"launch", "--nproc-per-node", "2", "--", "config", moetron::testing::kTinyYaml}, dir_);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "[rank 0] model:")) << r.out;
  EXPECT_TRUE(contains(r.out, "[rank 1] model:")) << r.out;

  // A config error is not worth restarting: exit 2 at once.
  const auto bad =
      moetron::testing::run_moetron({"launch", "--nproc-per-node", "2", "--max-restarts", "3", "--",
                                     "config", dir_ + "/missing.yaml"},
                                    dir_);
  EXPECT_EQ(bad.code, 2) << bad.err;
  EXPECT_TRUE(contains(bad.err, "config or usage error (exit code 2); not restarting")) << bad.err;
  EXPECT_FALSE(contains(bad.err, "restarting all")) << bad.err;
}

// The real trainer under the launcher: SIGTERM to the launcher reaches the ranks, which agree on
// a step, save one checkpoint there and exit 128+15; the same launch command resumes from it and
// finishes. `extra` adds overrides (e.g. the parallel layout).
void LaunchTest::sigterm_and_resume(int nproc, const std::vector<std::string>& extra) {
  ::setenv("OMP_NUM_THREADS", "1", 1);
  constexpr int kSteps = 40;
  std::vector<std::string> command = {
      "launch", "--nproc-per-node",         std::to_string(nproc), "--",
      "train",  moetron::testing::kTinyYaml};
  for (const auto& o : moetron::testing::fast_train_overrides(dir_, "run")) command.push_back(o);
  for (const std::string& o :
       std::vector<std::string>{"log.level=info", "train.steps=" + std::to_string(kSteps),
                                "ckpt.save_every=20", "data.task_size=40"}) {
    command.push_back(o);
  }
  command.insert(command.end(), extra.begin(), extra.end());
  const std::string metrics = dir_ + "/run/metrics.jsonl";
  const std::string out = dir_ + "/first.out", err = dir_ + "/first.err";

  ChildGuard launcher{spawn_moetron(command, dir_, out, err)};
  ASSERT_GT(launcher.pid, 0);
  bool exited = false;
  const bool progressed = wait_until(
      [&] {
        exited = ::waitpid(launcher.pid, nullptr, WNOHANG) == launcher.pid;
        return exited || count_lines(metrics) >= 3;
      },
      120s);
  if (exited) launcher.pid = -1;
  ASSERT_FALSE(exited) << "exited early: " << read_text(err);
  ASSERT_TRUE(progressed) << "no progress: " << read_text(err);
  ASSERT_EQ(::kill(launcher.pid, SIGTERM), 0);
  const auto stopped = wait_exit(launcher, 120s);
  ASSERT_TRUE(stopped.has_value()) << read_text(err);
  const std::string first_err = read_text(err);
  ASSERT_TRUE(WIFEXITED(*stopped)) << first_err;
  EXPECT_EQ(WEXITSTATUS(*stopped), 128 + SIGTERM) << first_err;

  // The rank's own message (prefixed) names the checkpoint it saved.
  static const std::regex saved_re(
      R"(\[rank 0\] .*interrupted by signal 15 at step (\d+); checkpoint (\S+) )");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(first_err, m, saved_re)) << first_err;
  const int stopped_at = std::stoi(m[1]);
  const std::string saved = m[2];
  EXPECT_LT(stopped_at, kSteps);
  EXPECT_EQ(saved, dir_ + "/run/checkpoints/step-" + std::to_string(stopped_at));
  EXPECT_TRUE(fs::exists(saved + "/manifest.json")) << saved;
  EXPECT_TRUE(contains(first_err, "exited with code 143")) << first_err;
  for (int r = 1; r < nproc; ++r) {
    EXPECT_TRUE(contains(first_err, "[rank " + std::to_string(r) +
                                        "] moetron: error: interrupted by signal 15 at step " +
                                        std::to_string(stopped_at)))
        << first_err;
  }

  // The same command resumes there and finishes.
  const auto second = moetron::testing::run_moetron(command, dir_);
  ASSERT_EQ(second.code, 0) << second.err;
  EXPECT_TRUE(contains(second.out, "[rank 0] trained " + std::to_string(kSteps) + " steps"))
      << second.out;
  const std::string log = read_text(dir_ + "/run/log.txt");
  EXPECT_TRUE(contains(log, "resumed from " + saved + " at step " + std::to_string(stopped_at)))
      << log;
}

TEST_F(LaunchTest, TrainUnderTheLauncherSavesOnSigtermAndResumes) {
  sigterm_and_resume(1, {});
}

// Two ranks with expert parallelism: the sharded checkpoint is written by both and resumed.
TEST_F(LaunchTest, ExpertParallelTrainUnderTheLauncherSavesOnSigtermAndResumes) {
  sigterm_and_resume(2, {"dist.ep=2", "train.micro_batch_size=2"});
}

}  // namespace
}  // namespace moetron::dist
