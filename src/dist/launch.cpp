// The local-rank supervisor behind `moetron launch`: fork/exec per rank, one poll() loop over
// every rank's stdout/stderr pipe, waitpid(WNOHANG) for exits, and the interrupt flag of
// core/signals.h for SIGINT/SIGTERM to the launcher.
#include "moetron/dist/launch.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <optional>

#include "moetron/core/env.h"
#include "moetron/core/error.h"
#include "moetron/core/logging.h"
#include "moetron/core/signals.h"

extern char** environ;

namespace moetron::dist {
namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kMaxLine = 64 * 1024;  // longer "lines" (progress bars) are emitted in pieces
constexpr auto kPollInterval = std::chrono::milliseconds(100);
// After the last rank is reaped, how long output of processes it left behind is still read.
constexpr auto kDrainGrace = std::chrono::seconds(1);
constexpr int kExitUsage = 2;

[[noreturn]] void usage(const std::string& message) {
  throw Error(ErrorKind::kUsage, "launch: " + message);
}

std::string signal_name(int sig) {
  static const std::pair<int, const char*> kNames[] = {
      {SIGHUP, "SIGHUP"},   {SIGINT, "SIGINT"},   {SIGQUIT, "SIGQUIT"}, {SIGILL, "SIGILL"},
      {SIGTRAP, "SIGTRAP"}, {SIGABRT, "SIGABRT"}, {SIGBUS, "SIGBUS"},   {SIGFPE, "SIGFPE"},
      {SIGKILL, "SIGKILL"}, {SIGUSR1, "SIGUSR1"}, {SIGSEGV, "SIGSEGV"}, {SIGUSR2, "SIGUSR2"},
      {SIGPIPE, "SIGPIPE"}, {SIGALRM, "SIGALRM"}, {SIGTERM, "SIGTERM"}, {SIGXCPU, "SIGXCPU"}};
  for (const auto& [number, name] : kNames) {
    if (number == sig) return name;
  }
  return str_cat("signal ", sig);
}

std::string describe_exit(int64_t rank, int status) {
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    return str_cat("rank ", rank, " was killed by signal ", sig, " (", signal_name(sig), ")");
  }
  return str_cat("rank ", rank, " exited with code ", WEXITSTATUS(status));
}

