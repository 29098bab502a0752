// A stand-in rank for the launcher tests; argv picks the behaviour. Always first prints its pid
// and launcher environment as one stdout line ("env PID=123 RANK=0 WORLD_SIZE=2 ...") and "ready
// <rank>" on stderr once its signal handlers are installed. Then:
//   --sync DIR               after "ready", create DIR/ready.<rank>; a failing rank (below)
//                            first waits (up to 60 s) until every rank of WORLD_SIZE has, so the
//                            others have their signal handling installed when it fails
//   --fail-rank R --code C   rank R exits with C after --delay-ms (default 300) ms
//   --kill-rank R            rank R kills itself with SIGKILL after the delay
//   --succeed-on-restart N   every rank exits 1 until TORCHELASTIC_RESTART_COUNT >= N
//   --trap-term FILE         on SIGTERM write FILE.<rank> and exit 0
//   --ignore-term            ignore SIGTERM (only SIGKILL stops it)
//   --partial TEXT           write TEXT to stdout without a newline
//   --hang                   sleep until a signal ends the process (ranks not failing above)
// and exit 0 otherwise.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

namespace {

const char* g_trap_file = nullptr;
std::string g_trap_path;

extern "C" void on_term(int) {
  const int fd = ::open(g_trap_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd >= 0) {
    (void)!::write(fd, "term\n", 5);
    ::close(fd);
  }
  ::_exit(0);
}

std::string var(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "-";
}

}  // namespace

int main(int argc, char** argv) {
  long fail_rank = -1, kill_rank = -1, code = 1, delay_ms = 300, succeed_on = -1;
  bool hang = false, ignore_term = false;
  const char* partial = nullptr;
  const char* sync_dir = nullptr;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "launch_probe: %s needs a value\n", a.c_str());
        std::exit(64);
      }
      return argv[++i];
    };
    if (a == "--fail-rank") {
      fail_rank = std::atol(next());
    } else if (a == "--kill-rank") {
      kill_rank = std::atol(next());
    } else if (a == "--code") {
      code = std::atol(next());
    } else if (a == "--delay-ms") {
      delay_ms = std::atol(next());
    } else if (a == "--succeed-on-restart") {
      succeed_on = std::atol(next());
    } else if (a == "--trap-term") {
      g_trap_file = next();
    } else if (a == "--ignore-term") {
      ignore_term = true;
    } else if (a == "--partial") {
      partial = next();
    } else if (a == "--sync") {
      sync_dir = next();
    } else if (a == "--hang") {
      hang = true;
    } else {
      std::fprintf(stderr, "launch_probe: unknown argument %s\n", a.c_str());
      return 64;
    }
  }
  const long rank = std::atol(var("RANK").c_str());
  if (g_trap_file != nullptr) {
    g_trap_path = std::string(g_trap_file) + "." + std::to_string(rank);
    ::signal(SIGTERM, on_term);
  }
  if (ignore_term) ::signal(SIGTERM, SIG_IGN);

  std::string line = "env PID=" + std::to_string(::getpid());
  for (const char* name : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                           "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT",
                           "TORCHELASTIC_MAX_RESTARTS", "OMP_NUM_THREADS"}) {
    line += std::string(" ") + name + "=" + var(name);
  }
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
  std::fprintf(stderr, "ready %ld\n", rank);
  std::fflush(stderr);

  if (sync_dir != nullptr) {
    const std::string mine = std::string(sync_dir) + "/ready." + std::to_string(rank);
    const int fd = ::open(mine.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) ::close(fd);
  }
  if (sync_dir != nullptr && (rank == fail_rank || rank == kill_rank)) {
    const long world = std::atol(var("WORLD_SIZE").c_str());
    for (int waited_ms = 0; waited_ms < 60000; waited_ms += 10) {
      long ready = 0;
      for (long r = 0; r < world; ++r) {
        const std::string path = std::string(sync_dir) + "/ready." + std::to_string(r);
        ready += ::access(path.c_str(), F_OK) == 0 ? 1 : 0;
      }
      if (ready == world) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  if (partial != nullptr) {
    std::fputs(partial, stdout);
    std::fflush(stdout);
  }
  if (succeed_on >= 0) {
    return std::atol(var("TORCHELASTIC_RESTART_COUNT").c_str()) >= succeed_on ? 0 : 1;
  }
  if (rank == fail_rank || rank == kill_rank) {
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    if (rank == kill_rank) ::raise(SIGKILL);
    std::fprintf(stderr, "rank %ld failing with code %ld\n", rank, code);
    return static_cast<int>(code);
  }
  if (hang) {
    while (true) ::pause();
  }
  return 0;
}
