// Learning-rate schedules: linear warmup, then cosine, warmup-stable-decay (WSD) or constant.
// A pure function of the step, so resuming needs only the step counter.
#pragma once

#include <cstdint>

#include "moetron/config/config.h"

namespace moetron::optim {

// Learning rate for optimizer step `step` (0-based) of `total_steps`:
// - warmup: lr * (step + 1) / warmup_steps for step < warmup_steps;
// - cosine: min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2, p = progress after warmup in [0, 1];
// - wsd: lr until the last decay_fraction of the steps, then linear decay to min_lr;
// - constant: lr.
double lr_at(const config::OptimConfig& cfg, int64_t step, int64_t total_steps);

}  // namespace moetron::optim
