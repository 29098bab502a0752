// `moetron launch --nproc-per-node N [...] -- COMMAND...`: the torchrun-compatible local launcher
// (dist/launch.h holds the process logic; this file only declares the options).
#include "command.h"
#include "moetron/core/error.h"
#include "moetron/dist/launch.h"

namespace moetron::cli {

Run setup_launch(CLI::App& app) {
  struct Args {
    dist::LaunchOptions options;
    std::vector<std::string> command;
  };
  auto args = std::make_shared<Args>();
  auto& o = args->options;
  app.add_option("--nproc-per-node,--nproc_per_node", o.nproc_per_node,
                 "Local ranks to start on this node (one per GPU)")
      ->required();
  app.add_option("--nnodes", o.nnodes, "Number of nodes, each running one `moetron launch`")
      ->capture_default_str();
  app.add_option("--node-rank,--node_rank", o.node_rank, "This node's index in [0, nnodes)")
      ->capture_default_str();
  app.add_option("--master-addr,--master_addr", o.master_addr,
                 "Host of node rank 0 (default 127.0.0.1; required when --nnodes > 1)");
  app.add_option("--master-port,--master_port", o.master_port,
                 "Rendezvous port on the master; 0 picks a free one (single node only)")
      ->capture_default_str();
  app.add_option("--max-restarts,--max_restarts", o.max_restarts,
                 "Restart all local ranks up to this many times after a rank fails")
      ->capture_default_str();
  app.add_option("--term-timeout", o.term_timeout_s,
                 "Seconds ranks get to exit after SIGTERM before SIGKILL")
      ->capture_default_str();
  app.add_option("command", args->command,
                 "After '--': a moetron command and its arguments, or a program path (contains "
                 "'/') run as is")
      ->required();
  app.footer(
      "Each rank gets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, NODE_RANK, "
      "MASTER_ADDR, MASTER_PORT, TORCHELASTIC_RESTART_COUNT and TORCHELASTIC_MAX_RESTARTS, and "
      "its output is prefixed with '[rank R] '. See docs/multinode.md.");
  return [args]() { return dist::launch(args->options, args->command); };
}

}  // namespace moetron::cli
