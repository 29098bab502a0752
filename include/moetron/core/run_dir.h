// The run directory runs/<name>/: config.yaml, log.txt, metrics.jsonl, checkpoints/.
// A directory holding another config is refused unless the run resumes; nothing a user had
// there is overwritten (a changed config on resume keeps the old text beside it).
#pragma once

#include <string>

namespace moetron {

struct RunDir {
  std::string root;          // runs/<name>
  std::string config_path;   // root/config.yaml
  std::string log_path;      // root/log.txt
  std::string metrics_path;  // root/metrics.jsonl
  std::string checkpoints;   // root/checkpoints
  bool existed = false;      // the directory held a run before this call
};

// Creates or reopens `<parent>/<name>` for a run whose resolved config is `config_yaml`.
// - new directory: creates it and writes config.yaml;
// - existing with the same config.yaml: reused;
// - existing with a different config.yaml: a config Error naming both files unless `resuming`,
//   in which case the old file is kept as config.<n>.yaml and the new one written.
RunDir open_run_dir(const std::string& parent, const std::string& name,
                    const std::string& config_yaml, bool resuming);

}  // namespace moetron
