// Logging for the whole library: one console line format fit for cluster logs
// (time, level, rank), an optional file sink in the run directory, level from config or env.
// spdlog stays inside src/core so torch translation units never see two fmt versions.
#pragma once

#include <string>
#include <string_view>

#include "moetron/core/error.h"

namespace moetron::log {

enum class Level { kTrace, kDebug, kInfo, kWarn, kError, kOff };

// Parses trace|debug|info|warn|error|off; throws a config Error naming `key` otherwise.
Level parse_level(std::string_view text, std::string_view key = "log.level");
std::string_view level_name(Level level);

// Console sink on stderr. Level from MOETRON_LOG_LEVEL when set, else `level`.
void init(Level level, int rank = 0);
void set_level(Level level);
Level level();
void set_rank(int rank);
// Adds a file sink (appending); the directory must exist.
void add_file(const std::string& path);
void remove_files();
bool enabled(Level level);
void write(Level level, std::string_view message);
void flush();

template <typename... Args>
void trace(const Args&... a) {
  if (enabled(Level::kTrace)) write(Level::kTrace, str_cat(a...));
}
template <typename... Args>
void debug(const Args&... a) {
  if (enabled(Level::kDebug)) write(Level::kDebug, str_cat(a...));
}
template <typename... Args>
void info(const Args&... a) {
  if (enabled(Level::kInfo)) write(Level::kInfo, str_cat(a...));
}
template <typename... Args>
void warn(const Args&... a) {
  if (enabled(Level::kWarn)) write(Level::kWarn, str_cat(a...));
}
template <typename... Args>
void error(const Args&... a) {
  if (enabled(Level::kError)) write(Level::kError, str_cat(a...));
}

}  // namespace moetron::log
