// Learning-rate schedules (see schedule.h for the formulas).
#include "moetron/optim/schedule.h"

#include <algorithm>
#include <cmath>

#include "moetron/core/error.h"

namespace moetron::optim {

double lr_at(const config::OptimConfig& cfg, int64_t step, int64_t total_steps) {
  MOETRON_CHECK(step >= 0 && total_steps > 0, "lr_at: step ", step, " of ", total_steps);
  if (step < cfg.warmup_steps) {
    return cfg.lr * static_cast<double>(step + 1) / static_cast<double>(cfg.warmup_steps);
  }
  if (cfg.schedule == "constant") return cfg.lr;
  if (cfg.schedule == "cosine") {
    const int64_t span = std::max<int64_t>(1, total_steps - cfg.warmup_steps - 1);
    const double p = std::clamp(static_cast<double>(step - cfg.warmup_steps) / span, 0.0, 1.0);
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + std::cos(M_PI * p));
  }
  if (cfg.schedule == "wsd") {
    const auto decay_steps =
        std::max<int64_t>(1, static_cast<int64_t>(std::llround(cfg.decay_fraction * total_steps)));
    const int64_t decay_start = std::max(cfg.warmup_steps, total_steps - decay_steps);
    if (step < decay_start) return cfg.lr;
    const int64_t span = std::max<int64_t>(1, total_steps - decay_start - 1);
    const double p = std::clamp(static_cast<double>(step - decay_start) / span, 0.0, 1.0);
    return cfg.lr + (cfg.min_lr - cfg.lr) * p;
  }
  throw Error(ErrorKind::kConfig, str_cat("optim.schedule: unknown schedule '", cfg.schedule,
                                          "'; expected cosine, wsd or constant"));
}

}  // namespace moetron::optim
