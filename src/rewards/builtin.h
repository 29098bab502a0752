// The built-in verifiers, handed to the registry when it is first used (a function-local
// static, so no static-initialisation order or dead-stripping of self-registering objects).
#pragma once

#include <map>
#include <string>

#include "moetron/rewards/reward.h"

namespace moetron::rewards::detail {

// Adds accuracy, format, countdown, language and overlong to `out`.
void add_builtin_verifiers(std::map<std::string, VerifierFactory>& out);

}  // namespace moetron::rewards::detail