bool succeeded(int status) {
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// A port that was free a moment ago (the usual race: another process may take it first).
int64_t pick_free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  MOETRON_CHECK(fd >= 0, "launch: socket() failed: ", std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  const int err = errno;
  ::close(fd);
  MOETRON_CHECK(ok, "launch: could not find a free port: ", std::strerror(err));
  return ntohs(addr.sin_port);
}

// Writes everything, retrying on EINTR; output to a closed reader is dropped (SIGPIPE is
// ignored while launching), never fatal to the ranks.
void write_all(int fd, const std::string& text) {
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
}

// One rank's stdout or stderr: the read end of its pipe and the unfinished last line.
struct Stream {
  int fd = -1;
  int out_fd = 1;
  std::string partial;
};

struct Rank {
  int64_t rank = 0;
  std::string prefix;
  pid_t pid = -1;
  bool running = false;
  int status = 0;
  Stream streams[2];
};

void emit_lines(Stream& s, const std::string& prefix, const char* data, size_t n) {
  s.partial.append(data, n);
  std::string out;
  size_t start = 0;
  while (true) {
    const size_t nl = s.partial.find('\n', start);
    if (nl == std::string::npos) break;
    out += prefix;
    out.append(s.partial, start, nl + 1 - start);
    start = nl + 1;
  }
  s.partial.erase(0, start);
  if (s.partial.size() >= kMaxLine) {
    out += prefix + s.partial + "\n";
    s.partial.clear();
  }
  if (!out.empty()) write_all(s.out_fd, out);
}

void close_stream(Stream& s, const std::string& prefix) {
  if (s.fd < 0) return;
  ::close(s.fd);
  s.fd = -1;
  if (!s.partial.empty()) {
    write_all(s.out_fd, prefix + s.partial + "\n");
    s.partial.clear();
  }
}

// Reads what is available now; closes the stream (flushing its partial line) at end of file.
void drain(Stream& s, const std::string& prefix) {
  char buf[16384];
  while (s.fd >= 0) {
    const ssize_t n = ::read(s.fd, buf, sizeof(buf));
    if (n > 0) {
      emit_lines(s, prefix, buf, static_cast<size_t>(n));
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return;
    } else {
      close_stream(s, prefix);
    }
  }
}

// Everything a child needs, prepared before fork (only async-signal-safe calls after it).
struct Exec {
  std::string program;
  std::vector<std::string> args;
};

std::vector<char*> pointers(std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (auto& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

std::vector<std::string> child_environment(
    const std::vector<std::pair<std::string, std::string>>& set) {
  std::vector<std::string> out;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry = *e;
    const std::string name = entry.substr(0, entry.find('='));
    bool replaced = false;
    for (const auto& [key, value] : set) replaced = replaced || key == name;
    if (!replaced) out.push_back(entry);
  }
  for (const auto& [key, value] : set) out.push_back(key + "=" + value);
  return out;
}

// Child side of fork(): own process group, killed with the launcher, stdin from /dev/null,
// stdout/stderr into the pipes, default signal handling, then signals unblocked (a SIGTERM
// forwarded since fork acts now, the default way), exec.
[[noreturn]] void exec_child(const char* program, char* const* argv, char* const* envp, int out_fd,
                             int err_fd, pid_t launcher) {
  ::setpgid(0, 0);
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != launcher) ::_exit(1);  // the launcher died before prctl took effect
  const int null_fd = ::open("/dev/null", O_RDONLY);
  if (null_fd >= 0) ::dup2(null_fd, 0);
  ::dup2(out_fd, 1);
  ::dup2(err_fd, 2);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig : {SIGPIPE, SIGINT, SIGTERM}) ::sigaction(sig, &dfl, nullptr);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  ::execve(program, argv, envp);
  const char* what = "launch: cannot execute ";
  const char* why = std::strerror(errno);  // not async-signal-safe in theory; glibc's is fine
  (void)!::write(2, what, std::strlen(what));
  (void)!::write(2, program, std::strlen(program));
  (void)!::write(2, ": ", 2);
  (void)!::write(2, why, std::strlen(why));
  (void)!::write(2, "\n", 1);
  ::_exit(127);
}

void start_rank(Rank& r, const Exec& exec, std::vector<std::string> env) {
  int out_pipe[2], err_pipe[2];
  MOETRON_CHECK(::pipe2(out_pipe, O_CLOEXEC) == 0, "launch: pipe failed: ", std::strerror(errno));
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
    const int err = errno;
    ::close(out_pipe[0]);
    ::close(out_pipe[1]);
    MOETRON_CHECK(false, "launch: pipe failed: ", std::strerror(err));
  }
  std::vector<std::string> args = exec.args;
  auto argv = pointers(args);
  auto envp = pointers(env);
  const pid_t launcher = ::getpid();
  // SIGINT/SIGTERM stay blocked across fork until the child has reset its handlers: a signal
  // forwarded in between would otherwise run the launcher's handler in the child and be lost.
  sigset_t interrupts, old_mask;
  sigemptyset(&interrupts);
  sigaddset(&interrupts, SIGINT);
  sigaddset(&interrupts, SIGTERM);
  ::sigprocmask(SIG_BLOCK, &interrupts, &old_mask);
  const pid_t pid = ::fork();
  if (pid == 0) {
    exec_child(exec.program.c_str(), argv.data(), envp.data(), out_pipe[1], err_pipe[1], launcher);
  }
  const int err = errno;
  ::sigprocmask(SIG_SETMASK, &old_mask, nullptr);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  if (pid < 0) {
    ::close(out_pipe[0]);
    ::close(err_pipe[0]);
    MOETRON_CHECK(false, "launch: fork failed: ", std::strerror(err));
  }
  ::setpgid(pid, pid);  // also here, so a signal sent right away cannot miss the group
  r.pid = pid;
  r.running = true;
  r.status = 0;
  r.streams[0] = Stream{out_pipe[0], 1, {}};
  r.streams[1] = Stream{err_pipe[0], 2, {}};
  for (auto& s : r.streams) ::fcntl(s.fd, F_SETFL, ::fcntl(s.fd, F_GETFL) | O_NONBLOCK);
}

