// Environment variable access with typed parsing and clear errors.
#include "moetron/core/env.h"

#include <cstdlib>

#include "moetron/core/error.h"

namespace moetron::env {

std::optional<std::string> get(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

std::optional<long> get_int(const char* name) {
  auto v = get(name);
  if (!v) return std::nullopt;
  char* end = nullptr;
  long out = std::strtol(v->c_str(), &end, 10);
  if (end == v->c_str() || *end != '\0') {
    throw Error(ErrorKind::kConfig,
                str_cat("environment variable ", name, "='", *v, "' is not an integer"));
  }
  return out;
}

int rank() {
  if (auto r = get_int("RANK")) return static_cast<int>(*r);
  if (auto r = get_int("SLURM_PROCID")) return static_cast<int>(*r);
  return 0;
}

}  // namespace moetron::env
