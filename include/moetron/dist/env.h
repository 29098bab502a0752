// Where this process sits in a distributed job, read from the environment that torchrun,
// `moetron launch` or SLURM's srun already set. Torch-free: the process-group code of `dist`
// consumes DistEnv; nothing here opens a connection.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace moetron::dist {

struct DistEnv {
  int64_t rank = 0, world_size = 1, local_rank = 0, local_world_size = 1, node_rank = 0;
  int64_t restart_count = 0;  // TORCHELASTIC_RESTART_COUNT (0 if unset)
  std::string master_addr = "127.0.0.1";
  int64_t master_port = 29500;
  std::string source;  // "torchrun" | "slurm" | "single"
  bool distributed() const { return world_size > 1; }
};

// getenv is injectable for tests; the default reads the process environment. A variable set
// to the empty string counts as unset (as in core/env.h).
using GetEnv = std::function<std::optional<std::string>(const std::string&)>;

// Precedence:
//  1. torchrun (also `moetron launch`), when RANK and WORLD_SIZE are set: RANK, WORLD_SIZE,
//     LOCAL_WORLD_SIZE (default WORLD_SIZE, i.e. one node), LOCAL_RANK (default
//     RANK % LOCAL_WORLD_SIZE), GROUP_RANK or else NODE_RANK (default RANK / LOCAL_WORLD_SIZE),
//     MASTER_ADDR, MASTER_PORT. RANK without WORLD_SIZE (or the reverse) is an error.
//  2. SLURM, when SLURM_PROCID and SLURM_NTASKS are set: SLURM_PROCID, SLURM_NTASKS,
//     SLURM_LOCALID, SLURM_NODEID, SLURM_NTASKS_PER_NODE or else this node's count in
//     SLURM_TASKS_PER_NODE ("4(x2),3"); MASTER_ADDR or else the first host of
//     SLURM_STEP_NODELIST / SLURM_JOB_NODELIST; MASTER_PORT or else 20000 + SLURM_JOB_ID % 20000
//     (distinct jobs sharing a node do not collide), else 29500.
//  3. single: rank 0 of 1.
// TORCHELASTIC_RESTART_COUNT is read in every mode. Every malformed or inconsistent value throws
// a config moetron::Error naming the variable, its value and what was expected.
DistEnv read_dist_env(const GetEnv& getenv = {});

// First host of a SLURM node list: "node[01-04,07],gpu5" -> "node01"; "rack[1-2]-n[3-4]" ->
// "rack1-n3"; "a,b" -> "a". The whole list is checked; a malformed one throws a config Error.
std::string slurm_first_host(const std::string& nodelist);

}  // namespace moetron::dist
