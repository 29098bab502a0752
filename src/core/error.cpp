// Check-failure helper behind MOETRON_CHECK: runtime failures carry the source location.
#include "moetron/core/error.h"

namespace moetron::detail {

void throw_check_failure(ErrorKind kind, const char* cond, const char* file, int line,
                         const std::string& message) {
  std::string text = message.empty() ? std::string("check failed: ") + cond : message;
  if (kind == ErrorKind::kRuntime) text += str_cat(" [", file, ":", line, "]");
  throw Error(kind, text);
}

}  // namespace moetron::detail
