// moetron::Error, the one exception type of the library, and the MOETRON_CHECK macro.
// Library code throws; only src/cli catches and maps the kind to an exit code.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace moetron {

// What went wrong decides the exit code: a user's config or command line (2) or a run (1).
enum class ErrorKind { kConfig, kUsage, kRuntime, kInterrupted };

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, std::string message)
      : std::runtime_error(std::move(message)), kind_(kind) {}
  explicit Error(std::string message) : Error(ErrorKind::kRuntime, std::move(message)) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

// Concatenates anything streamable: str_cat("expected ", n, " got ", m).
template <typename... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

namespace detail {
[[noreturn]] void throw_check_failure(ErrorKind kind, const char* cond, const char* file, int line,
                                      const std::string& message);
}  // namespace detail

}  // namespace moetron

// MOETRON_CHECK(cond, "expected ...", value, ...): throws moetron::Error (runtime kind).
#define MOETRON_CHECK(cond, ...)                                                              \
  do {                                                                                        \
    if (!(cond)) {                                                                            \
      ::moetron::detail::throw_check_failure(::moetron::ErrorKind::kRuntime, #cond, __FILE__, \
                                             __LINE__, ::moetron::str_cat(__VA_ARGS__));      \
    }                                                                                         \
  } while (0)

// Same, for mistakes a user fixes in the config or on the command line (exit code 2).
#define MOETRON_CHECK_CONFIG(cond, ...)                                                      \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      ::moetron::detail::throw_check_failure(::moetron::ErrorKind::kConfig, #cond, __FILE__, \
                                             __LINE__, ::moetron::str_cat(__VA_ARGS__));     \
    }                                                                                        \
  } while (0)
