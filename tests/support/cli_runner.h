// Test helpers: run build/bin/moetron with arguments and capture its exit code, stdout and
// stderr separately; write temporary YAML files under ::testing::TempDir().
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "moetron/core/files.h"

namespace moetron::testing {

struct CliResult {
  int code = -1;
  std::string out;
  std::string err;
};

inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

inline void write_text(const std::string& path, const std::string& text) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream out(path, std::ios::binary);
  out << text;
}

inline std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// A fresh directory per test, so tests can run in parallel under ctest.
inline std::string scratch_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = std::string(info->test_suite_name()) + "_" + info->name();
  for (char& c : name) {
    if (c == '/') c = '_';
  }
  const std::string dir =
      ::testing::TempDir() + "moetron_cfg_" + std::to_string(::getpid()) + "_" + name;
  moetron::remove_tree(dir);  // never std::filesystem::remove_all: LibTorch breaks it
  std::filesystem::create_directories(dir);
  return dir;
}

// Runs the real binary with `args` (cwd = `cwd`), capturing both streams.
inline CliResult run_moetron(const std::vector<std::string>& args, const std::string& cwd) {
  // Captures live in the temp dir, never in `cwd` (which may be the source tree).
  static int counter = 0;
  const std::string base = ::testing::TempDir() + "moetron_run_" + std::to_string(::getpid()) +
                           "_" + std::to_string(counter++);
  const std::string out_path = base + ".out";
  const std::string err_path = base + ".err";
  std::string cmd =
      "cd " + shell_quote(cwd) + " && " + shell_quote(MOETRON_BINARY_DIR "/bin/moetron");
  for (const std::string& a : args) cmd += " " + shell_quote(a);
  cmd += " >" + shell_quote(out_path) + " 2>" + shell_quote(err_path);
  const int status = std::system(cmd.c_str());
  CliResult r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = read_text(out_path);
  r.err = read_text(err_path);
  std::remove(out_path.c_str());
  std::remove(err_path.c_str());
  return r;
}

}  // namespace moetron::testing
