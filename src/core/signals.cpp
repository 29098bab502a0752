// Async-signal-safe interrupt flag: the handler only stores into a lock-free atomic.
#include "moetron/core/signals.h"

#include <atomic>
#include <csignal>
#include <cstdint>
#include <ctime>

namespace moetron::signals {
namespace {
std::atomic<int> g_signal{0};
std::atomic<int64_t> g_first_ms{0};  // CLOCK_MONOTONIC time of the first signal
static_assert(std::atomic<int>::is_always_lock_free);
static_assert(std::atomic<int64_t>::is_always_lock_free);

// A repeat within this window is the same request delivered twice (SLURM signals every process
// of a job step, and `moetron launch` forwards the signal to its ranks too).
constexpr int64_t kRepeatWindowMs = 2000;

int64_t monotonic_ms() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);  // async-signal-safe
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

extern "C" void on_interrupt(int sig) {
  const int64_t now = monotonic_ms();
  // A second signal before the first was honoured kills the process the default way, so an
  // impatient user can always stop it; an echo of the first within the window does not.
  const int previous = g_signal.exchange(sig);
  if (previous == 0) {
    g_first_ms.store(now);
    return;
  }
  if (previous == sig && now - g_first_ms.load() < kRepeatWindowMs) return;
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}
}  // namespace

void install_interrupt_handlers() {
  std::signal(SIGINT, on_interrupt);
  std::signal(SIGTERM, on_interrupt);
}
bool interrupt_requested() {
  return g_signal.load() != 0;
}
int interrupt_signal() {
  return g_signal.load();
}
void reset() {
  g_signal.store(0);
  g_first_ms.store(0);
}

}  // namespace moetron::signals
