// See malloc_tuning.h.
#include "moetron/core/malloc_tuning.h"

#include <cstdlib>  // defines __GLIBC__ on glibc systems

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace moetron {

bool tune_malloc_for_training() {
#if defined(__GLIBC__)
  // glibc refuses thresholds above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit); setting either value
  // also turns off its dynamic threshold adjustment, so set both.
  constexpr int kMmapThreshold = 32 << 20;
  constexpr int kTrimThreshold = 1 << 30;  // mallopt takes an int; 1 GiB of free heap top
  const bool mmap_ok = mallopt(M_MMAP_THRESHOLD, kMmapThreshold) == 1;
  const bool trim_ok = mallopt(M_TRIM_THRESHOLD, kTrimThreshold) == 1;
  return mmap_ok && trim_ok;
#else
  return false;
#endif
}

}  // namespace moetron
