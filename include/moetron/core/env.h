// Environment variables, read in one place so every use names its variable.
#pragma once

#include <optional>
#include <string>

namespace moetron::env {

std::optional<std::string> get(const char* name);
// Integer variable; throws a config Error naming the variable when it is not an integer.
std::optional<long> get_int(const char* name);
// This process's global rank from RANK or SLURM_PROCID (0 when neither is set).
int rank();

}  // namespace moetron::env
