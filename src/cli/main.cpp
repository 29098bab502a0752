// moetron command-line entry point: parses `moetron <command> ...` with CLI11, runs the command
// and is the one place that catches errors and maps them to exit codes (0 ok, 1 runtime
// failure, 2 usage or config error, 128+signal when interrupted).
#include <CLI/CLI.hpp>

#include <csignal>
#include <cstring>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "command.h"
#include "moetron/build_config.h"
#include "moetron/core/error.h"
#include "moetron/core/malloc_tuning.h"
#include "moetron/core/signals.h"

namespace moetron::cli {
namespace {

constexpr int kExitRuntime = 1;
constexpr int kExitUsage = 2;

int report(const std::string& message, int code) {
  std::cerr << "moetron: error: " << message << std::endl;
  return code;
}

// `--optim.lr=3e-4` is an override, not an option: hand it to the command as `optim.lr=3e-4`
// so CLI11 does not reject it as unknown. Real options never contain a dot before '='.
std::vector<std::string> rewrite_overrides(int argc, char** argv) {
  std::vector<std::string> args;
  for (int i = argc - 1; i >= 1; --i) {  // CLI11 wants the arguments in reverse order
    std::string arg = argv[i];
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) == 0 && eq != std::string::npos &&
        arg.substr(0, eq).find('.') != std::string::npos) {
      arg = arg.substr(2);
    }
    args.push_back(arg);
  }
  return args;
}

int run(int argc, char** argv) {
  CLI::App app{
      "moetron: train DeepSeek-V3-style mixture-of-experts models (MLA, DeepSeekMoE, "
      "MTP, SFT, GRPO)",
      "moetron"};
  app.set_version_flag("--version", std::string("moetron ") + MOETRON_VERSION + " (LibTorch " +
                                        MOETRON_TORCH_VERSION + ", CUDA kernels " +
                                        (MOETRON_HAVE_CUDA_KERNELS ? "on" : "off") + ")");
  app.require_subcommand(1);
  app.footer(
      "Run 'moetron <command> --help' for a command's options. Exit codes: 0 done, "
      "1 runtime failure, 2 usage or config error, 128+signal when interrupted.");
  Run selected;
  for (const Command& command : commands()) {
    CLI::App* sub = app.add_subcommand(command.name, command.description);
    Run run_command = command.setup(*sub);
    sub->callback([&selected, run_command] { selected = run_command; });
  }
  std::vector<std::string> args = rewrite_overrides(argc, argv);
  // CLI11 would call a misspelt command "a missing subcommand"; name it instead.
  if (!args.empty() && !args.back().empty() && args.back()[0] != '-') {
    std::string names;
    bool known = false;
    for (const Command& command : commands()) {
      known = known || args.back() == command.name;
      names += (names.empty() ? "" : ", ") + std::string(command.name);
    }
    if (!known) {
      return report("unknown command '" + args.back() + "' (commands: " + names + ")", kExitUsage);
    }
  }
  try {
    app.parse(args);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    return report(std::string(e.what()) + " (see 'moetron --help')", kExitUsage);
  }
  return selected ? selected() : kExitUsage;
}

}  // namespace
}  // namespace moetron::cli

int main(int argc, char** argv) {
  moetron::signals::install_interrupt_handlers();
  moetron::tune_malloc_for_training();  // best effort: a CPU step re-faults its pages otherwise
  try {
    return moetron::cli::run(argc, argv);
  } catch (const moetron::Error& e) {
    switch (e.kind()) {
      case moetron::ErrorKind::kConfig:
      case moetron::ErrorKind::kUsage:
        return moetron::cli::report(e.what(), moetron::cli::kExitUsage);
      case moetron::ErrorKind::kInterrupted: {
        const int sig = moetron::signals::interrupt_signal();
        return moetron::cli::report(e.what(), 128 + (sig ? sig : SIGINT));
      }
      case moetron::ErrorKind::kRuntime:
        break;
    }
    return moetron::cli::report(e.what(), moetron::cli::kExitRuntime);
  } catch (const std::exception& e) {
    return moetron::cli::report(e.what(), moetron::cli::kExitRuntime);
  } catch (...) {
    return moetron::cli::report("unknown exception", moetron::cli::kExitRuntime);
  }
}
