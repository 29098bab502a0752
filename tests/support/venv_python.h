// The Python of moetron's venv (where scripts/setup.sh installs torch and make_fixtures.sh the
// reference peers), for tests that run a peer: $MOETRON_TEST_PYTHON, else the configured
// MOETRON_PYTHON, else the venv recorded in .moetron-venv; "" when none exists.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace moetron::testing {

inline std::string venv_python() {
  if (const char* env = std::getenv("MOETRON_TEST_PYTHON")) return env;
  std::string python = MOETRON_PYTHON;
  if (python.empty()) {
    std::ifstream venv(std::string(MOETRON_SOURCE_DIR) + "/.moetron-venv");
    std::string dir;
    if (venv >> dir) python = dir + "/bin/python";
  }
  return !python.empty() && std::filesystem::exists(python) ? python : std::string();
}

// True when `module` imports in that Python.
inline bool python_has(const std::string& python, const std::string& module) {
  return !python.empty() &&
         std::system((python + " -c 'import " + module + "' >/dev/null 2>&1").c_str()) == 0;
}

}  // namespace moetron::testing
