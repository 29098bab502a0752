// SIGINT/SIGTERM become a flag that long-running loops poll at step boundaries, so a run
// can save a checkpoint and exit 128+signal instead of dying mid-write. A different or later
// (> 2 s) second signal kills the process; a repeat of the first within 2 s (SLURM plus a
// launcher forwarding the same SIGTERM) is ignored.
#pragma once

namespace moetron::signals {

void install_interrupt_handlers();
bool interrupt_requested();
// The signal number that was received, 0 when none.
int interrupt_signal();
// For tests: clears the flag.
void reset();

}  // namespace moetron::signals
