// Wall-clock stopwatch for step lines and benchmarks (steady clock, seconds as double).
#pragma once

#include <chrono>

namespace moetron {

class Stopwatch {
 public:
  Stopwatch() : start_(Clock::now()) {}
  void reset() { start_ = Clock::now(); }
  double seconds() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

 private:
  using Clock = std::chrono::steady_clock;
  Clock::time_point start_;
};

}  // namespace moetron
