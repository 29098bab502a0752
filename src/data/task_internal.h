// Internals shared by the built-in task generators: a portable seeded RNG, the Problem record
// each task produces, and the per-task generator entry points.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "moetron/data/tasks.h"

namespace moetron::data::tasks {

// splitmix64: tiny, seedable, identical on every platform (unlike std distributions).
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [lo, hi].
  int64_t uniform(int64_t lo, int64_t hi) {
    auto span = static_cast<uint64_t>(hi - lo) + 1;
    return lo + static_cast<int64_t>((static_cast<unsigned __int128>(next()) * span) >> 64);
  }

 private:
  uint64_t state_;
};

struct Problem {
  std::string key;        // canonical form: decides the eval partition and eval uniqueness
  std::string prompt;     // the question as the user asks it
  std::string answer;     // reference answer (checked by check_answer)
  std::string reasoning;  // step-by-step trace (the <think> content, no tags)
  std::string final;      // the answer written after </think> (may differ from `answer` yet check)
  std::string line;       // one-line worked form for pretraining, e.g. "12+345=357"
  nlohmann::json fields = nlohmann::json::object();  // extra RL / eval fields
};

Problem make_arithmetic(Rng& rng, const TaskDataOptions& options);
Problem make_countdown(Rng& rng, const TaskDataOptions& options);

}  // namespace moetron::data::tasks
