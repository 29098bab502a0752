// Built-in task data: draws problems per output file from independent seeded streams, routes
// them by a hash of the problem into train or the held-out eval slice, and writes the JSONL files.
#include "moetron/data/tasks.h"

#include <filesystem>
#include <set>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "moetron/core/error.h"
#include "moetron/core/files.h"
#include "moetron/data/chat_template.h"
#include "task_internal.h"

namespace moetron::data {
namespace {

using tasks::Problem;
using tasks::Rng;
using Generator = Problem (*)(Rng&, const TaskDataOptions&);

Generator find_generator(const std::string& task) {
  if (task == "arithmetic") return tasks::make_arithmetic;
  if (task == "countdown") return tasks::make_countdown;
  throw Error(ErrorKind::kUsage,
              str_cat("unknown task \"", task, "\" (data.task): expected arithmetic or countdown"));
}

// FNV-1a over the canonical key with a fixed salt: the eval slice depends on the problem only,
// never on the seed, so no seed's train data can contain another seed's eval problems.
bool is_eval_problem(const std::string& key) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (char c : std::string("moetron-eval/") + key) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001B3ull;
  }
  return h % 10 == 0;
}

void check_options(const TaskDataOptions& o) {
  auto need = [](bool ok, const std::string& what) {
    if (!ok) throw Error(ErrorKind::kUsage, "task data options: " + what);
  };
  need(o.num_pretrain_docs >= 0 && o.num_sft >= 0 && o.num_rl >= 0 && o.num_eval >= 0,
       "counts must be >= 0");
  need(o.problems_per_doc >= 1, "problems_per_doc must be >= 1");
  need(o.max_digits >= 1 && o.max_digits <= 9, "max_digits must be in [1, 9]");
  need(!o.ops.empty() && o.ops.find_first_not_of("+-*") == std::string::npos &&
           std::set<char>(o.ops.begin(), o.ops.end()).size() == o.ops.size(),
       "ops must be distinct characters of \"+-*\", got \"" + o.ops + "\"");
  need(o.max_terms >= 2 && o.max_terms <= 8, "max_terms must be in [2, 8]");
  need(o.max_terms == 2 || o.ops.find('*') == std::string::npos,
       "chains (max_terms > 2) are worked left to right, so ops must not contain '*'");
  need(o.max_numbers >= 3 && o.max_numbers <= 6, "max_numbers must be in [3, 6]");
  need(o.max_number >= 2 && o.max_number <= 1000, "max_number must be in [2, 1000]");
  need(o.max_target >= 10 && o.max_target <= 1000000, "max_target must be in [10, 1e6]");
}

// Draws until a problem lands on the wanted side of the partition.
Problem draw(Generator gen, Rng& rng, const TaskDataOptions& o, bool eval, const char* what) {
  for (int i = 0; i < 100000; ++i) {
    Problem p = gen(rng, o);
    if (is_eval_problem(p.key) == eval) return p;
  }
  throw Error(ErrorKind::kUsage, str_cat("task data: no ", what,
                                         " problem found in 100000 draws; "
                                         "the problem space is too small (raise max_digits)"));
}

std::string sft_response(const Problem& p, const TaskDataOptions& o) {
  return format_reasoning_response(p.reasoning, p.final, o.think_open, o.think_close);
}

std::string worked_text(const Problem& p) {
  return "Problem: " + p.prompt + "\n" + p.reasoning + "\nAnswer: " + p.final;
}

nlohmann::json rl_record(const Problem& p, const std::string& task) {
  nlohmann::json j = p.fields;
  j["prompt"] = p.prompt;
  j["answer"] = p.answer;
  j["task"] = task;
  return j;
}

}  // namespace

const std::vector<std::string>& task_names() {
  static const std::vector<std::string> names = {"arithmetic", "countdown"};
  return names;
}

TaskDataOptions task_options(const config::Config& cfg) {
  return task_options(cfg.data, static_cast<uint64_t>(cfg.data.shuffle_seed), cfg.sft.think_open,
                      cfg.sft.think_close);
}

