// spdlog-backed implementation of moetron::log: a stderr sink plus optional file sinks,
// pattern "[time] [level] [rank N] message".
#include "moetron/core/logging.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <mutex>

#include "moetron/core/env.h"

namespace moetron::log {
namespace {

std::mutex g_mutex;
std::shared_ptr<spdlog::logger> g_logger;
int g_rank = 0;
Level g_level = Level::kInfo;

spdlog::level::level_enum to_spd(Level level) {
  switch (level) {
    case Level::kTrace:
      return spdlog::level::trace;
    case Level::kDebug:
      return spdlog::level::debug;
    case Level::kInfo:
      return spdlog::level::info;
    case Level::kWarn:
      return spdlog::level::warn;
    case Level::kError:
      return spdlog::level::err;
    case Level::kOff:
      return spdlog::level::off;
  }
  return spdlog::level::info;
}

std::string pattern() {
  return "[%Y-%m-%d %H:%M:%S.%e] [%^%l%$] [rank " + std::to_string(g_rank) + "] %v";
}

// Creates the console logger on first use so library code can log before init().
spdlog::logger& logger() {
  if (!g_logger) {
    auto console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
    g_logger = std::make_shared<spdlog::logger>("moetron", console);
    g_logger->set_pattern(pattern());
    if (auto v = env::get("MOETRON_LOG_LEVEL")) g_level = parse_level(*v, "MOETRON_LOG_LEVEL");
    g_logger->set_level(to_spd(g_level));
    g_logger->flush_on(spdlog::level::warn);
  }
  return *g_logger;
}

}  // namespace

Level parse_level(std::string_view text, std::string_view key) {
  static constexpr std::pair<std::string_view, Level> kLevels[] = {
      {"trace", Level::kTrace}, {"debug", Level::kDebug}, {"info", Level::kInfo},
      {"warn", Level::kWarn},   {"error", Level::kError}, {"off", Level::kOff}};
  for (const auto& [name, level] : kLevels) {
    if (text == name) return level;
  }
  throw Error(ErrorKind::kConfig,
              str_cat(key, ": unknown log level '", text,
                      "'; expected one of trace, debug, info, warn, error, off"));
}

std::string_view level_name(Level level) {
  switch (level) {
    case Level::kTrace:
      return "trace";
    case Level::kDebug:
      return "debug";
    case Level::kInfo:
      return "info";
    case Level::kWarn:
      return "warn";
    case Level::kError:
      return "error";
    case Level::kOff:
      return "off";
  }
  return "info";
}

void init(Level level, int rank) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_rank = rank;
  g_level = level;
  if (auto v = env::get("MOETRON_LOG_LEVEL")) g_level = parse_level(*v, "MOETRON_LOG_LEVEL");
  logger().set_level(to_spd(g_level));
  logger().set_pattern(pattern());
}

void set_level(Level level) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_level = level;
  logger().set_level(to_spd(level));
}

Level level() {
  return g_level;
}

void set_rank(int rank) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_rank = rank;
  logger().set_pattern(pattern());
}

void add_file(const std::string& path) {
  std::lock_guard<std::mutex> lock(g_mutex);
  auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path, /*truncate=*/false);
  sink->set_pattern(pattern());
  logger().sinks().push_back(sink);
}

void remove_files() {
  std::lock_guard<std::mutex> lock(g_mutex);
  auto& sinks = logger().sinks();
  sinks.resize(1);  // the console sink is always first
}

bool enabled(Level level) {
  return level >= g_level && level != Level::kOff;
}

void write(Level level, std::string_view message) {
  logger().log(to_spd(level), "{}", message);
}

void flush() {
  logger().flush();
}

}  // namespace moetron::log