// Signals the process group of every rank not yet reaped (the rank and whatever it started, as
// a terminal would); an unreaped pid cannot have been reused, so the group is still ours.
void signal_running(std::vector<Rank>& ranks, int sig) {
  for (auto& r : ranks) {
    if (r.running && ::kill(-r.pid, sig) != 0) ::kill(r.pid, sig);
  }
}

std::string running_list(const std::vector<Rank>& ranks) {
  std::string out;
  for (const auto& r : ranks) {
    if (r.running) out += (out.empty() ? "" : ", ") + std::to_string(r.rank);
  }
  return out;
}

enum class Outcome { kSuccess, kFailure, kInterrupted };

struct Round {
  Outcome outcome = Outcome::kSuccess;
  int64_t failed_rank = -1;
  int failed_status = 0;
  int signal = 0;
};

struct Plan {
  LaunchOptions options;  // master_port resolved
  Exec exec;
  bool moetron_command = false;
  bool set_omp = false;
};

// One generation of local ranks, from start to the last exit.
Round run_round(const Plan& plan, int64_t restart) {
  const LaunchOptions& o = plan.options;
  std::vector<Rank> ranks(static_cast<size_t>(o.nproc_per_node));
  Round result;
  const auto term_timeout =
      std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.term_timeout_s));
  std::optional<Clock::time_point> kill_at;  // set once the group is being torn down
  bool killed = false;

  // Kills what was started if starting the rest fails (or anything else throws).
  struct Reaper {
    std::vector<Rank>& ranks;
    ~Reaper() {
      for (auto& r : ranks) {
        if (r.running) {
          if (::kill(-r.pid, SIGKILL) != 0) ::kill(r.pid, SIGKILL);
          ::waitpid(r.pid, nullptr, 0);
        }
        for (auto& s : r.streams) {
          if (s.fd >= 0) ::close(s.fd);
        }
      }
    }
  } reaper{ranks};

  for (int64_t local = 0; local < o.nproc_per_node; ++local) {
    Rank& r = ranks[static_cast<size_t>(local)];
    r.rank = o.node_rank * o.nproc_per_node + local;
    r.prefix = str_cat("[rank ", r.rank, "] ");
    auto vars = rank_environment(o, local, restart);
    if (plan.set_omp) vars.emplace_back("OMP_NUM_THREADS", "1");
    start_rank(r, plan.exec, child_environment(vars));
  }

  auto tear_down = [&] {
    signal_running(ranks, SIGTERM);
    kill_at = Clock::now() + term_timeout;
  };

  while (true) {
    // 1. A signal to the launcher: forward it once, then stop.
    if (signals::interrupt_requested() && result.outcome != Outcome::kInterrupted) {
      result.outcome = Outcome::kInterrupted;
      result.signal = signals::interrupt_signal();
      if (!kill_at) {
        log::warn("launch: received ", signal_name(result.signal), ", forwarding it to ranks ",
                  running_list(ranks), " (SIGKILL after ", o.term_timeout_s, " s)");
        signal_running(ranks, result.signal);
        kill_at = Clock::now() + term_timeout;
      } else {
        log::warn("launch: received ", signal_name(result.signal),
                  " while stopping the ranks; not restarting");
      }
    }

    // 2. Exits (each rank's remaining output first, so its last lines precede the message).
    for (auto& r : ranks) {
      if (!r.running) continue;
      int status = 0;
      const pid_t got = ::waitpid(r.pid, &status, WNOHANG);
      if (got == 0 || (got < 0 && errno == EINTR)) continue;
      MOETRON_CHECK(got == r.pid, "launch: waitpid failed: ", std::strerror(errno));
      r.running = false;
      r.status = status;
      for (auto& s : r.streams) drain(s, r.prefix);
      if (succeeded(status)) {
        log::debug("launch: rank ", r.rank, " finished");
      } else if (kill_at) {
        log::info("launch: ", describe_exit(r.rank, status));
      } else {
        log::error("launch: ", describe_exit(r.rank, status), "; stopping the other ranks");
        result.outcome = Outcome::kFailure;
        result.failed_rank = r.rank;
        result.failed_status = status;
        tear_down();
      }
    }
    bool any_running = false;
    for (const auto& r : ranks) any_running = any_running || r.running;

    // 3. Ranks that outlived the grace period.
    if (any_running && kill_at && !killed && Clock::now() >= *kill_at) {
      log::warn("launch: ranks ", running_list(ranks), " still running after ", o.term_timeout_s,
                " s; sending SIGKILL");
      signal_running(ranks, SIGKILL);
      killed = true;
    }

    // 4. Output.
    std::vector<pollfd> fds;
    std::vector<std::pair<Stream*, const std::string*>> owners;
    for (auto& r : ranks) {
      for (auto& s : r.streams) {
        if (s.fd >= 0) {
          fds.push_back(pollfd{s.fd, POLLIN, 0});
          owners.emplace_back(&s, &r.prefix);
        }
      }
    }
    if (!any_running) {
      // Everything is reaped; read what descendants still write for a moment, then close.
      const auto until = Clock::now() + kDrainGrace;
      while (!fds.empty() && Clock::now() < until) {
        const int n = ::poll(fds.data(), fds.size(), 50);
        if (n <= 0) continue;
        std::vector<pollfd> still;
        std::vector<std::pair<Stream*, const std::string*>> still_owners;
        for (size_t i = 0; i < fds.size(); ++i) {
          if (fds[i].revents != 0) drain(*owners[i].first, *owners[i].second);
          if (owners[i].first->fd >= 0) {
            still.push_back(pollfd{owners[i].first->fd, POLLIN, 0});
            still_owners.push_back(owners[i]);
          }
        }
        fds.swap(still);
        owners.swap(still_owners);
      }
      for (auto& [stream, prefix] : owners) close_stream(*stream, *prefix);
      break;
    }
    auto wait = kPollInterval;
    if (kill_at && !killed) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(*kill_at - Clock::now());
      wait = std::max(std::chrono::milliseconds(1), std::min(wait, left));
    }
    const int n = ::poll(fds.data(), fds.size(), static_cast<int>(wait.count()));
    if (n > 0) {
      for (size_t i = 0; i < fds.size(); ++i) {
        if (fds[i].revents != 0) drain(*owners[i].first, *owners[i].second);
      }
    }
  }
  return result;
}

