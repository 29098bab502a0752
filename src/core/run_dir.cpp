// Run directory creation: layout, config.yaml ownership check, nothing overwritten.
#include "moetron/core/run_dir.h"

#include <filesystem>

#include "moetron/core/error.h"
#include "moetron/core/files.h"

namespace fs = std::filesystem;

namespace moetron {

RunDir open_run_dir(const std::string& parent, const std::string& name,
                    const std::string& config_yaml, bool resuming) {
  MOETRON_CHECK_CONFIG(
      !name.empty() && name.find('/') == std::string::npos && name != "." && name != "..",
      "log.name must be a plain directory name, got '", name, "'");
  RunDir run;
  run.root = (fs::path(parent) / name).string();
  run.config_path = (fs::path(run.root) / "config.yaml").string();
  run.log_path = (fs::path(run.root) / "log.txt").string();
  run.metrics_path = (fs::path(run.root) / "metrics.jsonl").string();
  run.checkpoints = (fs::path(run.root) / "checkpoints").string();
  run.existed = fs::exists(run.config_path);

  std::error_code ec;
  fs::create_directories(run.checkpoints, ec);
  if (ec) throw Error(str_cat("cannot create run directory ", run.root, ": ", ec.message()));

  if (run.existed) {
    const std::string old = read_text_file(run.config_path);
    if (old == config_yaml) return run;
    if (!resuming) {
      throw Error(
          ErrorKind::kConfig,
          str_cat("run directory ", run.root, " belongs to a different config (", run.config_path,
                  " differs from the resolved config); choose another log.name, "
                  "delete the directory, or resume with train.resume/--resume"));
    }
    int n = 1;
    while (fs::exists(fs::path(run.root) / str_cat("config.", n, ".yaml"))) ++n;
    write_file_atomic((fs::path(run.root) / str_cat("config.", n, ".yaml")).string(), old);
  }
  write_file_atomic(run.config_path, config_yaml);
  return run;
}

}  // namespace moetron
