// Run directory creation and the atomic small-file writer used for configs and pointers.
#include "moetron/core/run_dir.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "moetron/core/error.h"

namespace fs = std::filesystem;

namespace moetron {
namespace {

void fsync_path(const std::string& path, bool directory) {
  int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) throw Error(str_cat("cannot open ", path, " to sync: ", std::strerror(errno)));
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw Error(str_cat("fsync of ", path, " failed: ", std::strerror(errno)));
}

}  // namespace

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(str_cat("cannot read ", path, ": ", std::strerror(errno)));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = str_cat(path, ".tmp.", ::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(str_cat("cannot write ", tmp, ": ", std::strerror(errno)));
    out << text;
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      throw Error(str_cat("writing ", tmp, " failed: ", std::strerror(errno)));
    }
  }
  fsync_path(tmp, false);
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    throw Error(str_cat("cannot rename ", tmp, " to ", path, ": ", ec.message()));
  }
  fsync_path(fs::absolute(path).parent_path().string(), true);
}

RunDir open_run_dir(const std::string& parent, const std::string& name,
                    const std::string& config_yaml, bool resuming) {
  MOETRON_CHECK_CONFIG(!name.empty() && name.find('/') == std::string::npos && name != "." &&
                           name != "..",
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
    const std::string old = read_file(run.config_path);
    if (old == config_yaml) return run;
    if (!resuming) {
      throw Error(ErrorKind::kConfig,
                  str_cat("run directory ", run.root, " belongs to a different config (",
                          run.config_path,
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
