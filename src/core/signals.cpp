// Async-signal-safe interrupt flag: the handler only stores into a lock-free atomic.
#include "moetron/core/signals.h"

#include <atomic>
#include <csignal>

namespace moetron::signals {
namespace {
std::atomic<int> g_signal{0};
static_assert(std::atomic<int>::is_always_lock_free);

extern "C" void on_interrupt(int sig) {
  // A second signal before the first was honoured kills the process the default way, so an
  // impatient user can always stop it.
  if (g_signal.exchange(sig) != 0) {
    std::signal(sig, SIG_DFL);
    std::raise(sig);
  }
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
}

}  // namespace moetron::signals