TaskDataOptions task_options(const config::DataConfig& data, uint64_t seed,
                             const std::string& think_open, const std::string& think_close) {
  TaskDataOptions o;
  o.seed = seed;
  o.max_digits = data.task_max_digits;
  o.ops = data.task_ops;
  o.max_terms = data.task_terms;
  o.max_numbers = data.task_max_numbers;
  o.num_pretrain_docs = data.task_size;
  o.num_sft = data.task_size;
  o.num_rl = data.task_size;
  o.num_eval = data.task_eval_size;
  o.think_open = think_open;
  o.think_close = think_close;
  return o;
}

TaskData generate_task_data(const std::string& task, const TaskDataOptions& o) {
  Generator gen = find_generator(task);
  check_options(o);
  // One stream per file, so changing one count leaves the other files unchanged.
  auto stream = [&](uint64_t id) { return Rng(o.seed * 0x9E3779B97F4A7C15ull + id * 7919 + 1); };
  TaskData d;

  Rng rp = stream(1);
  for (int64_t i = 0; i < o.num_pretrain_docs; ++i) {
    std::string text;
    for (int64_t k = 0; k < o.problems_per_doc; ++k) {
      Problem p = draw(gen, rp, o, false, "train");
      // Mostly compact equations, sometimes a worked explanation (about one in four).
      text += (k ? "\n" : "") + (rp.uniform(0, 3) == 0 ? worked_text(p) : p.line);
    }
    d.pretrain.push_back(nlohmann::json{{"text", text}}.dump());
  }
  Rng rs = stream(2);
  for (int64_t i = 0; i < o.num_sft; ++i) {
    Problem p = draw(gen, rs, o, false, "train");
    d.sft.push_back(nlohmann::json{{"prompt", p.prompt}, {"response", sft_response(p, o)}}.dump());
  }
  Rng rr = stream(3);
  for (int64_t i = 0; i < o.num_rl; ++i) {
    d.rl.push_back(rl_record(draw(gen, rr, o, false, "train"), task).dump());
  }
  Rng re = stream(4);
  std::unordered_set<std::string> seen;
  for (int tries = 0; static_cast<int64_t>(d.eval.size()) < o.num_eval; ++tries) {
    if (tries > 1000 * (o.num_eval + 10)) {
      throw Error(ErrorKind::kUsage,
                  str_cat("task data: only ", d.eval.size(), " distinct held-out ", task,
                          " problems found, ", o.num_eval,
                          " requested; lower num_eval or enlarge the problem space"));
    }
    Problem p = draw(gen, re, o, true, "eval");
    if (!seen.insert(p.key).second) continue;
    nlohmann::json j = rl_record(p, task);
    j["response"] = sft_response(p, o);
    j["text"] = worked_text(p);
    d.eval.push_back(j.dump());
  }
  return d;
}

void make_task_data(const std::string& task, const std::string& out_dir, const TaskDataOptions& o) {
  TaskData d = generate_task_data(task, o);
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec) {
    throw Error(ErrorKind::kUsage,
                str_cat(out_dir, ": cannot create the output directory: ", ec.message()));
  }
  auto write = [&](const char* name, const std::vector<std::string>& lines) {
    std::string text;
    for (const auto& l : lines) text += l + "\n";
    write_file_atomic((std::filesystem::path(out_dir) / name).string(), text);
  };
  write("pretrain.jsonl", d.pretrain);
  write("sft.jsonl", d.sft);
  write("rl.jsonl", d.rl);
  write("eval.jsonl", d.eval);
  nlohmann::json meta = {{"task", task},
                         {"seed", o.seed},
                         {"counts",
                          {{"pretrain", d.pretrain.size()},
                           {"sft", d.sft.size()},
                           {"rl", d.rl.size()},
                           {"eval", d.eval.size()}}},
                         {"options",
                          {{"problems_per_doc", o.problems_per_doc},
                           {"max_digits", o.max_digits},
                           {"ops", o.ops},
                           {"max_terms", o.max_terms},
                           {"max_numbers", o.max_numbers},
                           {"max_number", o.max_number},
                           {"max_target", o.max_target},
                           {"think_open", o.think_open},
                           {"think_close", o.think_close}}},
                         {"eval_partition", "fnv1a64(\"moetron-eval/\" + key) % 10 == 0"}};
  write_file_atomic((std::filesystem::path(out_dir) / "meta.json").string(), meta.dump(2) + "\n");
}

}  // namespace moetron::data
