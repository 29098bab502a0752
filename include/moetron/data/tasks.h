// Built-in reasoning tasks (arithmetic, countdown): seeded generators for every stage's data
// (pretraining corpus, cold-start SFT with <think> traces, RL prompts, held-out eval) and the
// answer checker the trainer's eval accuracy and the rewards module build on.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "moetron/config/config.h"

namespace moetron::data {

struct TaskDataOptions {
  uint64_t seed = 1234;
  int64_t num_pretrain_docs = 2000;
  int64_t num_sft = 2000;
  int64_t num_rl = 2000;
  int64_t num_eval = 200;
  int64_t problems_per_doc = 8;  // worked problems per pretraining document
  // arithmetic: operands have 1..max_digits digits; operators drawn uniformly from `ops`.
  int64_t max_digits = 3;
  std::string ops = "+-*";
  // arithmetic: problems have 2..max_terms operands. Above 2, every problem is a left-to-right
  // + - chain with one running-total line per step (`ops` must not contain '*').
  int64_t max_terms = 2;
  // countdown: 3..max_numbers numbers (3 or 4), each in [1, max_number]; targets <= max_target.
  int64_t max_numbers = 4;
  int64_t max_number = 25;
  int64_t max_target = 999;
  std::string think_open = "<think>";
  std::string think_close = "</think>";
};

// One task's data as JSONL lines (one JSON object per string, no newline):
//   pretrain: {"text"}                      sft: {"prompt","response"}
//   rl:       {"prompt","answer","task", + task fields}
//   eval:     {"prompt","answer","task","response","text", + task fields} so one held-out file
//             serves RL / accuracy eval, SFT eval loss and pretraining eval loss.
// Eval problems are those whose canonical key hashes into a fixed slice (1 in 10) of the problem
// space, independent of the seed; train sets draw only outside it, so no eval problem appears in
// any train set of any seed. Eval problems are distinct; train problems may repeat.
struct TaskData {
  std::vector<std::string> pretrain, sft, rl, eval;
};

// The generator options a config asks for (data.task_*), seeded by `seed`, with the think tags.
TaskDataOptions task_options(const config::DataConfig& data, uint64_t seed,
                             const std::string& think_open = "<think>",
                             const std::string& think_close = "</think>");

// The built-in task of a whole config: data.task_*, seeded by data.shuffle_seed, with the SFT
// think tags. What `moetron run`, GRPO and eval generate, so they all see the same problems.
TaskDataOptions task_options(const config::Config& cfg);

// "arithmetic" and "countdown".
const std::vector<std::string>& task_names();

// Deterministic in (task, options). Throws moetron::Error (kUsage) for an unknown task, options
// out of range, or an eval set larger than the held-out slice of the problem space.
TaskData generate_task_data(const std::string& task, const TaskDataOptions& options);

// Writes pretrain.jsonl, sft.jsonl, rl.jsonl, eval.jsonl and meta.json (task, seed, counts,
// options) into out_dir (created if missing), each atomically. For `moetron data make TASK`.
void make_task_data(const std::string& task, const std::string& out_dir,
                    const TaskDataOptions& options);

// The final answer of a completion: the inside of the last <answer>...</answer> when present,
// else the text after the last </think>; trimmed. nullopt when neither is present or it is empty.
std::optional<std::string> extract_final_answer(const std::string& completion);

// Whether `completion`'s final answer (extract_final_answer) is correct.
//   arithmetic: an integer equal to `answer` (a trailing '.' is allowed).
//   countdown:  `answer` is a reference expression that uses every given number once (as the
//               generator writes it); the completion's expression (an optional "= N" tail is
//               ignored) may use only those numbers, each at most as often as given, no other
//               numbers, + - * / and parentheses, and must equal the reference's value exactly
//               (rational arithmetic; division by zero or overflow is simply wrong).
// Throws (kUsage) for an unknown task or an invalid reference answer.
bool check_answer(const std::string& task, const std::string& completion,
                  const std::string& answer);

// Exact value of a countdown-style expression as numerator/denominator (denominator > 0,
// reduced) and the number literals it uses, in order; nullopt if malformed, a division by zero
// or an int64 overflow.
struct ExprValue {
  int64_t num = 0;
  int64_t den = 1;
  std::vector<int64_t> literals;
};
std::optional<ExprValue> evaluate_expression(const std::string& expr);

}  // namespace moetron::data
