// Starting a few local ranks of a program for the distributed tests: torchrun-style environment,
// output captured per rank, exit codes, and a deadline after which everything is killed.
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace moetron::testing {

// A port that was free a moment ago (the kernel's pick for port 0).
inline int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

struct RankResult {
  int exit_code = -1;  // 128 + signal when killed
  std::string output;  // stdout and stderr
};

struct RunResult {
  std::vector<RankResult> ranks;
  double seconds = 0;
  bool timed_out = false;
};

// Runs `argv` as `world` ranks (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
// MASTER_PORT set, plus `extra_env`), output to out_dir/rank<r>.log, killing all after
// `deadline_s`.
inline RunResult run_ranks(const std::vector<std::string>& argv, int world,
                           const std::string& out_dir, double deadline_s,
                           const std::vector<std::string>& extra_env = {}) {
  const int port = free_port();
  std::vector<pid_t> pids;
  const auto start = std::chrono::steady_clock::now();
  for (int r = 0; r < world; ++r) {
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e) env.emplace_back(*e);
    for (const auto& kv : std::vector<std::string>{
             "RANK=" + std::to_string(r), "WORLD_SIZE=" + std::to_string(world),
             "LOCAL_RANK=" + std::to_string(r), "LOCAL_WORLD_SIZE=" + std::to_string(world),
             "MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + std::to_string(port), "OMP_NUM_THREADS=1"})
      env.push_back(kv);
    for (const auto& kv : extra_env) env.push_back(kv);
    std::vector<char*> envp, args;
    for (auto& s : env) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::vector<std::string> argv_copy = argv;
    for (auto& s : argv_copy) args.push_back(s.data());
    args.push_back(nullptr);
    const std::string log = out_dir + "/rank" + std::to_string(r) + ".log";
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    pid_t pid = 0;
    posix_spawn(&pid, args[0], &fa, nullptr, args.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    pids.push_back(pid);
  }
  RunResult result;
  result.ranks.resize(world);
  int remaining = world;
  std::vector<bool> done(world, false);
  while (remaining > 0) {
    for (int r = 0; r < world; ++r) {
      if (done[r]) continue;
      int status = 0;
      if (::waitpid(pids[r], &status, WNOHANG) == pids[r]) {
        done[r] = true;
        --remaining;
        result.ranks[r].exit_code =
            WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
    }
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (remaining > 0 && elapsed > deadline_s) {
      result.timed_out = true;
      for (int r = 0; r < world; ++r)
        if (!done[r]) ::kill(pids[r], SIGKILL);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (int r = 0; r < world; ++r) {
    std::ifstream in(out_dir + "/rank" + std::to_string(r) + ".log");
    std::stringstream ss;
    ss << in.rdbuf();
    result.ranks[r].output = ss.str();
  }
  return result;
}

// All ranks' output, for failure messages.
inline std::string all_output(const RunResult& run) {
  std::string out;
  for (size_t r = 0; r < run.ranks.size(); ++r) {
    out += "---- rank " + std::to_string(r) + " (exit " + std::to_string(run.ranks[r].exit_code) +
           ")\n" + run.ranks[r].output;
  }
  return out;
}

}  // namespace moetron::testing
