// The command registry: each `moetron <command>` is one {name, description, setup} entry, so a
// new command is one setup function plus one line in commands.cpp.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace moetron::cli {

// Runs the command after parsing; returns the exit code (errors are thrown, not returned).
using Run = std::function<int()>;

struct Command {
  const char* name;
  const char* description;
  // Declares the command's options on `app`; the returned Run reads them (keep the parsed
  // values in a shared_ptr captured by the Run).
  Run (*setup)(CLI::App& app);
};

// Every command that works today, in --help order.
const std::vector<Command>& commands();

// The usual `CONFIG [key.sub=value ...]` arguments; `--key.sub=value` arrives here too because
// main() rewrites it to `key.sub=value` before CLI11 sees it.
struct ConfigArgs {
  std::string path;
  std::vector<std::string> overrides;
};
void add_config_args(CLI::App& app, const std::shared_ptr<ConfigArgs>& args, bool required);

// Commands (one file each).
Run setup_bench(CLI::App& app);
Run setup_config(CLI::App& app);
Run setup_data(CLI::App& app);
Run setup_distill(CLI::App& app);
Run setup_eval(CLI::App& app);
Run setup_generate(CLI::App& app);
Run setup_launch(CLI::App& app);
Run setup_reward(CLI::App& app);
Run setup_run(CLI::App& app);
Run setup_train(CLI::App& app);
Run setup_convert(CLI::App& app);
Run setup_score(CLI::App& app);
Run setup_tokenize(CLI::App& app);

}  // namespace moetron::cli
