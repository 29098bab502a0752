// `moetron tokenize --tokenizer SPEC --input IN.jsonl [--output OUT.jsonl] [--decode]`:
// {"text": ...} lines to {"ids": [...]} lines with an HF tokenizer.json or the byte tokenizer.
#include <fstream>
#include <iostream>

#include "command.h"
#include "moetron/core/error.h"
#include "moetron/data/tokenizer.h"

namespace moetron::cli {
namespace {

struct TokenizeArgs {
  std::string tokenizer = "byte";
  std::string input;
  std::string output;
  bool decode = false;
};

int run_tokenize(const TokenizeArgs& args) {
  auto tokenizer = data::load_tokenizer(args.tokenizer);
  std::ifstream file_in;
  if (args.input != "-") {
    file_in.open(args.input, std::ios::binary);
    if (!file_in) throw Error(ErrorKind::kUsage, str_cat("cannot read --input '", args.input, "'"));
  }
  std::istream& in = args.input == "-" ? std::cin : file_in;
  std::ofstream file_out;
  if (!args.output.empty()) {
    file_out.open(args.output, std::ios::binary | std::ios::trunc);
    if (!file_out) throw Error(str_cat("cannot write --output '", args.output, "'"));
  }
  std::ostream& out = args.output.empty() ? std::cout : file_out;
  data::tokenize_jsonl(*tokenizer, in, out, args.decode,
                       args.input == "-" ? "<stdin>" : args.input);
  out.flush();
  if (!out) throw Error("writing the output failed");
  return 0;
}

}  // namespace

Run setup_tokenize(CLI::App& app) {
  auto args = std::make_shared<TokenizeArgs>();
  app.add_option("--tokenizer", args->tokenizer,
                 "'byte' or an HF tokenizer.json (or a folder holding one)")
      ->capture_default_str();
  app.add_option("--input", args->input, "JSONL input ('-' for stdin)")->required();
  app.add_option("--output", args->output, "JSONL output (default: stdout)");
  app.add_flag("--decode", args->decode, "Decode {\"ids\"} lines to {\"text\"} instead");
  return [args] { return run_tokenize(*args); };
}

}  // namespace moetron::cli
