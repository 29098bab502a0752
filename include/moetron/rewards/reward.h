// Verifiable rewards (SPEC 5.3, 5.4): rule-based verifiers behind one interface, a registry of
// them by name, and the weighted sum a config's `rl.rewards` list selects. Torch-free.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "moetron/config/config.h"

namespace moetron::rewards {

// One completion to score. `completion` is the generated text only (decoded, special tokens
// written as their text, e.g. "<think>"), without the prompt.
struct Sample {
  std::string completion;
  std::string answer;       // the reference answer (a number, a LaTeX expression, an expression)
  std::string task;         // "arithmetic" | "countdown" | "math" | "" (= math)
  std::string prompt;       // optional; verifiers that need the question's data read it
  int64_t num_tokens = -1;  // completion length in tokens; -1: unknown (overlong then uses bytes)
  bool truncated = false;   // generation hit max_new_tokens without a stop token
};

// What the verifiers may need beyond the sample: the template's tags and the length budget.
struct RewardContext {
  std::string think_open = "<think>";
  std::string think_close = "</think>";
  bool answer_tags = false;     // R1-Zero template: the answer must be inside <answer></answer>
  int64_t max_new_tokens = 0;   // DAPO L_max (generation budget)
  int64_t overlong_buffer = 0;  // DAPO L_cache; 0 disables the overlong term
  std::string language = "en";  // language-consistency target
};

// A rule-based verifier: one named reward component.
class Verifier {
 public:
  virtual ~Verifier() = default;
  virtual const std::string& name() const = 0;
  virtual double score(const Sample& sample) const = 0;
};

using VerifierFactory = std::function<std::unique_ptr<Verifier>(const RewardContext&)>;

// The registry: built-ins are "accuracy", "format", "countdown", "language", "overlong".
// register_verifier adds (or replaces) one; names lists them sorted.
void register_verifier(const std::string& name, VerifierFactory factory);
std::vector<std::string> verifier_names();
// Throws moetron::Error (kConfig) naming the unknown verifier and the known ones.
std::unique_ptr<Verifier> make_verifier(const std::string& name, const RewardContext& context);

struct Score {
  double total = 0;                                        // sum of weight * component
  std::vector<std::pair<std::string, double>> components;  // unweighted, in config order
};

// The weighted sum of a list of terms (config `rl.rewards`).
class RewardFunction {
 public:
  RewardFunction(const std::vector<config::RewardTerm>& terms, const RewardContext& context);
  Score score(const Sample& sample) const;
  // Component names in order (for metrics columns).
  std::vector<std::string> names() const;

 private:
  std::vector<std::pair<std::unique_ptr<Verifier>, double>> terms_;
};

// The context a config implies: think tags from sft.think_open/close, answer_tags from
// rl.r1_zero, the length budget from rl.max_new_tokens / rl.overlong_buffer.
RewardContext context_from_config(const config::Config& cfg);

}  // namespace moetron::rewards
