// TEMPORARY stand-in until the env/launcher branch merges (replaced by its env.h).
#pragma once
#include <cstdint>
#include <cstdlib>
#include <string>
namespace moetron::dist {
struct DistEnv {
  int64_t rank = 0, world_size = 1, local_rank = 0, local_world_size = 1, node_rank = 0;
  int64_t restart_count = 0;
  std::string master_addr = "127.0.0.1";
  int64_t master_port = 29500;
  std::string source;
  bool distributed() const { return world_size > 1; }
};
inline DistEnv read_dist_env() {
  DistEnv e;
  auto get = [](const char* n, int64_t d) { const char* v = std::getenv(n); return v ? std::stoll(v) : d; };
  e.rank = get("RANK", 0); e.world_size = get("WORLD_SIZE", 1); e.local_rank = get("LOCAL_RANK", 0);
  e.master_port = get("MASTER_PORT", 29500);
  if (const char* a = std::getenv("MASTER_ADDR")) e.master_addr = a;
  return e;
}
}  // namespace moetron::dist
