// `moetron reward --input IN.jsonl [--output OUT.jsonl] [--rewards a,b:w] [CONFIG [overrides]]`:
// scores {"completion", "answer", "task"} lines with the configured verifiable rewards, one
// {"reward", "components"} line per input line (blank lines stay blank).
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <iostream>
#include <optional>

#include "command.h"
#include "moetron/config/loader.h"
#include "moetron/core/error.h"
#include "moetron/core/files.h"
#include "moetron/core/logging.h"
#include "moetron/core/signals.h"
#include "moetron/rewards/reward.h"

namespace moetron::cli {
namespace {

struct RewardArgs {
  std::shared_ptr<ConfigArgs> config = std::make_shared<ConfigArgs>();
  std::string input;
  std::string output;
  std::string rewards;
};

constexpr const char* kLineShape =
    "{\"completion\": string, \"answer\": string, \"task\": string, optional \"prompt\", "
    "\"num_tokens\", \"truncated\"}";

// "--rewards accuracy,format:0.1": names with optional weights (default 1).
std::vector<config::RewardTerm> parse_reward_terms(const std::string& text) {
  std::vector<config::RewardTerm> terms;
  size_t from = 0;
  while (from <= text.size()) {
    size_t comma = text.find(',', from);
    if (comma == std::string::npos) comma = text.size();
    const std::string item = text.substr(from, comma - from);
    from = comma + 1;
    config::RewardTerm term;
    const size_t colon = item.find(':');
    term.name = item.substr(0, colon);
    if (term.name.empty()) {
      throw Error(ErrorKind::kUsage, str_cat("--rewards '", text, "': empty reward name (expected ",
                                             "name[:weight],... e.g. accuracy,format:0.1)"));
    }
    if (colon != std::string::npos) {
      const std::string weight = item.substr(colon + 1);
      size_t used = 0;
      try {
        term.weight = std::stod(weight, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (weight.empty() || used != weight.size() || !std::isfinite(term.weight)) {
        throw Error(ErrorKind::kUsage, str_cat("--rewards '", text, "': weight '", weight, "' of '",
                                               term.name, "' is not a number"));
      }
    }
    for (const auto& t : terms) {
      if (t.name == term.name) {
        throw Error(ErrorKind::kUsage,
                    str_cat("--rewards '", text, "': '", term.name, "' is listed twice"));
      }
    }
    terms.push_back(term);
  }
  return terms;
}

rewards::Sample parse_sample(const std::string& line, const std::string& where) {
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(line);
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(ErrorKind::kUsage, str_cat(where, ": not valid JSON (", e.what(),
                                           "); expected an object ", kLineShape));
  }
  if (!doc.is_object()) {
    throw Error(ErrorKind::kUsage,
                str_cat(where, ": expected a JSON object ", kLineShape, ", got ", doc.type_name()));
  }
  auto text = [&](const char* key, bool required) -> std::optional<std::string> {
    auto it = doc.find(key);
    if (it == doc.end() || it->is_null()) {
      if (!required) return std::nullopt;
      throw Error(ErrorKind::kUsage,
                  str_cat(where, ": missing key \"", key, "\" (expected ", kLineShape, ")"));
    }
    if (it->is_string()) return it->get<std::string>();
    if (std::string(key) == "answer" && it->is_number()) return it->dump();  // "answer": 42
    throw Error(ErrorKind::kUsage, str_cat(where, ": \"", key, "\" must be a string, got ",
                                           it->type_name(), " ", it->dump()));
  };
  rewards::Sample s;
  s.completion = *text("completion", true);
  s.answer = *text("answer", true);
  s.task = text("task", false).value_or("");
  s.prompt = text("prompt", false).value_or("");
  if (auto it = doc.find("num_tokens"); it != doc.end() && !it->is_null()) {
    if (!it->is_number_integer() || it->get<int64_t>() < 0) {
      throw Error(ErrorKind::kUsage,
                  str_cat(where, ": \"num_tokens\" must be an integer >= 0, got ", it->dump()));
    }
    s.num_tokens = it->get<int64_t>();
  }
  if (auto it = doc.find("truncated"); it != doc.end() && !it->is_null()) {
    if (!it->is_boolean()) {
      throw Error(ErrorKind::kUsage,
                  str_cat(where, ": \"truncated\" must be true or false, got ", it->dump()));
    }
    s.truncated = it->get<bool>();
  }
  return s;
}

int run_reward(const RewardArgs& args) {
  const config::Config cfg = args.config->path.empty()
                                 ? config::Config{}
                                 : config::load_file(args.config->path, args.config->overrides);
  const std::vector<config::RewardTerm> terms =
      args.rewards.empty() ? cfg.rl.rewards : parse_reward_terms(args.rewards);
  if (terms.empty()) {
    throw Error(ErrorKind::kConfig,
                str_cat("no reward terms: rl.rewards of '", args.config->path,
                        "' is empty (list some there or give --rewards accuracy,format:0.1)"));
  }
  const rewards::RewardFunction reward(terms, rewards::context_from_config(cfg));

  const std::string input_name = args.input == "-" ? "<stdin>" : args.input;
  std::ifstream file_in;
  if (args.input != "-") {
    file_in.open(args.input, std::ios::binary);
    if (!file_in) throw Error(ErrorKind::kUsage, str_cat("cannot read --input '", args.input, "'"));
  }
  std::istream& in = args.input == "-" ? std::cin : file_in;
  // The output appears whole or not at all: written to a temporary file, renamed at the end.
  std::optional<AtomicFileWriter> writer;
  if (!args.output.empty()) writer.emplace(args.output);
  auto emit = [&](const std::string& text) {
    if (writer) {
      writer->write(text);
    } else {
      std::cout << text;
    }
  };

  std::vector<double> sums(terms.size(), 0.0);
  double total = 0;
  int64_t scored = 0, line_no = 0;
  std::string line;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) {
      emit("\n");
      continue;
    }
    if (signals::interrupt_requested()) {
      throw Error(ErrorKind::kInterrupted, str_cat("interrupted at ", input_name, ":", line_no));
    }
    const std::string where = str_cat(input_name, ":", line_no);
    const rewards::Sample sample = parse_sample(line, where);
    rewards::Score score;
    try {
      score = reward.score(sample);
    } catch (const Error& e) {
      throw Error(e.kind(), str_cat(where, ": ", e.what()));
    }
    nlohmann::ordered_json row;
    row["reward"] = score.total;
    nlohmann::ordered_json components = nlohmann::ordered_json::object();
    for (size_t i = 0; i < score.components.size(); ++i) {
      components[score.components[i].first] = score.components[i].second;
      sums[i] += score.components[i].second;
    }
    row["components"] = std::move(components);
    emit(row.dump() + "\n");
    total += score.total;
    ++scored;
  }
  if (in.bad()) throw Error(str_cat("reading ", input_name, " failed"));
  if (writer) {
    writer->commit();
  } else {
    std::cout.flush();
    if (!std::cout) throw Error("writing the scores to stdout failed");
  }
  std::string means;
  const auto names = reward.names();
  for (size_t i = 0; i < names.size(); ++i) {
    means += str_cat(i ? ", " : "", names[i], " ", scored ? sums[i] / scored : 0.0);
  }
  log::info("reward: scored ", scored, " completions from ", input_name, "; mean reward ",
            scored ? total / scored : 0.0, " (", means, ")",
            writer ? str_cat("; wrote ", args.output) : std::string());
  return 0;
}

}  // namespace

Run setup_reward(CLI::App& app) {
  auto args = std::make_shared<RewardArgs>();
  app.add_option("--input", args->input,
                 "JSONL of {\"completion\", \"answer\", \"task\"} lines ('-' for stdin)")
      ->required();
  app.add_option("--output", args->output,
                 "JSONL of {\"reward\", \"components\"} lines, written atomically (default: "
                 "stdout)");
  app.add_option("--rewards", args->rewards,
                 "Reward terms name[:weight],... instead of the config's rl.rewards (e.g. "
                 "accuracy,format:0.1)");
  add_config_args(app, args->config, false);
  return [args] { return run_reward(*args); };
}

}  // namespace moetron::cli