std::string join(const std::vector<std::string>& words) {
  std::string out;
  for (const auto& w : words) out += (out.empty() ? "" : " ") + w;
  return out;
}

// SIGPIPE ignored while launching (a closed stdout must not kill the launcher and with it every
// rank); restored afterwards.
struct IgnoreSigpipe {
  struct sigaction old {};
  IgnoreSigpipe() {
    struct sigaction ign {};
    ign.sa_handler = SIG_IGN;
    ::sigaction(SIGPIPE, &ign, &old);
  }
  ~IgnoreSigpipe() { ::sigaction(SIGPIPE, &old, nullptr); }
};

}  // namespace

void validate_launch(const LaunchOptions& o, const std::vector<std::string>& command) {
  if (o.nproc_per_node < 1) {
    usage(str_cat("--nproc-per-node ", o.nproc_per_node, " must be at least 1"));
  }
  if (o.nnodes < 1) usage(str_cat("--nnodes ", o.nnodes, " must be at least 1"));
  if (o.node_rank < 0 || o.node_rank >= o.nnodes) {
    usage(str_cat("--node-rank ", o.node_rank, " must be in [0, --nnodes) = [0, ", o.nnodes, ")"));
  }
  if (o.master_port < 0 || o.master_port > 65535) {
    usage(str_cat("--master-port ", o.master_port,
                  " must be a TCP port in 1..65535 (or 0 for a free one on a single node)"));
  }
  if (o.nnodes > 1 && o.master_port == 0) {
    usage(str_cat("--master-port 0 (pick a free port) works only with --nnodes 1; with --nnodes ",
                  o.nnodes, " every node must be given the same port"));
  }
  if (o.nnodes > 1 && o.master_addr.empty()) {
    usage(str_cat("--master-addr is required with --nnodes ", o.nnodes,
                  " (the host of node rank 0, reachable from every node)"));
  }
  if (o.max_restarts < 0) usage(str_cat("--max-restarts ", o.max_restarts, " must be >= 0"));
  if (!std::isfinite(o.term_timeout_s) || o.term_timeout_s < 0) {
    usage(str_cat("--term-timeout ", o.term_timeout_s, " must be a number of seconds >= 0"));
  }
  if (command.empty() || command.front().empty()) {
    usage(
        "nothing to run: give a moetron command or a program after '--', e.g. "
        "'moetron launch --nproc-per-node 2 -- train config.yaml'");
  }
}

