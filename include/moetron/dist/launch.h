// `moetron launch`: runs a command on N local ranks with the environment torchrun gives its
// workers, prefixes their output, forwards SIGINT/SIGTERM, tears the group down when one rank
// fails and restarts it up to max_restarts times. Torch-free (fork/exec/poll).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace moetron::dist {

struct LaunchOptions {
  int64_t nproc_per_node = 1;
  int64_t nnodes = 1;
  int64_t node_rank = 0;
  std::string master_addr;      // "" = 127.0.0.1, allowed only when nnodes == 1
  int64_t master_port = 29500;  // 0 = pick a free port (one node only)
  int64_t max_restarts = 0;
  double term_timeout_s = 30;  // SIGTERM -> SIGKILL grace when tearing ranks down
  // Executable that runs moetron subcommands (a command whose first token has no '/').
  std::string self_exe = "/proc/self/exe";
};

// Throws a usage moetron::Error naming the option (or the missing command) when invalid.
void validate_launch(const LaunchOptions& options, const std::vector<std::string>& command);

// The variables set for local rank `local_rank` on top of the launcher's own environment:
// RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, NODE_RANK, MASTER_ADDR,
// MASTER_PORT, TORCHELASTIC_RESTART_COUNT, TORCHELASTIC_MAX_RESTARTS. `options.master_port` must
// be resolved already (not 0); OMP_NUM_THREADS is added by launch() when needed.
std::vector<std::pair<std::string, std::string>> rank_environment(const LaunchOptions& options,
                                                                  int64_t local_rank,
                                                                  int64_t restart_count);

// Runs `command` (a program path when its first token contains '/', else a moetron subcommand
// run with options.self_exe) on options.nproc_per_node local ranks and supervises them:
//  - each rank's stdout/stderr is re-emitted line by line as "[rank R] ..." on the launcher's
//    stdout/stderr;
//  - SIGINT/SIGTERM to the launcher (moetron::signals) are forwarded once to every rank; ranks
//    still alive after term_timeout_s get SIGKILL; returns 128+signal;
//  - a rank that exits non-zero or by a signal is logged, the others get SIGTERM (SIGKILL after
//    term_timeout_s); then all ranks are started again (TORCHELASTIC_RESTART_COUNT + 1) while
//    restarts remain, else the failing rank's exit code is returned (1 when it was killed);
//    a moetron subcommand exiting 2 (config or usage error) is not restarted;
//  - returns 0 when every rank exits 0.
// Ranks run in their own process group (so a terminal's Ctrl-C reaches them once, through the
// launcher), with stdin from /dev/null and PR_SET_PDEATHSIG(SIGKILL).
int launch(const LaunchOptions& options, const std::vector<std::string>& command);

}  // namespace moetron::dist
