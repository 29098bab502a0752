// `moetron score --model DIR --input IN.jsonl [--output OUT.jsonl]`: per-token log-probabilities
// of the given next tokens and the mean loss, one output line per input line {"ids": [...]}.
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <iostream>

#include "command.h"
#include "moetron/ckpt/hf_model.h"
#include "moetron/core/error.h"
#include "moetron/core/signals.h"

namespace moetron::cli {
namespace {

struct ScoreArgs {
  std::string model_dir;
  std::string input;
  std::string output;
  int threads = 0;
  int64_t chunk = 256;
};

std::vector<int64_t> parse_ids(const std::string& line, const std::string& where, int64_t vocab) {
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(line);
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(ErrorKind::kUsage, str_cat(where, ": invalid JSON (", e.what(), ")"));
  }
  if (!doc.is_object() || !doc.contains("ids") || !doc["ids"].is_array()) {
    throw Error(ErrorKind::kUsage, str_cat(where, ": expected an object {\"ids\": [...]}"));
  }
  std::vector<int64_t> ids;
  for (const auto& v : doc["ids"]) {
    if (!v.is_number_integer()) {
      throw Error(ErrorKind::kUsage, str_cat(where, ": ids must be integers, got ", v.dump()));
    }
    const int64_t id = v.get<int64_t>();
    if (id < 0 || id >= vocab) {
      throw Error(ErrorKind::kUsage,
                  str_cat(where, ": token id ", id, " is outside the vocabulary [0, ", vocab, ")"));
    }
    ids.push_back(id);
  }
  if (ids.size() < 2) {
    throw Error(ErrorKind::kUsage,
                str_cat(where, ": need at least 2 ids to score a next token, got ", ids.size()));
  }
  return ids;
}

int run_score(const ScoreArgs& args) {
  if (args.threads > 0) torch::set_num_threads(args.threads);
  torch::NoGradGuard no_grad;
  auto loaded = ckpt::load_hf_model(args.model_dir);
  const int64_t vocab = loaded.config.model.vocab_size;

  std::ifstream in(args.input);
  if (!in) throw Error(ErrorKind::kUsage, str_cat("cannot read --input '", args.input, "'"));
  std::ofstream file;
  if (!args.output.empty()) {
    file.open(args.output, std::ios::binary | std::ios::trunc);
    if (!file) throw Error(str_cat("cannot write --output '", args.output, "'"));
  }
  std::ostream& out = args.output.empty() ? std::cout : file;

  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    if (signals::interrupt_requested()) {
      throw Error(ErrorKind::kInterrupted, str_cat("interrupted at ", args.input, ":", line_no));
    }
    auto ids = parse_ids(line, str_cat(args.input, ":", line_no), vocab);
    auto ids_BT = torch::tensor(ids, torch::kLong).unsqueeze(0);
    auto logprobs = loaded.model->token_logprobs(ids_BT, {}, {}, args.chunk).squeeze(0);
    std::vector<double> values(logprobs.size(0));
    auto acc = logprobs.to(torch::kDouble).contiguous();
    std::copy(acc.data_ptr<double>(), acc.data_ptr<double>() + acc.numel(), values.begin());
    nlohmann::json row;
    row["logprobs"] = values;
    row["loss"] = -acc.mean().item<double>();
    row["tokens"] = static_cast<int64_t>(values.size());
    out << row.dump() << '\n';
  }
  out.flush();
  if (!out) throw Error(str_cat("writing the scores failed"));
  return 0;
}

}  // namespace

Run setup_score(CLI::App& app) {
  auto args = std::make_shared<ScoreArgs>();
  app.add_option("--model", args->model_dir, "HF checkpoint directory (config.json + safetensors)")
      ->required();
  app.add_option("--input", args->input, "JSONL, one {\"ids\": [...]} per line")->required();
  app.add_option("--output", args->output, "JSONL output (default: stdout)");
  app.add_option("--threads", args->threads, "CPU threads (default: LibTorch's choice)");
  app.add_option("--chunk", args->chunk, "Positions per vocab-projection chunk")
      ->check(CLI::PositiveNumber);
  return [args] { return run_score(*args); };
}

}  // namespace moetron::cli
