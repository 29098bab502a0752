// `moetron config CONFIG [overrides]`: prints the fully resolved, validated config as YAML;
// `--reference` prints the markdown reference of every key (docs/config.md).
#include <fstream>
#include <iostream>

#include "command.h"
#include "moetron/config/loader.h"
#include "moetron/core/error.h"

namespace moetron::cli {

Run setup_config(CLI::App& app) {
  auto args = std::make_shared<ConfigArgs>();
  auto reference = std::make_shared<bool>(false);
  auto output = std::make_shared<std::string>();
  add_config_args(app, args, false);
  app.add_flag("--reference", *reference,
               "Print the markdown reference of all keys instead (docs/config.md)");
  app.add_option("-o,--output", *output, "Write to this file instead of stdout");
  return [args, reference, output]() {
    std::string text;
    if (*reference) {
      if (!args->path.empty()) {
        throw Error(ErrorKind::kUsage, "config --reference takes no CONFIG or overrides");
      }
      text = config::reference_markdown();
    } else {
      if (args->path.empty()) {
        throw Error(ErrorKind::kUsage, "config: CONFIG is required (or use --reference)");
      }
      text = config::dump(config::load_file(args->path, args->overrides));
    }
    if (output->empty()) {
      std::cout << text << std::flush;
      return 0;
    }
    std::ofstream out(*output, std::ios::binary);
    out << text;
    out.close();
    if (!out) throw Error(ErrorKind::kRuntime, "cannot write '" + *output + "'");
    return 0;
  };
}

}  // namespace moetron::cli
