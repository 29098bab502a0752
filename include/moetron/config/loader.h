// Loading a Config from YAML: `base:` chains, command-line overrides, validation, dumping.
// Every error is a moetron::Error of kind kConfig naming the file, line and column, the key
// path and what was expected.
#pragma once

#include <string>
#include <vector>

#include "moetron/config/config.h"

namespace moetron::config {

// Loads `path` (following `base:` chains relative to each file), applies `overrides`
// ("key.sub=value" or "--key.sub=value"; precedence defaults < base < file < overrides),
// then validates. Throws moetron::Error(kConfig) on any problem.
Config load_file(const std::string& path, const std::vector<std::string>& overrides = {});

// Same from YAML text; `name` stands for the file name in messages and base paths resolve
// relative to the current directory.
Config load_string(const std::string& yaml, const std::string& name = "<string>",
                   const std::vector<std::string>& overrides = {});

// Cross-field validation (messages name both keys and their values).
void validate(const Config& config);

// The fully resolved config as YAML; load_string(dump(c)) == c and dump is a fixed point.
std::string dump(const Config& config);

// Markdown reference of every section and key (type, default, meaning): docs/config.md.
std::string reference_markdown();

}  // namespace moetron::config
