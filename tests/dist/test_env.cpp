// read_dist_env with an injected environment: torchrun wins over SLURM, SLURM over single, and
// every malformed or inconsistent value is a config error naming the variable and its value.
// slurm_first_host on the hostlist grammar.
#include <gtest/gtest.h>

#include <map>

#include "moetron/core/error.h"
#include "moetron/dist/env.h"

namespace moetron::dist {
namespace {

using Vars = std::map<std::string, std::string>;

DistEnv read(const Vars& vars) {
  return read_dist_env([vars](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  });
}

// The config error read() throws; fails the test when it does not throw one.
std::string error_of(const Vars& vars) {
  try {
    const DistEnv e = read(vars);
    ADD_FAILURE() << "no error; source " << e.source << " rank " << e.rank;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig) << e.what();
    return e.what();
  }
  return "";
}

// The message names the variable, quotes its value and says what was expected.
void expect_error(const Vars& vars, const std::string& var, const std::string& value,
                  const std::string& expected_part) {
  const std::string msg = error_of(vars);
  EXPECT_NE(msg.find(var + "='" + value + "'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("expected"), std::string::npos) << msg;
  EXPECT_NE(msg.find(expected_part), std::string::npos) << msg;
}

const Vars kTorchrun = {{"RANK", "5"},
                        {"WORLD_SIZE", "8"},
                        {"LOCAL_RANK", "1"},
                        {"LOCAL_WORLD_SIZE", "4"},
                        {"GROUP_RANK", "1"},
                        {"MASTER_ADDR", "10.0.0.7"},
                        {"MASTER_PORT", "29600"},
                        {"TORCHELASTIC_RESTART_COUNT", "2"}};

const Vars kSlurm = {{"SLURM_PROCID", "6"},
                     {"SLURM_NTASKS", "8"},
                     {"SLURM_LOCALID", "2"},
                     {"SLURM_NODEID", "1"},
                     {"SLURM_TASKS_PER_NODE", "4(x2)"},
                     {"SLURM_JOB_NODELIST", "gpu[07-08]"},
                     {"SLURM_JOB_ID", "123456"}};

Vars with(Vars base, const Vars& changes) {
  for (const auto& [k, v] : changes) base[k] = v;
  return base;
}
Vars without(Vars base, const std::string& name) {
  base.erase(name);
  return base;
}

TEST(DistEnv, SingleProcessWhenNothingIsSet) {
  const DistEnv e = read({});
  EXPECT_EQ(e.source, "single");
  EXPECT_EQ(e.rank, 0);
  EXPECT_EQ(e.world_size, 1);
  EXPECT_EQ(e.local_rank, 0);
  EXPECT_EQ(e.local_world_size, 1);
  EXPECT_EQ(e.node_rank, 0);
  EXPECT_EQ(e.restart_count, 0);
  EXPECT_EQ(e.master_addr, "127.0.0.1");
  EXPECT_EQ(e.master_port, 29500);
  EXPECT_FALSE(e.distributed());
}

TEST(DistEnv, SingleStillReadsMasterAndRestartCount) {
  const DistEnv e = read({{"MASTER_ADDR", "h"},
                          {"MASTER_PORT", "1234"},
                          {"TORCHELASTIC_RESTART_COUNT", "3"},
                          {"SLURM_PROCID", "0"}});
  EXPECT_EQ(e.source, "single");  // SLURM_PROCID without SLURM_NTASKS: not an srun task
  EXPECT_EQ(e.master_addr, "h");
  EXPECT_EQ(e.master_port, 1234);
  EXPECT_EQ(e.restart_count, 3);
}

TEST(DistEnv, EmptyValuesCountAsUnset) {
  EXPECT_EQ(read({{"RANK", ""}, {"WORLD_SIZE", ""}}).source, "single");
}

TEST(DistEnv, ReadsTorchrun) {
  const DistEnv e = read(kTorchrun);
  EXPECT_EQ(e.source, "torchrun");
  EXPECT_EQ(e.rank, 5);
  EXPECT_EQ(e.world_size, 8);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.local_world_size, 4);
  EXPECT_EQ(e.node_rank, 1);
  EXPECT_EQ(e.restart_count, 2);
  EXPECT_EQ(e.master_addr, "10.0.0.7");
  EXPECT_EQ(e.master_port, 29600);
  EXPECT_TRUE(e.distributed());
}

TEST(DistEnv, TorchrunWinsOverSlurm) {
  const DistEnv e = read(with(kSlurm, kTorchrun));
  EXPECT_EQ(e.source, "torchrun");
  EXPECT_EQ(e.rank, 5);
  EXPECT_EQ(e.master_addr, "10.0.0.7");
  EXPECT_EQ(e.master_port, 29600);  // not derived from SLURM_JOB_ID
}

TEST(DistEnv, TorchrunDefaults) {
  // Only RANK and WORLD_SIZE: one node, local rank = rank, default master.
  const DistEnv e = read({{"RANK", "2"}, {"WORLD_SIZE", "4"}});
  EXPECT_EQ(e.local_rank, 2);
  EXPECT_EQ(e.local_world_size, 4);
  EXPECT_EQ(e.node_rank, 0);
  EXPECT_EQ(e.master_addr, "127.0.0.1");
  EXPECT_EQ(e.master_port, 29500);
  EXPECT_EQ(e.restart_count, 0);
  // LOCAL_WORLD_SIZE without LOCAL_RANK / GROUP_RANK: derived from the rank.
  const DistEnv f = read({{"RANK", "5"}, {"WORLD_SIZE", "8"}, {"LOCAL_WORLD_SIZE", "4"}});
  EXPECT_EQ(f.local_rank, 1);
  EXPECT_EQ(f.node_rank, 1);
}

TEST(DistEnv, GroupRankWinsOverNodeRank) {
  EXPECT_EQ(read(with(kTorchrun, {{"NODE_RANK", "0"}})).node_rank, 1);
  EXPECT_EQ(read(with(without(kTorchrun, "GROUP_RANK"), {{"NODE_RANK", "1"}})).node_rank, 1);
}

TEST(DistEnv, RankWithoutWorldSizeIsAnError) {
  const std::string msg = error_of({{"RANK", "0"}});
  EXPECT_NE(msg.find("RANK='0' is set but WORLD_SIZE is not"), std::string::npos) << msg;
  const std::string rev = error_of({{"WORLD_SIZE", "4"}, {"SLURM_PROCID", "0"}});
  EXPECT_NE(rev.find("WORLD_SIZE='4' is set but RANK is not"), std::string::npos) << rev;
}

TEST(DistEnv, TorchrunBadValues) {
  expect_error(with(kTorchrun, {{"RANK", "abc"}}), "RANK", "abc", "0 <= RANK < WORLD_SIZE");
  expect_error(with(kTorchrun, {{"RANK", "1x"}}), "RANK", "1x", "RANK");
  expect_error(with(kTorchrun, {{"RANK", "-1"}}), "RANK", "-1", "RANK");
  expect_error(with(kTorchrun, {{"RANK", "8"}}), "RANK", "8", "0 <= RANK < WORLD_SIZE (8)");
  expect_error(with(kTorchrun, {{"RANK", "99999999999999999999"}}), "RANK", "99999999999999999999",
               "RANK");
  expect_error(with(kTorchrun, {{"WORLD_SIZE", "0"}}), "WORLD_SIZE", "0", ">= 1");
  expect_error(with(kTorchrun, {{"WORLD_SIZE", " 8"}}), "WORLD_SIZE", " 8", ">= 1");
  expect_error(with(kTorchrun, {{"LOCAL_RANK", "4"}}), "LOCAL_RANK", "4",
               "0 <= LOCAL_RANK < LOCAL_WORLD_SIZE (4)");
  expect_error(with(kTorchrun, {{"LOCAL_RANK", "one"}}), "LOCAL_RANK", "one", "LOCAL_RANK");
  expect_error(with(kTorchrun, {{"LOCAL_WORLD_SIZE", "9"}}), "LOCAL_WORLD_SIZE", "9",
               "<= WORLD_SIZE (8)");
  expect_error(with(kTorchrun, {{"LOCAL_WORLD_SIZE", "0"}}), "LOCAL_WORLD_SIZE", "0",
               "1 <= LOCAL_WORLD_SIZE");
  expect_error(with(kTorchrun, {{"GROUP_RANK", "-2"}}), "GROUP_RANK", "-2", "GROUP_RANK");
  expect_error(with(kTorchrun, {{"GROUP_RANK", "8"}}), "GROUP_RANK", "8", "< WORLD_SIZE");
  expect_error(with(without(kTorchrun, "GROUP_RANK"), {{"NODE_RANK", "x"}}), "NODE_RANK", "x",
               "NODE_RANK");
  expect_error(with(kTorchrun, {{"MASTER_PORT", "0"}}), "MASTER_PORT", "0", "1..65535");
  expect_error(with(kTorchrun, {{"MASTER_PORT", "65536"}}), "MASTER_PORT", "65536", "1..65535");
  expect_error(with(kTorchrun, {{"MASTER_PORT", "http"}}), "MASTER_PORT", "http", "1..65535");
  expect_error(with(kTorchrun, {{"TORCHELASTIC_RESTART_COUNT", "-1"}}),
               "TORCHELASTIC_RESTART_COUNT", "-1", "restart count");
}

TEST(DistEnv, ReadsSlurm) {
  const DistEnv e = read(kSlurm);
  EXPECT_EQ(e.source, "slurm");
  EXPECT_EQ(e.rank, 6);
  EXPECT_EQ(e.world_size, 8);
  EXPECT_EQ(e.local_rank, 2);
  EXPECT_EQ(e.local_world_size, 4);
  EXPECT_EQ(e.node_rank, 1);
  EXPECT_EQ(e.master_addr, "gpu07");
  EXPECT_EQ(e.master_port, 20000 + 123456 % 20000);
  EXPECT_EQ(e.restart_count, 0);
}

TEST(DistEnv, SlurmSources) {
  // SLURM_NTASKS_PER_NODE wins over SLURM_TASKS_PER_NODE.
  EXPECT_EQ(
      read(with(kSlurm,
                {{"SLURM_NTASKS_PER_NODE", "8"}, {"SLURM_NTASKS", "16"}, {"SLURM_LOCALID", "6"}}))
          .local_world_size,
      8);
  // Uneven nodes: this node's count, not only the first.
  EXPECT_EQ(
      read(with(kSlurm, {{"SLURM_TASKS_PER_NODE", "4,3"}, {"SLURM_NTASKS", "7"}})).local_world_size,
      3);
  EXPECT_EQ(read(with(kSlurm, {{"SLURM_TASKS_PER_NODE", "4(x2),3"}, {"SLURM_NODEID", "0"}}))
                .local_world_size,
            4);
  // The step's node list wins over the job's; MASTER_ADDR wins over both.
  EXPECT_EQ(read(with(kSlurm, {{"SLURM_STEP_NODELIST", "n[3-4]"}})).master_addr, "n3");
  EXPECT_EQ(read(with(kSlurm, {{"MASTER_ADDR", "head"}})).master_addr, "head");
  EXPECT_EQ(read(with(kSlurm, {{"MASTER_PORT", "4242"}})).master_port, 4242);
  // Jobs get distinct ports; without a job id the default.
  EXPECT_EQ(read(with(kSlurm, {{"SLURM_JOB_ID", "7"}})).master_port, 20007);
  EXPECT_EQ(read(with(kSlurm, {{"SLURM_JOB_ID", "39999"}})).master_port, 39999);
  EXPECT_EQ(read(without(kSlurm, "SLURM_JOB_ID")).master_port, 29500);
  EXPECT_EQ(read(without(kSlurm, "SLURM_JOB_NODELIST")).master_addr, "127.0.0.1");
  EXPECT_EQ(read(with(kSlurm, {{"TORCHELASTIC_RESTART_COUNT", "1"}})).restart_count, 1);
  // One task (e.g. `srun -n1`) needs nothing more.
  const DistEnv one = read({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}});
  EXPECT_EQ(one.source, "slurm");
  EXPECT_FALSE(one.distributed());
}

TEST(DistEnv, SlurmBadValues) {
  expect_error(with(kSlurm, {{"SLURM_PROCID", "8"}}), "SLURM_PROCID", "8",
               "0 <= SLURM_PROCID < SLURM_NTASKS (8)");
  expect_error(with(kSlurm, {{"SLURM_PROCID", "x"}}), "SLURM_PROCID", "x", "SLURM_PROCID");
  expect_error(with(kSlurm, {{"SLURM_NTASKS", "0"}}), "SLURM_NTASKS", "0", ">= 1");
  expect_error(with(kSlurm, {{"SLURM_LOCALID", "4"}}), "SLURM_LOCALID", "4", "(4)");
  expect_error(with(kSlurm, {{"SLURM_NODEID", "-1"}}), "SLURM_NODEID", "-1", "node index");
  expect_error(with(kSlurm, {{"SLURM_NTASKS_PER_NODE", "9"}}), "SLURM_NTASKS_PER_NODE", "9",
               "<= SLURM_NTASKS (8)");
  for (const char* bad : {"4(x2", "4(2)", "x", "4,,3", "4,", "0", "4(x0)", "(x2)"}) {
    expect_error(with(kSlurm, {{"SLURM_TASKS_PER_NODE", bad}}), "SLURM_TASKS_PER_NODE", bad,
                 "like '4(x2),3'");
  }
  expect_error(with(kSlurm, {{"SLURM_TASKS_PER_NODE", "4"}}), "SLURM_TASKS_PER_NODE", "4",
               "SLURM_NODEID=1");
  expect_error(with(kSlurm, {{"SLURM_JOB_ID", "job7"}}), "SLURM_JOB_ID", "job7", "job id");
  expect_error(with(kSlurm, {{"SLURM_JOB_NODELIST", "gpu[07-08"}}), "SLURM_JOB_NODELIST",
               "gpu[07-08", "node list");
  expect_error(with(kSlurm, {{"MASTER_PORT", "-5"}}), "MASTER_PORT", "-5", "1..65535");
  // Missing per-task variables in a multi-task job: not an srun task.
  for (const char* var : {"SLURM_LOCALID", "SLURM_TASKS_PER_NODE"}) {
    const std::string msg = error_of(without(kSlurm, var));
    EXPECT_NE(msg.find(var), std::string::npos) << msg;
    EXPECT_NE(msg.find("srun"), std::string::npos) << msg;
  }
}

TEST(SlurmFirstHost, Examples) {
  EXPECT_EQ(slurm_first_host("node[01-04,07],gpu5"), "node01");
  EXPECT_EQ(slurm_first_host("rack[1-2]-n[3-4]"), "rack1-n3");
  EXPECT_EQ(slurm_first_host("a,b"), "a");
  EXPECT_EQ(slurm_first_host("single-host.example.com"), "single-host.example.com");
  EXPECT_EQ(slurm_first_host("gpu[007]"), "gpu007");
  EXPECT_EQ(slurm_first_host("n[10,2-3]"), "n10");  // the first listed, as SLURM lists it
  EXPECT_EQ(slurm_first_host("a,n[1-2]x,c"), "a");
}

TEST(SlurmFirstHost, MalformedListsThrowConfigErrors) {
  for (const char* bad : {"", ",", "a,", ",a", "a,,b", "n[1-2", "n1-2]", "n[]", "n[a-b]", "n[3-1]",
                          "n[1-]", "n[-1]", "n[1,]", "n[1[2]]", "n[1-2-3]", "ok,n[1"}) {
    try {
      slurm_first_host(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kConfig);
      const std::string msg = e.what();
      EXPECT_NE(msg.find(std::string("'") + bad + "'"), std::string::npos) << msg;
      EXPECT_NE(msg.find("expected a SLURM node list"), std::string::npos) << msg;
    }
  }
}

}  // namespace
}  // namespace moetron::dist