std::vector<std::pair<std::string, std::string>> rank_environment(const LaunchOptions& o,
                                                                  int64_t local_rank,
                                                                  int64_t restart_count) {
  const std::string node = std::to_string(o.node_rank);
  return {
      {"RANK", std::to_string(o.node_rank * o.nproc_per_node + local_rank)},
      {"WORLD_SIZE", std::to_string(o.nnodes * o.nproc_per_node)},
      {"LOCAL_RANK", std::to_string(local_rank)},
      {"LOCAL_WORLD_SIZE", std::to_string(o.nproc_per_node)},
      {"GROUP_RANK", node},
      {"NODE_RANK", node},
      {"MASTER_ADDR", o.master_addr.empty() ? std::string("127.0.0.1") : o.master_addr},
      {"MASTER_PORT", std::to_string(o.master_port)},
      {"TORCHELASTIC_RESTART_COUNT", std::to_string(restart_count)},
      {"TORCHELASTIC_MAX_RESTARTS", std::to_string(o.max_restarts)},
  };
}

int launch(const LaunchOptions& options, const std::vector<std::string>& command) {
  validate_launch(options, command);
  Plan plan;
  plan.options = options;
  LaunchOptions& o = plan.options;
  if (o.master_addr.empty()) o.master_addr = "127.0.0.1";

  // What to run.
  if (command.front().find('/') != std::string::npos) {
    if (::access(command.front().c_str(), X_OK) != 0) {
      usage(str_cat("'", command.front(), "' is not an executable program (", std::strerror(errno),
                    ")"));
    }
    plan.exec.program = command.front();
    plan.exec.args = command;
  } else {
    plan.moetron_command = true;
    char buf[4096];
    const ssize_t n = ::readlink(o.self_exe.c_str(), buf, sizeof(buf) - 1);
    plan.exec.program = n > 0 ? std::string(buf, static_cast<size_t>(n)) : o.self_exe;
    plan.exec.args = {plan.exec.program};
    plan.exec.args.insert(plan.exec.args.end(), command.begin(), command.end());
  }

  if (o.master_port == 0) {
    o.master_port = pick_free_port();
    log::info("launch: --master-port 0: using free port ", o.master_port);
  }
  if (o.nproc_per_node > 1 && !env::get("OMP_NUM_THREADS")) {
    plan.set_omp = true;
    log::info("launch: setting OMP_NUM_THREADS=1 for each of the ", o.nproc_per_node,
              " ranks (export OMP_NUM_THREADS to choose another value)");
  }

  const int64_t first = o.node_rank * o.nproc_per_node;
  const std::string ranks = o.nproc_per_node == 1
                                ? str_cat("rank ", first)
                                : str_cat("ranks ", first, "..", first + o.nproc_per_node - 1);
  log::info("launch: ", ranks, " of world ", o.nnodes * o.nproc_per_node, " on node ", o.node_rank,
            " of ", o.nnodes, ", master ", o.master_addr, ":", o.master_port, ": ",
            join(plan.exec.args));

  IgnoreSigpipe ignore_sigpipe;
  for (int64_t restart = 0;; ++restart) {
    if (signals::interrupt_requested()) return 128 + signals::interrupt_signal();
    const Round round = run_round(plan, restart);
    switch (round.outcome) {
      case Outcome::kSuccess:
        log::info("launch: every rank exited with code 0");
        return 0;
      case Outcome::kInterrupted:
        log::warn("launch: stopped by ", signal_name(round.signal));
        return 128 + round.signal;
      case Outcome::kFailure:
        break;
    }
    const int code = WIFEXITED(round.failed_status) ? WEXITSTATUS(round.failed_status) : 1;
    if (plan.moetron_command && code == kExitUsage) {
      log::error("launch: rank ", round.failed_rank,
                 " reported a config or usage error (exit code 2); not restarting");
      return code;
    }
    if (restart >= o.max_restarts) {
      if (o.max_restarts > 0) {
        log::error("launch: no restarts left (--max-restarts ", o.max_restarts, ")");
      }
      return code;
    }
    log::warn("launch: restarting all ", o.nproc_per_node, " local ranks (restart ", restart + 1,
              " of ", o.max_restarts, ") after ",
              describe_exit(round.failed_rank, round.failed_status));
  }
}

}  // namespace moetron::dist
