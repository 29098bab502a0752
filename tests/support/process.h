// Test helpers for the moetron binary as a background process: start it without waiting (so a
// test can signal it mid-run), wait for a condition or its exit with a deadline, and kill and
// reap it when a failed assertion leaves it running.
#pragma once

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "support/cli_runner.h"

extern char** environ;

namespace moetron::testing {

// Starts `moetron args...` in `cwd` (a shell that execs the binary, so the pid is moetron's),
// stdout and stderr to the files `out` and `err`; -1 when it could not be started.
inline pid_t spawn_moetron(const std::vector<std::string>& args, const std::string& cwd,
                           const std::string& out, const std::string& err) {
  std::string cmd = "cd " + shell_quote(cwd) + " && exec " +
                    shell_quote(std::string(MOETRON_BINARY_DIR) + "/bin/moetron");
  for (const auto& a : args) cmd += " " + shell_quote(a);
  cmd += " >" + shell_quote(out) + " 2>" + shell_quote(err);
  const char* argv[] = {"/bin/sh", "-c", cmd.c_str(), nullptr};
  pid_t pid = -1;
  const int rc =
      ::posix_spawn(&pid, "/bin/sh", nullptr, nullptr, const_cast<char**>(argv), environ);
  return rc == 0 ? pid : -1;
}

// Kills and reaps the child if a failed assertion leaves it running; set pid = -1 once reaped.
struct ChildGuard {
  pid_t pid = -1;
  ~ChildGuard() {
    if (pid > 0 && ::kill(pid, SIGKILL) == 0) ::waitpid(pid, nullptr, 0);
  }
};

inline size_t count_lines(const std::string& path) {
  if (!std::filesystem::exists(path)) return 0;
  const std::string text = read_text(path);
  return static_cast<size_t>(std::count(text.begin(), text.end(), '\n'));
}

// Polls `done` every 5 ms until it holds (true) or `timeout` passes (false).
template <typename Pred>
bool wait_until(Pred done, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

// The wait status of `guard.pid` once it exits within `timeout` (the guard is cleared), else
// nullopt (the process is left running for the guard).
inline std::optional<int> wait_exit(ChildGuard& guard, std::chrono::milliseconds timeout) {
  int status = 0;
  const bool exited =
      wait_until([&] { return ::waitpid(guard.pid, &status, WNOHANG) == guard.pid; }, timeout);
  if (!exited) return std::nullopt;
  guard.pid = -1;
  return status;
}

}  // namespace moetron::testing
